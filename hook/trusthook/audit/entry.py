"""Audit entries: what the attestation server logs, one leaf of the audit tree each. The leaf
is the entry's RFC 8785 canonical JSON (docs/audit.md, "Entries"). Pure, standard library only.

``from_json`` refuses anything but the documented shape with one line naming the member
("audit entry 17: detail.trusted got 'yes' for attested, expected true or false").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from json.encoder import encode_basestring
from types import MappingProxyType
from typing import Any, TypeVar

from trusthook.audit.merkle import leaf_hash
from trusthook.common.clock import iso
from trusthook.errors import AuditEntryTooLargeError, AuditLogError

MAX_ENTRY_BYTES = 65536  # canonical form
MAX_DEPTH = 16  # nesting inside detail
MAX_LAUNCHES = 16  # launches one entry holds (fewer if they do not fit MAX_ENTRY_BYTES)
SAFE_INTEGER = 2**53 - 1  # every JSON implementation reads these exactly
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_MEMBERS = ("index", "time", "event", "subject", "detail")
_SUBJECT_MEMBERS = ("kind", "id")


class EventType(StrEnum):
    HOST_ADMITTED = "host_admitted"
    HOST_PENDING = "host_pending"
    HOST_APPROVED = "host_approved"
    HOST_REJECTED = "host_rejected"
    HOST_REVOKED = "host_revoked"
    HOST_CLEARED = "host_cleared"
    HOST_TAGGED = "host_tagged"
    ENROLLED = "enrolled"
    ENROLLMENT_REFUSED = "enrollment_refused"
    REQUEST_REFUSED = "request_refused"
    ATTESTED = "attested"
    LAUNCHED = "launched"
    RELEASED = "released"
    RELEASE_REFUSED = "release_refused"
    POLICY_VERSION = "policy_version"
    OPERATOR_ACTION = "operator_action"
    CHECKPOINT_ALLOWED = "checkpoint_allowed"
    CHECKPOINT_REFUSED = "checkpoint_refused"
    RESTORE_ALLOWED = "restore_allowed"
    RESTORE_REFUSED = "restore_refused"


class SubjectKind(StrEnum):
    HOST = "host"
    WORKLOAD = "workload"
    OPERATOR = "operator"
    SERVER = "server"


_E = TypeVar("_E", EventType, SubjectKind)
_EVENTS: Mapping[str, EventType] = MappingProxyType({e.value: e for e in EventType})
_KINDS: Mapping[str, SubjectKind] = MappingProxyType({k.value: k for k in SubjectKind})


Members = tuple[tuple[str, type], ...]  # a member's name and its JSON type


@dataclass(frozen=True, slots=True)
class _Rule:
    """What an event's subject may be, which detail members it must carry (more may), and
    whether it carries launches: a ``launches`` array of 1 to MAX_LAUNCHES objects, each
    with LAUNCH_MEMBERS (``None``: never; ``False``: may; ``True``: must)."""

    subjects: frozenset[SubjectKind]
    detail: Members = ()
    launches: bool | None = None


_HOST = frozenset({SubjectKind.HOST})
_HOST_OR_WORKLOAD = frozenset({SubjectKind.HOST, SubjectKind.WORKLOAD})
_RULES: Mapping[EventType, _Rule] = MappingProxyType(
    {
        EventType.ATTESTED: _Rule(_HOST, (("trusted", bool), ("reasons", list)), False),
        EventType.LAUNCHED: _Rule(_HOST, (("trusted", bool),), True),
        EventType.ENROLLMENT_REFUSED: _Rule(_HOST, (("check", str), ("message", str))),
        EventType.REQUEST_REFUSED: _Rule(_HOST, (("check", str), ("message", str))),
        EventType.RELEASED: _Rule(_HOST_OR_WORKLOAD, (("image", str),)),
        EventType.RELEASE_REFUSED: _Rule(
            _HOST_OR_WORKLOAD, (("image", str), ("check", str), ("message", str))
        ),
        EventType.POLICY_VERSION: _Rule(
            frozenset({SubjectKind.OPERATOR, SubjectKind.SERVER}),
            (("version", int), ("digest", str)),
        ),
        EventType.OPERATOR_ACTION: _Rule(frozenset({SubjectKind.OPERATOR}), (("action", str),)),
        # docs/policy.md §8: each decision names the container and the policy version (null:
        # none in force); a refusal its check and message
        EventType.CHECKPOINT_ALLOWED: _Rule(
            _HOST, (("container", str), ("identity", str), ("workload", str))
        ),
        EventType.CHECKPOINT_REFUSED: _Rule(
            _HOST, (("container", str), ("check", str), ("message", str))
        ),
        EventType.RESTORE_ALLOWED: _Rule(
            _HOST, (("container", str), ("identity", str), ("workload", str))
        ),
        EventType.RESTORE_REFUSED: _Rule(
            _HOST, (("container", str), ("check", str), ("message", str))
        ),
    }
)
_DEFAULT_RULE = _Rule(_HOST)  # host_* admission decisions and enrolled
LAUNCH_MEMBERS: Members = (  # what each member of ``launches`` must carry (more may)
    ("container", str),
    ("rootfs_digest", str),
    ("config_digest", str),
    ("launch_profile", str),
    ("recnum", int),
)


def _show(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int):
        return str(value) if abs(value) <= SAFE_INTEGER else "an unsafe integer"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"a string of {len(value)} characters"
    return {float: "a number with a fraction", list: "an array", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def _kind(expected: type) -> str:
    return {bool: "true or false", int: "an integer", str: "a string", list: "an array"}[expected]


def _missing(detail: Mapping[str, Any], members: Members) -> tuple[str, str, type] | None:
    """The first of ``members`` that ``detail`` lacks or holds with another type: its name,
    what it holds, the type expected."""
    for name, expected in members:
        value = detail.get(name)
        if type(value) is not expected and (  # the exact type: the common case, first
            not isinstance(value, expected) or (expected is int and isinstance(value, bool))
        ):
            return name, "nothing" if name not in detail else _show(value), expected
    return None


def _launches_refused(detail: Mapping[str, Any], rule: _Rule) -> tuple[str, str, str] | None:
    """What is wrong with ``detail``'s ``launches`` under ``rule``: where below it, what it
    holds there, what was expected (None: nothing)."""
    if "launches" not in detail:
        return ("", "nothing", "an array") if rule.launches else None
    launches = detail["launches"]
    if rule.launches is None:
        return "", "a member", "none"
    if not isinstance(launches, list) or not 0 < len(launches) <= MAX_LAUNCHES:
        got = f"{len(launches)} launches" if isinstance(launches, list) else _show(launches)
        return "", got, f"an array of 1 to {MAX_LAUNCHES}"
    for i, launch in enumerate(launches):
        if not isinstance(launch, dict):
            return f"[{i}]", _show(launch), "an object"
        wrong = _missing(launch, LAUNCH_MEMBERS)
        if wrong is not None:
            name, got, expected = wrong
            return f"[{i}].{name}", got, _kind(expected)
    return None


class _Refused(Exception):
    """A value of ``detail`` that has no portable canonical form, and where it sits."""

    def __init__(self, path: str, text: str) -> None:
        super().__init__(text)
        self.path, self.text = path, text


def _utf16(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _encode(value: object, depth: int) -> str:
    """RFC 8785 text of a JSON value without fractions or unsafe integers (refused, as are
    non-string keys and deep nesting: they have no exact, portable canonical form). Strings
    use the json module's escaping, which is JCS's; members sort by UTF-16 code units."""
    if isinstance(value, str):
        return encode_basestring(value)  # a lone surrogate fails the final UTF-8 encoding
    if value is None or isinstance(value, bool):
        return "null" if value is None else "true" if value else "false"
    if isinstance(value, int):
        if abs(value) > SAFE_INTEGER:
            raise _Refused("", f"got {_show(value)}, expected an integer within ±(2**53-1)")
        return int.__repr__(value)
    if not isinstance(value, list | dict):
        raise _Refused("", f"got {_show(value)}, expected a JSON value without fractions")
    if depth >= MAX_DEPTH:
        raise _Refused("", f"nests deeper than {MAX_DEPTH} levels")
    parts: list[str] = []
    if isinstance(value, list):
        try:
            for item in value:
                parts.append(_encode(item, depth + 1))
        except _Refused as e:  # the item that failed is the next one
            raise _Refused(f"[{len(parts)}]{e.path}", e.text) from None
        return "[" + ",".join(parts) + "]"
    keys = list(value)
    try:
        ascii_only = "".join(keys).isascii()
    except TypeError:
        bad = next(k for k in keys if not isinstance(k, str))
        raise _Refused("", f"has key {bad!r}, expected string keys") from None
    keys.sort(key=None if ascii_only else _utf16)
    try:
        for key in keys:
            parts.append(f"{encode_basestring(key)}:{_encode(value[key], depth + 1)}")
    except _Refused as e:
        raise _Refused(f".{keys[len(parts)]}{e.path}", e.text) from None
    return "{" + ",".join(parts) + "}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Subject:
    """Who or what an entry is about: a host id, a workload, an operator, the server."""

    kind: SubjectKind
    id: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "id": self.id}


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One event in the audit log. ``detail`` must not be changed after construction."""

    index: int
    time: str  # trusthook.common.clock.iso: RFC 3339 UTC, microseconds, "Z"
    event: EventType
    subject: Subject
    detail: dict[str, Any]
    _leaf: bytes = field(init=False, repr=False, compare=False)  # canonical(), made once
    _detail: str = field(init=False, repr=False, compare=False)  # detail_text()

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not 0 <= self.index <= SAFE_INTEGER:
            raise AuditLogError(f"audit entry: index got {self.index!r}, expected 0..2**53-1")
        if not _TIME.fullmatch(self.time) or not _valid_time(self.time):
            raise self._refuse(
                f"time got {_show(self.time)}, expected UTC like 2026-12-01T19:53:20.123456Z"
            )
        if not isinstance(self.subject.id, str) or not 0 < len(self.subject.id) <= 256:
            raise self._refuse(
                f"subject.id got {_show(self.subject.id)}, expected 1 to 256 characters"
            )
        rule = _RULES.get(self.event, _DEFAULT_RULE)
        if self.subject.kind not in rule.subjects:
            kinds = " or ".join(sorted(k.value for k in rule.subjects))
            raise self._refuse(
                f"subject.kind got {str(self.subject.kind)!r} for {self.event}, expected {kinds}"
            )
        if not isinstance(self.detail, dict):
            raise self._refuse(f"detail got {_show(self.detail)}, expected an object")
        wrong = _missing(self.detail, rule.detail)
        if wrong is not None:
            name, got, expected = wrong
            raise self._refuse(
                f"detail.{name} got {got} for {self.event}, expected {_kind(expected)}"
            )
        refused = _launches_refused(self.detail, rule)
        if refused is not None:
            where, held, wanted = refused
            raise self._refuse(
                f"detail.launches{where} got {held} for {self.event}, expected {wanted}"
            )
        detail, data = _canonical(self)
        if len(data) > MAX_ENTRY_BYTES:
            raise AuditEntryTooLargeError(
                f"audit entry {self.index}: {len(data)} bytes, expected at most {MAX_ENTRY_BYTES}"
            )
        object.__setattr__(self, "_leaf", data)
        object.__setattr__(self, "_detail", detail)

    def _refuse(self, text: str) -> AuditLogError:
        return AuditLogError(f"audit entry {self.index}: {text}")

    @classmethod
    def at(
        cls,
        *,
        index: int,
        moment: datetime,
        event: EventType,
        subject: Subject,
        detail: Mapping[str, Any],
    ) -> AuditEntry:
        """The entry for ``event`` at ``moment`` (timezone-aware); ``detail`` is copied."""
        return cls(index=index, time=iso(moment), event=event, subject=subject, detail=dict(detail))

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "time": self.time,
            "event": self.event.value,
            "subject": self.subject.to_json(),
            "detail": self.detail,
        }

    def canonical(self) -> bytes:
        """The leaf: RFC 8785 canonical JSON of ``to_json()``, at most MAX_ENTRY_BYTES."""
        return self._leaf

    def leaf_hash(self) -> bytes:
        return leaf_hash(self._leaf)

    def detail_text(self) -> str:
        """The detail's canonical JSON text (the leaf's ``detail`` member)."""
        return self._detail

    @classmethod
    def from_json(cls, data: object, where: str = "audit entry") -> AuditEntry:
        """The entry in a parsed JSON value; ``where`` starts every refusal."""
        obj = _object(data, where, _MEMBERS)
        index = obj["index"]
        if isinstance(index, bool) or not isinstance(index, int):
            raise AuditLogError(f"{where}: index got {_show(index)}, expected an integer")
        time = obj["time"]
        if not isinstance(time, str):
            raise AuditLogError(f"{where}: time got {_show(time)}, expected a string")
        subject = _object(obj["subject"], where, _SUBJECT_MEMBERS, "subject")
        if not isinstance(subject["id"], str):
            raise AuditLogError(
                f"{where}: subject.id got {_show(subject['id'])}, expected a string"
            )
        return cls(
            index=index,
            time=time,
            event=_choice(_EVENTS, obj["event"], where, "event"),
            subject=Subject(
                kind=_choice(_KINDS, subject["kind"], where, "subject.kind"),
                id=subject["id"],
            ),
            detail=obj["detail"],
        )


def _valid_time(text: str) -> bool:
    """A real date and time (the pattern has already fixed the form)."""
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


_LEAVES = frozenset({str, bool, type(None)})  # written as they are, whatever their content


def _plain(value: object, depth: int) -> bool:
    """Whether the json module's C encoder writes ``value`` exactly as ``_encode`` does:
    strings, booleans, null, integers within ±SAFE_INTEGER, and arrays and objects of them
    within MAX_DEPTH whose keys are ASCII strings (sorted by code point, as by UTF-16 code
    unit). Anything else goes to ``_encode``, which writes it or says what is wrong. Leaves
    are checked in the loops (a call per leaf cost most of an attestation's entry)."""
    kind = type(value)
    if kind in _LEAVES:
        return True
    if kind is int:
        return -SAFE_INTEGER <= value <= SAFE_INTEGER  # type: ignore[operator]
    if depth >= MAX_DEPTH or (kind is not dict and kind is not list):
        return False
    if kind is dict:
        keys: dict[Any, Any] = value  # type: ignore[assignment]
        try:
            ascii_keys = "".join(keys).isascii()
        except TypeError:  # a key that is not a string
            ascii_keys = False
        if not ascii_keys:
            return False
        items: Iterable[Any] = keys.values()
    else:
        items = value  # type: ignore[assignment]
    for item in items:  # noqa: SIM110 (a loop: all() over a generator cost a third more)
        if type(item) not in _LEAVES and not _plain(item, depth + 1):
            return False
    return True


def plain_json(value: object) -> bool:
    """Whether ``value`` is a detail the log takes as it is, written by the json module's
    encoder: no fractions, no unsafe integers, ASCII keys, within MAX_DEPTH."""
    return _plain(value, 0)


def _canonical(entry: AuditEntry) -> tuple[str, bytes]:
    """The detail's text and the RFC 8785 bytes of ``entry.to_json()``: its members in their
    sorted order; the event, kind and time need no escapes (enum values and a checked
    pattern). The detail goes through the json module's C encoder when it can (``_plain``;
    test_audit_entry.py: the same bytes as the JCS reference), several times faster for an
    attestation's launches."""
    try:
        if _plain(entry.detail, 0):
            detail = json.dumps(
                entry.detail,
                ensure_ascii=False,
                sort_keys=True,
                separators=(",", ":"),
                check_circular=False,
            )
        else:
            detail = _encode(entry.detail, 0)
    except _Refused as e:
        raise entry._refuse(f"detail{e.path} {e.text}") from None
    text = (
        f'{{"detail":{detail},"event":"{entry.event}","index":{entry.index},'
        f'"subject":{{"id":{encode_basestring(entry.subject.id)},'
        f'"kind":"{entry.subject.kind}"}},"time":"{entry.time}"}}'
    )
    try:
        return detail, text.encode("utf-8")
    except UnicodeEncodeError:
        raise entry._refuse("a string holds a lone surrogate") from None


def _object(data: object, where: str, members: tuple[str, ...], what: str = "") -> dict[str, Any]:
    """``data`` if it is an object with exactly ``members``; else refused, naming ``what``."""
    if isinstance(data, dict) and data.keys() == set(members):
        return data
    at = f"{where}: {what}" if what else where
    if not isinstance(data, dict):
        raise AuditLogError(f"{at} got {_show(data)}, expected an object")
    for name in members:
        if name not in data:
            raise AuditLogError(f"{at}: {name} got nothing, expected a member")
    extra = sorted(set(data) - set(members))
    raise AuditLogError(f"{at} got member {extra[0]!r}, expected only {', '.join(members)}")


def _choice(values: Mapping[str, _E], value: object, where: str, what: str) -> _E:
    found = values.get(value) if isinstance(value, str) else None
    if found is None:
        names = ", ".join(values)
        raise AuditLogError(f"{where}: {what} got {_show(value)}, expected one of {names}")
    return found
