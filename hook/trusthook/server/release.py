"""The server's key-release decisions, without I/O: the launch record, the policy, the unwrap.

Each refusal is an ``AttestationError`` whose check names the rule: ``launch_event``,
``policy``, ``manifest`` or ``unwrap``. Its message goes to the host; what the host must not
learn (the launch profiles a rule allows) goes only in ``expected``/``got``, for operators.
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


def check_policy(
    rules: Sequence[ReleaseRule], image: str, group: str, launch: LaunchEvent
) -> ReleaseRule:
    """The first ``[[release]]`` rule that lets ``group`` run ``image`` with this launch's
    profile: it lists the profile's digest, or allows any (``["any"]``); refused if none does.
    A refusal's message names the rules; only ``expected``/``got`` carry digests."""
    matching = [r for r in rules if r.image == image and group in r.groups]
    if not matching:
        raise AttestationError(
            "policy",
            f"no release rule lets host group {group!r} receive the keys of this image",
            expected="a [[release]] rule for the image and group",
            got=image,
        )
    profile = launch.launch_profile_digest
    for rule in matching:
        if rule.any_profile or profile in rule.launch_profiles:
            return rule
    names = ", ".join(r.name for r in matching)
    allowed = sorted({p for r in matching for p in r.launch_profiles})
    if not allowed:
        message = (
            f"release rule {names} lists no launch profile, so it allows no launch; list the"
            ' allowed launch profile digests, or ["any"]'
        )
    else:
        message = f"release rule {names} does not allow this launch profile for the image"
    raise AttestationError(
        "policy", message, expected=", ".join(allowed) or "no launch profile", got=profile
    )


def rule_warnings(rules: Sequence[ReleaseRule]) -> list[str]:
    """What an operator should hear at start-up about the ``[[release]]`` rules: a rule that
    allows any launch profile, and a rule that, listing none, releases nothing."""
    warnings = []
    for rule in rules:
        if rule.any_profile:
            warnings.append(
                f'{rule.name} (image {rule.image}) allows any launch profile (["any"]): its'
                " keys also go to a launch that adds a hook, a mount, a capability or a joined"
                " namespace; pin the launch profile digests"
            )
        elif not rule.launch_profiles:
            warnings.append(
                f"{rule.name} (image {rule.image}) lists no launch profile: it releases nothing"
            )
    return warnings


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
