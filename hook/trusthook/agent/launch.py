"""Launching a container from an encrypted image: policy, release, decryption, measurement.

The runtime shim has mounted a tmpfs as the container's root and named the encrypted image in
config.json's annotations. At the hook, the agent:
1. checks the local image policy (no network before it says yes);
2. records a ``release`` launch event (manifest digest, config and launch-profile digests);
3. attests with that record and gets the layer keys, sealed to this TPM (``Attester.release``);
4. verifies, decrypts and unpacks every layer into the tmpfs;
5. measures the decrypted rootfs and records it (the usual launch event, stage as given).
Any failure empties the tmpfs; the hook then fails and the container does not start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from trusthook.agent.attester import Attester
from trusthook.agent.imagepolicy import ImagePolicy
from trusthook.agent.writer import MeasuredLog
from trusthook.common.digest import digest_string
from trusthook.common.eventlog import LaunchEvent, Record
from trusthook.common.oci import IMAGE_LAYOUT_ANNOTATION, IMAGE_REF_ANNOTATION
from trusthook.errors import BundleError
from trusthook.image.layout import Layout
from trusthook.image.rootfs import empty_directory, released_keys, unpack_image
from trusthook.image.unpack import ExtractPolicy
from trusthook.measure.walk import RootfsMeasurement

log = logging.getLogger(__name__)
RELEASE_STAGE = "release"


def mount_at(path: Path, mountinfo: str) -> tuple[str, bool] | None:
    """The filesystem type mounted exactly at ``path`` (the last such mount) and whether it is
    a shared mount, from /proc/self/mountinfo text; None if nothing is mounted there."""
    found = None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields:
            continue
        separator = fields.index("-")
        mount_point = fields[4].replace("\\040", " ").replace("\\134", "\\")
        if mount_point == str(path):
            shared = any(tag.startswith("shared:") for tag in fields[6:separator])
            found = (fields[separator + 1], shared)
    return found


def check_root(root: Path, roots_dir: Path) -> None:
    """Refuse unless ``root`` is a private tmpfs the shim mounted under ``roots_dir``."""
    if root.parent != roots_dir:
        raise BundleError(
            f"the root {root} of an encrypted-image container must be a tmpfs that"
            f" trusthook-runtime mounted under {roots_dir}; run it with trusthook-runtime"
        )
    with open("/proc/self/mountinfo") as f:
        mount = mount_at(root, f.read())
    if mount is None or mount[0] != "tmpfs":
        raise BundleError(
            f"{root} is not a tmpfs mount (got {mount[0] if mount else 'no mount'}): plaintext"
            " would reach disk; run the container with trusthook-runtime"
        )
    if mount[1]:
        raise BundleError(
            f"{root} is a shared mount: mounts made in the container could appear in it and be"
            " written or removed; trusthook-runtime mounts it private"
        )


class EncryptedLaunch:
    """Runs steps 1 to 5 for one container."""

    def __init__(
        self,
        *,
        log: MeasuredLog,
        attester: Attester,
        policy: Callable[[], ImagePolicy],
        roots_dir: Path,
        measure_rootfs: Callable[[str | os.PathLike[str]], RootfsMeasurement],
    ) -> None:
        self._log = log
        self._attester = attester
        self._policy = policy
        self._roots_dir = roots_dir
        self._measure_rootfs = measure_rootfs

    def check_plain(self) -> None:
        """The local policy's word on a container from an ordinary (unencrypted) image."""
        self._policy().check(encrypted=False, manifest=None)

    def run(self, *, annotations: dict[str, str], root: Path, event: LaunchEvent) -> Record:
        """Decrypt into ``root``; ``event`` is the launch event with the empty root's digest."""
        check_root(root, self._roots_dir)
        layout_dir = Path(annotations[IMAGE_LAYOUT_ANNOTATION])
        ref = annotations.get(IMAGE_REF_ANNOTATION) or None
        layout = Layout.open(layout_dir)
        desc = layout.resolve(ref)
        policy = self._policy()
        policy.check(encrypted=True, manifest=desc.digest)
        manifest = layout.read_blob(desc)  # parsed by the server, and by unpack_image
        intent = replace(
            event,
            image_reference=event.image_reference or f"{layout_dir}:{ref or ''}",
            image_digest=desc.digest,
            stage=RELEASE_STAGE,
        )
        try:
            released = self._attester.release(manifest, desc.digest, intent)
            unpacked = unpack_image(
                layout,
                ref,
                root,
                keys=released_keys(released),
                policy=ExtractPolicy(devices=policy.devices, setuid=policy.setuid),
                pinned_manifest=desc.digest,
                runtime_entries=True,
            )
            rootfs = self._measure_rootfs(root)
        except BaseException:
            empty_directory(root)
            raise
        log.info(
            "decrypted %s (%d encrypted layers) into %s",
            desc.digest,
            unpacked.encrypted_layers,
            root,
        )
        return self._log.append(
            replace(
                intent,
                stage=event.stage,
                rootfs_digest=digest_string(rootfs.digest),
                rootfs_entries=rootfs.entries,
            )
        )


def image_annotations(config: dict[str, Any]) -> dict[str, str] | None:
    """config.json's annotations if they name an encrypted image, else None."""
    annotations = config.get("annotations") or {}
    if not isinstance(annotations, dict) or IMAGE_LAYOUT_ANNOTATION not in annotations:
        return None
    if not all(isinstance(v, str) for v in annotations.values()):
        raise BundleError("config.json annotations must be strings")
    if not os.path.isabs(annotations[IMAGE_LAYOUT_ANNOTATION]):
        raise BundleError(f"annotation {IMAGE_LAYOUT_ANNOTATION} must be an absolute path")
    return annotations
