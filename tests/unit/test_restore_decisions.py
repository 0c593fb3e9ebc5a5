"""Checkpoint and restore, purely (docs/policy.md §8): the decisions of policy/restore.py, a
restore's appraisal (policy/appraise.py) and its place in the lineage (policy/lineage.py), and
the version 3 launch record that marks a restore (common/eventlog.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tests.unit.test_policy_appraise import HERE, IMAGE, OTHER, ROOTFS, launch
from tests.unit.test_policy_lineage import ORIGIN, A, B
from trusthook.attest.verdict import Reason
from trusthook.common.eventlog import LaunchEvent, Record, parse_line
from trusthook.errors import AttestationError, EventLogError
from trusthook.policy.appraise import appraise_launch
from trusthook.policy.lineage import Move, Origin, judge_restore
from trusthook.policy.manifest import Manifest, parse_manifest
from trusthook.policy.restore import (
    RestoreClaim,
    VerifiedLaunch,
    check_checkpoint,
    check_restore,
)


def manifest(restore: str = "true", extra: str = "") -> Manifest:
    return parse_manifest(
        (
            'format = 1\n[[workload]]\nname = "payments/api"\nmatch = ["payments/api-*"]\n'
            f'images = ["{IMAGE}"]\nrestore = {restore}\ngroups = ["payments"]\n'
            'placement = ["country in [DE, FR]"]\n' + extra
        ).encode(),
        "p.toml",
    )


LAUNCH = VerifiedLaunch(
    container_id="c1",
    identity="payments/api-7",
    workload="payments/api",
    compliant=True,
    encrypted=False,
    policy_version=3,
    in_this_boot=True,
)
CLAIM = RestoreClaim(
    container_id="c2", identity="payments/api-7", image_digest=IMAGE, encrypted=False
)


def test_a_compliant_restorable_launch_may_be_checkpointed() -> None:
    assert check_checkpoint(manifest(), 3, LAUNCH, "c1").name == "payments/api"


@pytest.mark.parametrize(
    ("policy", "launch", "message"),
    [
        (None, LAUNCH, "no policy manifest is in force (no policy in force)"),
        (manifest(), None, "the server has verified no launch of it on this host in this boot"),
        (manifest(), replace(LAUNCH, in_this_boot=False), "verified no launch of it"),
        (manifest(), replace(LAUNCH, compliant=False), "is not a compliant launch"),
        (manifest(), replace(LAUNCH, compliant=None), "is not a compliant launch"),
        (manifest(), replace(LAUNCH, workload=None), "is not a compliant launch of a workload"),
        (manifest(), replace(LAUNCH, workload="gone"), "its workload is not in the policy"),
        (manifest("false"), LAUNCH, "the workload may not be restored (policy version 3)"),
        (
            manifest(extra='encryption = "required"\n'),
            LAUNCH,
            "the workload must run encrypted, and its memory would be written to disk in"
            " plaintext (encrypted checkpoints, docs/policy.md §8 point 4, are not built)",
        ),
        (
            manifest(),
            replace(LAUNCH, encrypted=True),
            "it was decrypted from an encrypted image, and its memory would be written",
        ),
        (manifest(), replace(LAUNCH, identity=None), "it has no workload identity"),
    ],
)
def test_checkpoint_refusals(
    policy: Manifest | None, launch: VerifiedLaunch | None, message: str
) -> None:
    with pytest.raises(AttestationError) as refused:
        check_checkpoint(policy, None if policy is None else 3, launch, "c1")
    assert refused.value.check == "checkpoint"
    assert refused.value.message.startswith("checkpoint of container c1")
    assert message in refused.value.message


def test_a_restorable_workload_may_be_restored_inside_its_placement() -> None:
    assert check_restore(manifest(), 3, CLAIM, HERE).name == "payments/api"


@pytest.mark.parametrize(
    ("policy", "claim", "host", "message"),
    [
        (None, CLAIM, HERE, "no policy manifest is in force"),
        (manifest(), replace(CLAIM, identity=None), HERE, "give it no workload identity"),
        (
            manifest(),
            replace(CLAIM, identity="shop/x", image_digest=None),
            HERE,
            "it is no workload of the policy manifest",
        ),
        (manifest("false"), CLAIM, HERE, "of workload payments/api refused: the workload may not"),
        (
            manifest(extra='encryption = "required"\n'),
            CLAIM,
            HERE,
            "the workload must run encrypted",
        ),
        (manifest(), replace(CLAIM, encrypted=True), HERE, "names an encrypted image"),
        (manifest(), CLAIM, replace(HERE, group="lab"), "the host's group is not one"),
        (
            manifest(),
            CLAIM,
            replace(HERE, attributes={"country": "US"}),
            "it may not run at this host's location: placement 'country in [DE, FR]': the"
            " host's country is US (policy version 3)",
        ),
    ],
)
def test_restore_refusals(
    policy: Manifest | None, claim: RestoreClaim, host: object, message: str
) -> None:
    with pytest.raises(AttestationError) as refused:
        check_restore(policy, None if policy is None else 3, claim, host)  # type: ignore[arg-type]
    assert refused.value.check == "restore"
    assert refused.value.message.startswith("restore of container c2")
    assert message in refused.value.message


def restored(**changes: object) -> LaunchEvent:
    return launch(restore=True, **changes)


def test_a_restore_of_a_workload_without_restore_breaks_its_rules() -> None:
    policy = parse_manifest(
        f'format = 1\n[[workload]]\nname = "w"\nmatch = ["payments/api-*"]\nimages = ["{IMAGE}"]\n'
        "restore = false\n".encode(),
        "p.toml",
    )
    assert appraise_launch(policy, launch(), HERE).compliant  # launched: fine
    (reason,) = appraise_launch(policy, restored(), HERE).reasons
    assert reason.check == "workload"
    assert "it was restored from a checkpoint, and the workload may not be" in reason.message
    assert (reason.expected, reason.got) == ("restore = true", "restore = false")
    assert appraise_launch(manifest(), restored(), HERE).compliant


def judged(
    checkpointed: Origin | None, host_id: str = B, **changes: object
) -> tuple[Move | None, Reason | None]:
    event = restored(**changes)
    compliance = appraise_launch(manifest(), event, HERE)
    return judge_restore(checkpointed, event, host_id, compliance)


def test_a_restore_is_a_move_from_the_checkpointing_host() -> None:
    assert judged(ORIGIN, B) == (Move.VERIFIED, None)
    assert judged(ORIGIN, A) == (Move.SAME_HOST, None)  # restored where it was checkpointed


def test_a_restore_with_another_root_is_tampered_even_on_the_checkpointing_host() -> None:
    for host_id in (A, B):
        move, reason = judged(ORIGIN, host_id, rootfs_digest=OTHER)
        assert move is Move.TAMPERED and reason is not None
        assert (
            "a tampered restore of payments/api-7: its root filesystem is not the one it"
            " was checkpointed with (on host aaaaaaaaaaaaaaaa)" in reason.message
        )
        assert (reason.expected, reason.got) == (ROOTFS, OTHER)


def test_a_restore_never_creates_an_identity() -> None:
    move, reason = judged(None)
    assert move is None and reason is not None
    assert "which no compliant launch created" in reason.message


def test_a_restore_is_a_version_3_record_and_older_records_read_as_before() -> None:
    record = Record.for_event(recnum=0, pcr=23, event=restored())
    data = record.to_json()
    assert data["content"]["version"] == 3 and data["content"]["restore"] is True
    again = parse_line(json.dumps(data).encode(), "line 1")
    assert again == record and again.event.restore is True
    plain = Record.for_event(recnum=0, pcr=23, event=launch()).to_json()
    assert plain["content"]["version"] == 2 and "restore" not in plain["content"]
    assert parse_line(json.dumps(plain).encode(), "l").event.restore is False


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.update(restore=False), "content.restore must be true in a version 3"),
        (lambda c: c.pop("restore"), "content has fields"),
        (lambda c: c.update(restore="yes"), "content.restore has the wrong type"),
        (lambda c: c.update(version=2), "content has fields"),
    ],
)
def test_malformed_restore_records_are_refused(mutate: object, message: str) -> None:
    data = Record.for_event(recnum=0, pcr=23, event=restored()).to_json()
    mutate(data["content"])  # type: ignore[operator]
    with pytest.raises(EventLogError, match=message):
        parse_line(json.dumps(data).encode(), "line 1")
