"""An identity's lineage (policy/lineage.py), purely: its first compliant launch creates it;
again on its host is a restart; elsewhere the same image, root filesystem and profile is a
verified move, anything else a tampered one, and a move the placement refuses is disallowed."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.test_policy_appraise import HERE, IMAGE, OTHER, ROOTFS, launch, manifest
from trusthook.attest.verdict import Reason
from trusthook.common.eventlog import RELEASE_STAGE, Identity
from trusthook.policy.appraise import HostPlace, appraise_launch
from trusthook.policy.lineage import Move, Origin, judge

A, B = "a" * 64, "b" * 64
ORIGIN = Origin(
    identity="payments/api-7",
    workload="payments/api",
    host_id=A,
    image_digest=IMAGE,
    rootfs_digest=ROOTFS,
    launch_profile=launch().launch_profile_digest,
    at=1.0,
)


def judged(
    origin: Origin | None, host_id: str = B, host: HostPlace = HERE, **changes: object
) -> tuple[Move | None, Reason | None]:
    event = launch(**changes)
    return judge(origin, event, host_id, appraise_launch(manifest(), event, host))


def test_creation_restart_and_verified_move() -> None:
    assert judged(None) == (Move.ORIGIN, None)
    assert judged(ORIGIN, A) == (Move.SAME_HOST, None)
    assert judged(ORIGIN, B) == (Move.VERIFIED, None)


def test_a_changed_root_filesystem_or_image_is_a_tampered_move() -> None:
    other_origin = replace(ORIGIN, rootfs_digest=OTHER)
    move, reason = judged(other_origin)
    assert move is Move.TAMPERED and reason is not None
    assert "a tampered move of payments/api-7: its root filesystem is not the one" in reason.message
    assert (reason.expected, reason.got) == (OTHER, ROOTFS)
    move, reason = judged(replace(ORIGIN, image_digest=OTHER))
    assert move is Move.TAMPERED and reason is not None and reason.expected == OTHER


def test_a_release_record_is_compared_without_its_empty_root() -> None:
    move, reason = judged(replace(ORIGIN, rootfs_digest=OTHER), stage=RELEASE_STAGE)
    assert (move, reason) == (Move.VERIFIED, None)


def test_disallowed_moves_and_launches_without_lineage() -> None:
    elsewhere = replace(HERE, attributes={"country": "US", "zone": "core"})
    assert judged(ORIGIN, B, elsewhere) == (Move.DISALLOWED, None)
    assert judged(None, B, elsewhere) == (None, None)  # a non-compliant launch creates nothing
    assert judged(ORIGIN, identity=Identity()) == (None, None)  # no identity: no lineage
