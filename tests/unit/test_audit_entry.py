"""Audit entries: the canonical leaf bytes, the round trip, and every other shape refused with
one line naming the member."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from trusthook.audit.entry import AuditEntry, EventType, Subject, SubjectKind
from trusthook.common.jcs import canonicalize
from trusthook.errors import AuditLogError

MOMENT = datetime(2026, 12, 1, 19, 53, 20, 123456, UTC)
HOST = Subject(kind=SubjectKind.HOST, id="5f1c0ad3")


def _attested(**detail: Any) -> AuditEntry:
    return AuditEntry.at(
        index=17,
        moment=MOMENT,
        event=EventType.ATTESTED,
        subject=HOST,
        detail={"trusted": False, "reasons": [{"check": "pcr", "message": "PCR 7 differs"}]}
        | detail,
    )


def test_canonical_leaf_bytes() -> None:
    """docs/audit.md's example, byte for byte: RFC 8785 sorts members, no whitespace."""
    assert _attested().canonical() == (
        b'{"detail":{"reasons":[{"check":"pcr","message":"PCR 7 differs"}],"trusted":false},'
        b'"event":"attested","index":17,"subject":{"id":"5f1c0ad3","kind":"host"},'
        b'"time":"2026-12-01T19:53:20.123456Z"}'
    )
    assert _attested().leaf_hash().hex() == (
        "a7951da8cd3a84713e61ed5e05c2e746560d9f627d104cf558b8db531fd4a65b"
    )


def test_round_trip_and_time_in_the_one_format() -> None:
    entry = _attested()
    assert AuditEntry.from_json(json.loads(json.dumps(entry.to_json()))) == entry
    elsewhere = MOMENT.astimezone(timezone(timedelta(hours=5)))
    assert AuditEntry.at(
        index=0, moment=elsewhere, event=EventType.ENROLLED, subject=HOST, detail={}
    ).time == ("2026-12-01T19:53:20.123456Z")


def _json(**change: Any) -> dict[str, Any]:
    data = _attested().to_json()
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([], "audit entry got an array, expected an object"),
        (_json(extra=1), "got member 'extra', expected only index, time, event, subject, detail"),
        (_json(detail=None), "detail got nothing"),
        (_json(index="17"), "index got '17', expected an integer"),
        (_json(index=True), "index got true, expected an integer"),
        (_json(index=-1), "index got -1"),
        (_json(index=2**53), "index got"),
        (_json(time="2026-12-01T19:53:20Z"), "time got .*expected UTC like"),
        (_json(time="2026-12-01T19:53:20.123456+00:00"), "time got"),
        (_json(time="2026-13-01T19:53:20.123456Z"), "time got"),
        (_json(time=5), "time got 5, expected a string"),
        (_json(event="hacked"), "event got 'hacked', expected one of host_admitted"),
        (_json(subject={"kind": "host"}), "subject: id got nothing"),
        (_json(subject={"kind": "cat", "id": "x"}), "subject.kind got 'cat'"),
        (
            _json(subject={"kind": "operator", "id": "x"}),
            "subject.kind got 'operator' for attested",
        ),
        (_json(subject={"kind": "host", "id": ""}), "subject.id got '', expected 1 to 256"),
        (_json(subject={"kind": "host", "id": 7}), "subject.id got 7, expected a string"),
        (_json(detail=[1]), "detail got an array, expected an object"),
        (_json(detail={"trusted": "yes", "reasons": []}), "detail.trusted got 'yes' for attested"),
        (_json(detail={"reasons": []}), "detail.trusted got nothing"),
        (_json(detail={"trusted": True, "reasons": [], "x": 1.5}), "detail.x got a number with"),
        (_json(detail={"trusted": True, "reasons": [2**60]}), r"detail.reasons\[0\] got an unsafe"),
        (_json(detail={"trusted": True, "reasons": ["\ud800"]}), "lone surrogate"),
    ],
)
def test_other_shapes_refused(data: object, reason: str) -> None:
    with pytest.raises(AuditLogError, match=reason):
        AuditEntry.from_json(data)


def test_deep_and_long_entries_refused() -> None:
    deep: Any = "x"
    for _ in range(500):  # refused at once: naming where costs nothing more per level
        deep = [deep]
    with pytest.raises(AuditLogError, match=r"detail.deep(\[0\]){15} nests deeper than 16"):
        _attested(deep=deep)
    with pytest.raises(AuditLogError, match="bytes, expected at most 65536"):
        _attested(long="x" * 70000).canonical()


LAUNCH = {
    "container": "web-1",
    "image": None,
    "rootfs_digest": "sha256:aa",
    "config_digest": "sha256:bb",
    "launch_profile": "sha256:cc",
    "recnum": 0,
}
LAUNCHES = {"trusted": True, "launches": [LAUNCH, LAUNCH | {"recnum": 1}]}


@pytest.mark.parametrize(
    ("event", "kind", "detail"),
    [
        (EventType.HOST_PENDING, SubjectKind.HOST, {}),
        (EventType.RELEASED, SubjectKind.WORKLOAD, {"image": "sha256:ab", "layers": 2}),
        (EventType.RELEASE_REFUSED, SubjectKind.HOST, {"image": "i", "check": "c", "message": "m"}),
        (EventType.POLICY_VERSION, SubjectKind.SERVER, {"version": 3, "digest": "sha256:cd"}),
        (EventType.OPERATOR_ACTION, SubjectKind.OPERATOR, {"action": "approve", "host": "5f"}),
        (EventType.ENROLLMENT_REFUSED, SubjectKind.HOST, {"check": "ek", "message": "unknown"}),
        (EventType.LAUNCHED, SubjectKind.HOST, LAUNCHES),
        (
            EventType.ATTESTED,
            SubjectKind.HOST,
            {"trusted": True, "reasons": [], "launches": [LAUNCH]},
        ),
    ],
)
def test_each_event_with_its_detail(event: EventType, kind: SubjectKind, detail: Any) -> None:
    entry = AuditEntry.at(
        index=3, moment=MOMENT, event=event, subject=Subject(kind=kind, id="a"), detail=detail
    )
    assert AuditEntry.from_json(entry.to_json()) == entry


def _launched(detail: Any, event: EventType = EventType.LAUNCHED) -> AuditEntry:
    return AuditEntry.at(
        index=3,
        moment=MOMENT,
        event=event,
        subject=Subject(kind=SubjectKind.HOST, id="a"),
        detail=detail,
    )


def test_a_launch_names_its_container_and_record() -> None:
    for missing in ("container", "recnum"):
        launch = {k: v for k, v in LAUNCH.items() if k != missing}
        with pytest.raises(
            AuditLogError, match=rf"detail.launches\[1\].{missing} got nothing for launched"
        ):
            _launched({"trusted": True, "launches": [LAUNCH, launch]})
    with pytest.raises(AuditLogError, match=r"detail.launches\[0\].recnum got true"):
        _launched({"trusted": True, "launches": [LAUNCH | {"recnum": True}]})
    with pytest.raises(AuditLogError, match="subject"):
        AuditEntry.at(
            index=3,
            moment=MOMENT,
            event=EventType.LAUNCHED,
            subject=Subject(kind=SubjectKind.WORKLOAD, id="a"),
            detail=LAUNCHES,
        )


@pytest.mark.parametrize(
    ("event", "detail", "reason"),
    [
        (
            EventType.LAUNCHED,
            {"trusted": True},
            "detail.launches got nothing for launched, expected an array",
        ),
        (EventType.LAUNCHED, {"launches": [LAUNCH]}, "detail.trusted got nothing"),
        (
            EventType.LAUNCHED,
            {"trusted": True, "launches": []},
            "got 0 launches for launched, expected an array of 1 to 16",
        ),
        (EventType.LAUNCHED, {"trusted": True, "launches": [LAUNCH] * 17}, "got 17 launches"),
        (
            EventType.LAUNCHED,
            {"trusted": True, "launches": {"0": LAUNCH}},
            "detail.launches got an object",
        ),
        (
            EventType.LAUNCHED,
            {"trusted": True, "launches": ["web-1"]},
            r"detail.launches\[0\] got 'web-1' for launched, expected an object",
        ),
        (
            EventType.ATTESTED,
            {"trusted": True, "reasons": [], "launches": []},
            "got 0 launches for attested",
        ),
        (
            EventType.RELEASED,
            {"image": "i", "launches": [LAUNCH]},
            "detail.launches got a member for released, expected none",
        ),
    ],
)
def test_launches_of_another_shape_refused(event: EventType, detail: Any, reason: str) -> None:
    with pytest.raises(AuditLogError, match=reason):
        _launched(detail, event)


def test_policy_version_must_be_an_integer_not_a_boolean() -> None:
    with pytest.raises(AuditLogError, match="detail.version got true"):
        AuditEntry.at(
            index=3,
            moment=MOMENT,
            event=EventType.POLICY_VERSION,
            subject=Subject(kind=SubjectKind.SERVER, id="s"),
            detail={"version": True, "digest": "d"},
        )


KEYS = st.text(st.characters(max_codepoint=127), max_size=4) | st.text(max_size=4)
SAFE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=10,
)


@given(st.dictionaries(KEYS, SAFE, max_size=5), st.text(min_size=1, max_size=12))
@example({"\ue000": 1, "\U0001f600": 2, "a": {"\uffff": [], "\U00010000": None}}, "\U0001f600")
@example({"b": [1, -(2**53 - 1), {"a": "\u00e9\n"}], "a": None}, "h")  # the json module's path
def test_canonical_bytes_are_jcs(detail: dict[str, Any], subject_id: str) -> None:
    """The canonical form is RFC 8785 byte for byte, key order by UTF-16 included, whether
    the json module's encoder writes it (ASCII keys) or the entry's own."""
    entry = AuditEntry.at(
        index=5,
        moment=MOMENT,
        event=EventType.HOST_CLEARED,
        subject=Subject(kind=SubjectKind.HOST, id=subject_id),
        detail=detail,
    )
    assert entry.canonical() == canonicalize(entry.to_json())


def test_time_digits_must_be_ascii() -> None:
    fullwidth_two = "\uff12"  # a Unicode digit: the pattern takes ASCII digits only
    with pytest.raises(AuditLogError, match="time got"):
        AuditEntry.from_json(_json(time=fullwidth_two + "026-12-01T19:53:20.123456Z"))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from(["index", "time", "event", "subject", "detail", "x"]), JSON))
def test_arbitrary_json_raises_only_our_error(data: dict[str, Any]) -> None:
    with contextlib.suppress(AuditLogError):
        AuditEntry.from_json(data)
