"""The event log model: records, parsing, replay and divergence."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusthook.common.eventlog import (
    Identity,
    LaunchEvent,
    Record,
    extend,
    parse_line,
    replay,
    verify_against_pcr,
)
from trusthook.errors import EventLogError


def event(cid: str = "c1") -> LaunchEvent:
    return LaunchEvent(
        container_id=cid,
        bundle="/run/b",
        image_reference="docker.io/library/busybox:1.36",
        image_digest=None,
        rootfs_digest="sha256:" + "ab" * 32,
        rootfs_entries=3,
        config_digest="sha256:" + "cd" * 32,
        launch_profile_digest="sha256:" + "ef" * 32,
        stage="createRuntime",
        time="2026-11-28T12:00:00.000000Z",
        boot_id="b0",
    )


def log(n: int) -> list[Record]:
    return [Record.for_event(recnum=i, pcr=23, event=event(f"c{i}")) for i in range(n)]


def test_line_round_trip() -> None:
    record = log(1)[0]
    assert parse_line(record.to_line().rstrip(b"\n"), "x") == record


def test_replay_is_the_extend_chain() -> None:
    records = log(3)
    value = bytes(32)
    for r in records:
        value = extend(value, r.digest)
    assert replay(records) == value
    verify_against_pcr(records, 23, value)


def test_extra_record_is_named() -> None:
    records = log(3)
    with pytest.raises(EventLogError, match="^record 2: log diverges from PCR 23"):
        verify_against_pcr(records, 23, replay(records[:2]))


def test_unknown_extend_is_reported_at_record_0() -> None:
    records = log(2)
    with pytest.raises(EventLogError, match="no prefix of the 2 records replays"):
        verify_against_pcr(records, 23, extend(replay(records), bytes(32)))


def test_reset_pcr_is_reported() -> None:
    with pytest.raises(EventLogError, match="reset or the TPM restarted"):
        verify_against_pcr(log(2), 23, bytes(32))


def test_renumbered_record_is_named() -> None:
    records = log(2)
    records[1] = Record.for_event(recnum=5, pcr=23, event=records[1].event)
    with pytest.raises(EventLogError, match="^record 1: recnum is 5, expected 1"):
        verify_against_pcr(records, 23, replay(records))


def test_altered_content_is_named() -> None:
    records = log(2)
    data = records[1].to_json()
    data["content"]["rootfs_digest"] = "sha256:" + "00" * 32
    altered = parse_line(json.dumps(data).encode(), "x")
    with pytest.raises(EventLogError, match="^record 1: digest .* does not match its content"):
        verify_against_pcr([records[0], altered], 23, replay([records[0], altered]))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("recnum"), "a record must be an object"),
        (lambda d: d.update(recnum=-1), "recnum must be an integer 0 to 9007199254740991"),
        (lambda d: d.update(recnum=2**53), "recnum must be an integer 0 to 9007199254740991"),
        (lambda d: d.update(pcr=24), "pcr must be an integer 0..23"),
        (lambda d: d.update(content_type="ima"), "content_type 'ima'"),
        (lambda d: d["digests"][0].update(hashAlg="sha1"), "exactly one sha256 digest"),
        (lambda d: d["digests"][0].update(digest="zz"), "digest is not lowercase hexadecimal"),
        (lambda d: d["digests"][0].update(digest="00"), "digest has 1 bytes"),
        (lambda d: d["digests"][0].update(digest="AB" * 32), "not lowercase hexadecimal"),
        (lambda d: d["content"].update(rootfs_entries=-1), "rootfs_entries is -1, expected 0"),
        # found by the cel_log fuzzer: JCS would write it back rounded (2.7988888888888890e17)
        (
            lambda d: d["content"].update(rootfs_entries=279888888888888888),
            "rootfs_entries is 279888888888888888, expected 0 to 9007199254740991",
        ),
        (lambda d: d["content"].pop("boot_id"), "content has fields"),
        (
            lambda d: d["content"].update(rootfs_entries="3"),
            "content.rootfs_entries has the wrong type",
        ),
        (lambda d: d["content"].update(version=4), "content version 4, expected 1, 2 or 3"),
        (lambda d: d["content"].update(version=True), "content version True"),
        (lambda d: d["content"].update(version=2), "content has fields"),  # v2 has two more
        (lambda d: d["content"].update(image={"reference": 1, "digest": None}), "content.image"),
    ],
)
def test_malformed_records_are_refused(mutate: object, message: str) -> None:
    data = log(1)[0].to_json()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(EventLogError, match=f"^line 7: .*{message}"):
        parse_line(json.dumps(data).encode(), "line 7")


def v2(**identity: object) -> dict[str, object]:
    data = Record.for_event(
        recnum=0,
        pcr=23,
        event=replace(event(), identity=Identity(workload="shop/web"), encrypted=True),
    ).to_json()
    data["content"]["identity"].update(identity)
    return data


def test_version_2_carries_the_identity_and_version_1_still_reads() -> None:
    k8s = replace(
        event(), identity=Identity(kubernetes=("shop", "web-5d8f", "web")), encrypted=False
    )
    record = Record.for_event(recnum=0, pcr=23, event=k8s)
    assert record.to_json()["content"]["version"] == 2
    assert record.to_json()["content"]["identity"] == {
        "workload": None,
        "kubernetes": {"namespace": "shop", "pod": "web-5d8f", "container": "web"},
    }
    assert parse_line(record.to_line(), "x") == record
    old = log(1)[0]  # written by a version 1 agent: read, and its digest still its own
    assert old.to_json()["content"]["version"] == 1
    assert parse_line(old.to_line(), "x").event.digest() == old.digest


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (v2(workload=7), "identity.workload must be a string or null"),
        (v2(kubernetes={"namespace": "a", "pod": "b"}), "identity.kubernetes must be"),
        (v2(kubernetes=["a", "b", "c"]), "identity.kubernetes must be"),
        (v2(extra=None), "content.identity must be"),
    ],
)
def test_malformed_identities_are_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(EventLogError, match=f"^line 7: .*{message}"):
        parse_line(json.dumps(data).encode(), "line 7")


def test_encrypted_must_be_a_boolean() -> None:
    data = v2()
    data["content"]["encrypted"] = 1  # type: ignore[index]
    with pytest.raises(EventLogError, match="content.encrypted has the wrong type"):
        parse_line(json.dumps(data).encode(), "line 7")


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_our_error(raw: bytes) -> None:
    with contextlib.suppress(EventLogError):
        parse_line(raw, "x")
