"""Launching a container from an encrypted image: policy, release, decryption, measurement.

The runtime shim has mounted a tmpfs as the container's root and named the encrypted image in
config.json's annotations. At the hook, the agent:
0. refuses the launch if config.json runs a hook other than trusthook's own (and Docker's
   network hook) or joins another namespace than a named network namespace
   (``check_launch_config``);
1. checks the local image policy (no network before it says yes);
2. records a ``release`` launch event (manifest digest, config and launch-profile digests);
3. attests with that record and gets the layer keys, sealed to this TPM (``Attester.release``);
4. verifies, decrypts and unpacks every layer into the tmpfs;
5. measures the decrypted rootfs and records it (the usual launch event, stage as given).
Any failure empties the tmpfs; the hook then fails and the container does not start.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trusthook.agent.attester import Attester
from trusthook.agent.bundles import HOOK_STAGE
from trusthook.agent.imagepolicy import ImagePolicy
from trusthook.agent.writer import MeasuredLog
from trusthook.common.digest import digest_string
from trusthook.common.eventlog import RELEASE_STAGE, LaunchEvent, Record
from trusthook.common.jcs import canonicalize
from trusthook.common.oci import IMAGE_LAYOUT_ANNOTATION, IMAGE_REF_ANNOTATION
from trusthook.errors import BundleError, PolicyRefusedError
from trusthook.image.layout import Layout
from trusthook.image.rootfs import empty_directory, released_keys, unpack_image
from trusthook.image.unpack import ExtractPolicy
from trusthook.measure.profile import docker_setkey_pid, is_named_netns
from trusthook.measure.walk import RootfsMeasurement

log = logging.getLogger(__name__)
REFUSED = "refusing to decrypt"
NS_GET_NSTYPE = 0xB703  # linux/nsfs.h: _IO(0xb7, 0x3), the type of a namespace file
CLONE_NEWNET = 0x40000000


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


def _describe(hook: Any) -> str:
    if not isinstance(hook, Mapping):
        return repr(hook)
    args = repr(hook.get("args"))
    return f"{hook.get('path')!r} (args {args if len(args) <= 120 else args[:117] + '...'})"


@dataclass(frozen=True, slots=True)
class LiveChecks:
    """What ``check_launch_config`` leaves to check on the running host: the pids of the dockerd
    that Docker's network hooks name, the named network namespaces the container joins."""

    dockerd: tuple[int, ...]
    netns: tuple[str, ...]


def _check_hooks(hooks: Any, own_hook: Mapping[str, Any], container_id: str) -> tuple[int, ...]:
    hooks = {} if hooks is None else hooks
    if not isinstance(hooks, dict):
        raise BundleError("config.json 'hooks' must be an object")
    own, found = canonicalize(own_hook), 0
    dockerd: list[int] = []
    for stage, entries in hooks.items():
        if not isinstance(entries, list):
            raise BundleError(f"config.json 'hooks.{stage}' must be an array")
        for hook in entries:
            if stage == HOOK_STAGE and canonicalize(hook) == own:
                found += 1
                continue
            pid = docker_setkey_pid(stage, hook)
            if pid is not None and hook["args"][2] == container_id and not dockerd:
                dockerd.append(pid)
                continue
            raise PolicyRefusedError(
                f"{REFUSED}: config.json has a {stage} hook {_describe(hook)}, expected no hook"
                f" but trusthook's own {HOOK_STAGE} entry ({own_hook['path']}) and Docker's"
                " libnetwork-setkey: another hook runs beside the decrypted root and could copy it"
            )
    if found != 1:
        raise PolicyRefusedError(
            f"{REFUSED}: config.json has trusthook's hook {found} times, expected once in"
            f" {HOOK_STAGE}; run the container with trusthook-runtime"
        )
    return tuple(dockerd)


def _joined_network_namespaces(linux: Any) -> tuple[str, ...]:
    linux = {} if linux is None else linux
    namespaces = linux.get("namespaces", []) if isinstance(linux, dict) else None
    if not isinstance(namespaces, list) or not all(isinstance(n, dict) for n in namespaces):
        raise BundleError("config.json 'linux.namespaces' must be an array of objects")
    named: list[str] = []
    for ns in namespaces:
        ns_type, path = ns.get("type"), ns.get("path")
        if not path:
            continue
        if not is_named_netns(ns_type, path):
            raise PolicyRefusedError(
                f"{REFUSED}: config.json joins the {ns_type} namespace at {path!r}, expected a"
                f" new {ns_type} namespace: a joined namespace shares the container's processes,"
                " memory or files with whoever made it (only a named network namespace in"
                " /run/netns may be joined)"
            )
        named.append(path)
    return tuple(named)


def check_launch_config(
    config: Mapping[str, Any], own_hook: Mapping[str, Any], container_id: str
) -> LiveChecks:
    """Refuse an encrypted image's container ``container_id``, before any key is released, if
    its config.json runs any hook but ``own_hook`` (once, in createRuntime) and Docker's
    network hook for this container (at most once), or joins any namespace but a named network
    namespace (docs/images.md §7). What is left to check on the running host."""
    return LiveChecks(
        dockerd=_check_hooks(config.get("hooks"), own_hook, container_id),
        netns=_joined_network_namespaces(config.get("linux")),
    )


def check_dockerd(pid: int, host: str = "/proc/self/ns/mnt") -> None:
    """Refuse unless process ``pid``, whose executable Docker's network hook runs, is a
    ``dockerd`` in ``host``'s mount namespace (the agent's, the host's), not, say, a program
    in a container."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        mounts = os.stat(f"/proc/{pid}/ns/mnt")
    except OSError as e:
        raise PolicyRefusedError(
            f"{REFUSED}: the prestart hook /proc/{pid}/exe names a process that cannot be"
            f" inspected ({e.strerror}), expected the host's dockerd"
        ) from e
    own = os.stat(host)
    if os.path.basename(exe) != "dockerd" or (mounts.st_dev, mounts.st_ino) != (
        own.st_dev,
        own.st_ino,
    ):
        raise PolicyRefusedError(
            f"{REFUSED}: the prestart hook /proc/{pid}/exe runs {exe!r}, expected the host's"
            " dockerd (Docker's libnetwork-setkey hook)"
        )


def check_network_namespace(path: str, host: str = "/proc/self/ns/net") -> None:
    """Refuse unless ``path`` is a network namespace file other than ``host``'s (the agent's
    namespace, the host's): the launch profile records a named one by its directory alone,
    so the host's, given a name, would pass for a pod's."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise PolicyRefusedError(
            f"{REFUSED}: cannot open the network namespace {path}: {e.strerror}"
        ) from e
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        joined = os.fstat(fd)
    except OSError as e:
        raise PolicyRefusedError(f"{REFUSED}: {path} is not a namespace ({e.strerror})") from e
    finally:
        os.close(fd)
    if kind != CLONE_NEWNET:
        raise PolicyRefusedError(
            f"{REFUSED}: {path} is a namespace of type {kind:#x}, expected a network namespace"
        )
    own = os.stat(host)
    if (joined.st_dev, joined.st_ino) == (own.st_dev, own.st_ino):
        raise PolicyRefusedError(
            f"{REFUSED}: the network namespace {path} is the host's, expected a pod's own"
        )


class EncryptedLaunch:
    """Runs steps 0 to 5 for one container."""

    def __init__(
        self,
        *,
        log: MeasuredLog,
        attester: Attester,
        policy: Callable[[], ImagePolicy],
        roots_dir: Path,
        measure_rootfs: Callable[[str | os.PathLike[str]], RootfsMeasurement],
        own_hook: Mapping[str, Any],
    ) -> None:
        self._log = log
        self._attester = attester
        self._policy = policy
        self.roots_dir = roots_dir  # where the tmpfs roots go (``bundles.prepare_bundle``)
        self._measure_rootfs = measure_rootfs
        self.own_hook = own_hook  # the entry left out of launch profiles, too

    def check_plain(self) -> None:
        """The local policy's word on a container from an ordinary (unencrypted) image."""
        self._policy().check(encrypted=False, manifest=None)

    def run(
        self,
        *,
        config: Mapping[str, Any],
        annotations: dict[str, str],
        root: Path,
        event: LaunchEvent,
    ) -> Record:
        """Decrypt into ``root`` for the container ``config`` (config.json) describes; ``event``
        is the launch event with the empty root's digest."""
        check_root(root, self.roots_dir)
        live = check_launch_config(config, self.own_hook, event.container_id)
        for pid in live.dockerd:
            check_dockerd(pid)
        for path in live.netns:
            check_network_namespace(path)
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
