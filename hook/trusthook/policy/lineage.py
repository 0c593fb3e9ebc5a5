"""A workload instance's lineage (docs/policy.md §7): its original creation, and whether a later
launch of the same identity on another host is a verified move (the same image, root
filesystem and launch profile, compliant where it lands) or a tampered or disallowed one; a
restored container (docs/policy.md §8) is a move from the host it was checkpointed on. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from trusthook.attest.verdict import Reason
from trusthook.common.eventlog import RELEASE_STAGE, LaunchEvent
from trusthook.policy.appraise import CHECK, Compliance


class Move(StrEnum):
    ORIGIN = "origin"  # the identity's first compliant launch: its creation
    SAME_HOST = "same_host"  # launched again where it was created (a restart)
    VERIFIED = "verified"  # on another host, the same as created, compliant there
    TAMPERED = "tampered"  # on another host, with another image, root filesystem or profile
    DISALLOWED = "disallowed"  # on another host where the workload may not run


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """How an identity was created: where, from what, when."""

    identity: str
    workload: str
    host_id: str
    image_digest: str | None
    rootfs_digest: str
    launch_profile: str
    at: float


def judge(
    origin: Origin | None, launch: LaunchEvent, host_id: str, compliance: Compliance
) -> tuple[Move | None, Reason | None]:
    """What this launch is in its identity's lineage, and the reason a tampered move breaks
    the workload's rules (None: it breaks none). No identity or no workload: no lineage."""
    if compliance.identity is None or compliance.workload is None:
        return None, None
    if origin is None:
        return (Move.ORIGIN, None) if compliance.compliant else (None, None)
    if origin.host_id == host_id:
        return Move.SAME_HOST, None
    compared: list[tuple[str, str | None, str | None]] = [
        ("image", origin.image_digest, launch.image_digest),
        ("launch profile", origin.launch_profile, launch.launch_profile_digest),
    ]
    if launch.stage != RELEASE_STAGE:  # a release's root is still empty: its record follows
        compared.insert(1, ("root filesystem", origin.rootfs_digest, launch.rootfs_digest))
    changed = [c for c in compared if c[1] != c[2]]
    if changed:
        what, want, got = changed[0]
        return Move.TAMPERED, Reason(
            check=CHECK,
            message=f"container {launch.container_id} of workload {compliance.workload}: a"
            f" tampered move of {origin.identity}: its {what} is not the one it was created"
            f" with (on host {origin.host_id[:16]})",
            expected=str(want),
            got=str(got),
        )
    if not compliance.compliant:
        return Move.DISALLOWED, None  # the placement reasons already say why
    return Move.VERIFIED, None


def judge_restore(
    checkpointed: Origin | None, launch: LaunchEvent, host_id: str, compliance: Compliance
) -> tuple[Move | None, Reason | None]:
    """What a restored container (``launch.restore``) is in its identity's lineage: a move from
    ``checkpointed``, the identity's last compliant launch (the one that was checkpointed),
    verified only with that launch's image, root filesystem and launch profile, on the host
    it was checkpointed on too (a restore is never a plain restart). A restore never creates
    an identity: without an identity, or without a compliant launch to restore, it breaks the
    workload's rules."""
    if compliance.workload is None:
        return None, None  # no workload: the appraisal already says so
    who = f"container {launch.container_id} of workload {compliance.workload}"
    if compliance.identity is None or checkpointed is None:
        what = compliance.identity or "no identity"
        return None, Reason(
            check=CHECK,
            message=f"{who}: a restore of {what}, which no compliant launch created: there is"
            " no checkpoint it can have been restored from",
            expected="a restore of an identity with a compliant launch",
            got=what,
        )
    compared = [
        ("image", checkpointed.image_digest, launch.image_digest),
        ("root filesystem", checkpointed.rootfs_digest, launch.rootfs_digest),
        ("launch profile", checkpointed.launch_profile, launch.launch_profile_digest),
    ]
    changed = [c for c in compared if c[1] != c[2]]
    if changed:
        what, want, got = changed[0]
        return Move.TAMPERED, Reason(
            check=CHECK,
            message=f"{who}: a tampered restore of {checkpointed.identity}: its {what} is not"
            f" the one it was checkpointed with (on host {checkpointed.host_id[:16]})",
            expected=str(want),
            got=str(got),
        )
    if checkpointed.host_id == host_id:
        return Move.SAME_HOST, None
    return (Move.VERIFIED, None) if compliance.compliant else (Move.DISALLOWED, None)
