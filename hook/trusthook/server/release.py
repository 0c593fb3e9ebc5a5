"""The server's key-release decisions, without I/O: the launch record, the policy, the unwrap.

Each refusal is an ``AttestationError`` whose check names the rule: ``launch_event``,
``policy``, ``manifest`` or ``unwrap``.
"""

from __future__ import annotations

from collections.abc import Sequence

from jwcrypto import jwk

from trusthook.common.eventlog import LaunchEvent, Record
from trusthook.errors import AttestationError, ImageError
from trusthook.image.crypt import layer_name, unwrap_layer_key
from trusthook.image.model import LayerType, Manifest
from trusthook.server.config import ReleaseRule


def find_launch(events: Sequence[Record], recnum: int, image: str) -> LaunchEvent:
    """The launch event numbered ``recnum`` among the just-verified ``events``, for ``image``."""
    found = next((r.event for r in events if r.recnum == recnum), None)
    if found is None:
        raise AttestationError(
            "launch_event",
            "the launch record is not among the records verified by this attestation",
            expected=f"record {recnum}",
            got=f"records {events[0].recnum}..{events[-1].recnum}" if events else "none",
        )
    if found.image_digest != image:
        raise AttestationError(
            "launch_event",
            "the launch record is for another image",
            expected=image,
            got=str(found.image_digest),
        )
    return found


def check_policy(rules: Sequence[ReleaseRule], image: str, group: str, launch: LaunchEvent) -> None:
    """Refuse unless a ``[[release]]`` rule lets ``group`` run ``image`` with this profile."""
    for rule in rules:
        if rule.image != image or group not in rule.groups:
            continue
        if rule.launch_profiles and launch.launch_profile_digest not in rule.launch_profiles:
            raise AttestationError(
                "policy",
                "the release policy does not allow this launch profile for the image",
                expected=", ".join(sorted(rule.launch_profiles)),
                got=launch.launch_profile_digest,
            )
        return
    raise AttestationError(
        "policy",
        f"no release rule lets host group {group!r} receive the keys of this image",
        expected="a [[release]] rule for the image and group",
        got=image,
    )


def unwrap_layers(manifest_bytes: bytes, keys: Sequence[jwk.JWK]) -> dict[str, bytes]:
    """Every encrypted layer's private options, unwrapped with the server's keys."""
    try:
        manifest = Manifest.parse(manifest_bytes)
    except ImageError as e:
        raise AttestationError("manifest", str(e)) from None
    released: dict[str, bytes] = {}
    for i, desc in enumerate(manifest.layers):
        if not LayerType.parse(desc.media_type).encrypted:
            continue
        try:
            key = unwrap_layer_key(desc, keys, layer_name(i, desc))
        except ImageError as e:
            raise AttestationError("unwrap", str(e)) from None
        released[desc.digest] = key.private.to_json()
    if not released:
        raise AttestationError("manifest", "the image has no encrypted layers: nothing to release")
    return released
