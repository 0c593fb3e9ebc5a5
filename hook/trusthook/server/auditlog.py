"""The server's audit log: every event the store audits is also an entry of the append-only
Merkle log (docs/audit.md §9), appended in the same transaction as the change it records, so
no decision is stored without its entry and no entry without its decision.

The index is the log's size: ``append`` first increments the one ``audit_head`` row, which
locks it until the transaction ends, so concurrent appends (server processes on one
PostgreSQL) take indexes one after another, with no gap (a rolled-back transaction rolls its
increment back) and no duplicate. The entry's full subtrees go into ``audit_nodes``; a
checkpoint is signed with the log key when CHECKPOINT_ENTRIES entries or CHECKPOINT_SECONDS
have passed since the last one, and whenever a reader asks for one that the log has outgrown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, select

from trusthook.attest.verdict import Reason
from trusthook.audit import (
    EMPTY_ROOT,
    MAX_LAUNCHES,
    AuditEntry,
    Bundle,
    Checkpoint,
    EventType,
    Frontier,
    NoteSigner,
    Span,
    Subject,
    SubjectKind,
    consistency_proof,
    export_bundle,
    inclusion_proof,
    leaf_hash,
    open_checkpoint,
    plain_json,
    sign_checkpoint,
)
from trusthook.common.clock import iso_from_timestamp
from trusthook.common.files import write_new
from trusthook.errors import AuditEntryTooLargeError, AuditLogError, ConfigError, NotFoundError
from trusthook.server import auditwrite
from trusthook.server.auditwrite import HEAD_ID
from trusthook.server.records import AppraisedLaunch
from trusthook.server.schema import audit_checkpoints, audit_head, audit_log

CHECKPOINT_ENTRIES = 100
CHECKPOINT_SECONDS = 60.0
MAX_ENTRIES = 1000  # per read
# The longest member of a launch's violation in an entry: a longer one keeps its first
# characters and ends in "… (cut: N characters)", N its length (docs/audit.md §2).
MAX_VIOLATION_TEXT = 1024
_CUT = "\u2026 (cut:"
_VIOLATION_KEPT = MAX_VIOLATION_TEXT - len(_CUT) - len(" 0000000000 characters)")

# The store's event names and the log's event types (docs/audit.md §2, "Event types").
_EVENTS: Mapping[str, EventType] = {
    "pending": EventType.HOST_PENDING,
    "admitted": EventType.HOST_ADMITTED,
    "auto_admitted": EventType.HOST_ADMITTED,
    "approved": EventType.HOST_APPROVED,
    "tagged": EventType.HOST_TAGGED,
    "rejected": EventType.HOST_REJECTED,
    "revoked": EventType.HOST_REVOKED,
    "cleared": EventType.HOST_CLEARED,
    "enrolled": EventType.ENROLLED,
    "reenrolled": EventType.ENROLLED,
    "enrollment_refused": EventType.ENROLLMENT_REFUSED,
    "attested": EventType.ATTESTED,
    "refused": EventType.ATTESTED,
    "launched": EventType.LAUNCHED,
    "request_refused": EventType.REQUEST_REFUSED,
    "released": EventType.RELEASED,
    "release_refused": EventType.RELEASE_REFUSED,
    "policy_applied": EventType.POLICY_VERSION,
    "operator_cert_issued": EventType.OPERATOR_ACTION,
    "operator_cert_revoked": EventType.OPERATOR_ACTION,
    "checkpoint_allowed": EventType.CHECKPOINT_ALLOWED,
    "checkpoint_refused": EventType.CHECKPOINT_REFUSED,
    "restore_allowed": EventType.RESTORE_ALLOWED,
    "restore_refused": EventType.RESTORE_REFUSED,
}


def load_signer(path: Path) -> NoteSigner:
    """The log key in ``path`` (``NoteSigner.encode``'s text, written by ``server init``)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"cannot read the audit log key {path}: {getattr(e, 'strerror', e)};"
            " run 'trusthook server init'"
        ) from e
    try:
        return NoteSigner.parse(text)
    except AuditLogError as e:
        raise ConfigError(f"audit log key {path}: {e}") from None


def create_signer(path: Path, origin: str) -> NoteSigner:
    """A new log key named ``origin``, written to ``path`` (0600, never replaced)."""
    signer = NoteSigner.generate(origin)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_new(path, (signer.encode() + "\n").encode("ascii"), 0o600)
    return signer


_SCALARS = frozenset({str, int, bool, type(None)})  # exactly these types: kept as they are


def _portable_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: value if type(value) in _SCALARS else _portable(value) for key, value in detail.items()
    }


def _portable(value: object) -> object:
    """``value`` with numbers that have fractions written as their shortest decimal text
    (entries hold no fractions: they have no portable canonical form). Leaves are looked at
    in the loops: a call per leaf cost a tenth of an attestation's append."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        return repr(value)
    if isinstance(value, dict):
        return {k: v if type(v) in _SCALARS else _portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [v if type(v) in _SCALARS else _portable(v) for v in value]
    return value


def verdict_events(
    host_id: str, detail: Mapping[str, Any], launches: Sequence[AppraisedLaunch], *, trusted: bool
) -> list[Event]:
    """An appraisal's events (docs/audit.md §2): its verdict (``attested`` or ``refused``,
    with ``detail``) holding the first MAX_LAUNCHES of the launches it verified, then
    ``launched`` events of up to MAX_LAUNCHES each for the rest, in the records' order."""
    details = [launch_detail(x) for x in launches]
    verdict = dict(detail)
    if details:
        verdict["launches"] = details[:MAX_LAUNCHES]
    events = [Event("attested" if trusted else "refused", host_id, verdict)]
    events.extend(
        Event("launched", host_id, {"trusted": trusted, "launches": details[i : i + MAX_LAUNCHES]})
        for i in range(MAX_LAUNCHES, len(details), MAX_LAUNCHES)
    )
    return events


def launch_detail(launch: AppraisedLaunch) -> dict[str, Any]:
    """A member of an entry's ``launches``: one event-log record the appraisal verified, with
    its compliance."""
    record, compliance = launch.record, launch.compliance
    event = record.event
    policy: dict[str, Any] = {"policy_version": launch.policy_version}
    if compliance is not None:
        policy.update(
            identity=compliance.identity,
            workload=compliance.workload,
            compliant=compliance.compliant,
            violations=[_violation(r) for r in compliance.reasons],
            action=compliance.action.value,
            move=None if launch.move is None else launch.move.value,
        )
    return {
        **policy,
        "encrypted": event.encrypted,
        "container": event.container_id,
        "image": event.image_reference,
        "image_digest": event.image_digest,
        "rootfs_digest": event.rootfs_digest,
        "config_digest": event.config_digest,
        "launch_profile": event.launch_profile_digest,
        "recnum": record.recnum,
        "stage": event.stage,
        "host_time": event.time,
        "boot_id": event.boot_id,
    }


def _violation(reason: Reason) -> dict[str, Any]:
    """A violation as an entry holds it: a member over MAX_VIOLATION_TEXT characters is cut
    there and says how long it was (docs/audit.md §2). A workload that allows many images
    lists them all in ``expected``; uncut, one launch could outgrow an entry, and its host
    would fail every attestation after it."""
    out = reason.to_json()
    for key, value in out.items():
        if isinstance(value, str) and len(value) > MAX_VIOLATION_TEXT:
            out[key] = f"{value[:_VIOLATION_KEPT]}{_CUT} {len(value)} characters)"
    return out


def entry_for(
    index: int, event_name: str, host_id: str, detail: Mapping[str, Any], now: float
) -> AuditEntry:
    """The log entry of one audited event as the store names it."""
    return entries_for(index, [Event(event_name, host_id, detail)], now)[0]


def entries_for(first: int, events: Sequence[Event], now: float) -> list[AuditEntry]:
    """The log entries of ``events``, the first at index ``first``, all at ``now``: what one
    append builds (the time formatted once, one subject per host)."""
    return _fitted(first, events, now)[1]


def _fitted(
    first: int, events: Sequence[Event], now: float
) -> tuple[list[Event], list[AuditEntry]]:
    """``entries_for``, and the events the entries are of: an event whose launches make its
    entry larger than MAX_ENTRY_BYTES becomes two, the first half of its launches in it and
    the rest in a ``launched`` event after it, until each fits (docs/audit.md §2); a launch
    that does not fit an entry on its own is refused (AuditEntryTooLargeError)."""
    time, hosts = iso_from_timestamp(now), dict[str, Subject]()
    fitted: list[Event] = []
    entries: list[AuditEntry] = []
    todo = list(reversed(events))  # a stack: the next event last
    while todo:
        event = todo.pop()
        try:
            entry = _new_entry(
                first + len(entries),
                event.name,
                event.host_id,
                event.detail,
                time=time,
                hosts=hosts,
            )
        except AuditEntryTooLargeError:
            launches = event.detail.get("launches")
            if not isinstance(launches, list) or len(launches) < 2:
                raise
            half = len(launches) // 2
            todo.append(_launched(event, launches[half:]))
            todo.append(
                Event(event.name, event.host_id, {**event.detail, "launches": launches[:half]})
            )
            continue
        fitted.append(event)
        entries.append(entry)
    return fitted, entries


def _launched(event: Event, launches: list[Any]) -> Event:
    """A ``launched`` event of ``launches``, with the verdict of ``event`` (a verdict or a
    ``launched`` event)."""
    trusted = event.detail.get("trusted") if event.name == "launched" else event.name == "attested"
    return Event("launched", event.host_id, {"trusted": trusted, "launches": launches})


def _new_entry(
    index: int,
    event_name: str,
    host_id: str,
    detail: Mapping[str, Any],
    *,
    time: str,
    hosts: dict[str, Subject],
) -> AuditEntry:
    """``entry_for`` with the time already formatted and the host subjects made so far in
    ``hosts``."""
    event = _EVENTS.get(event_name)
    if event is None:
        raise AuditLogError(f"audit event {event_name!r} has no log event type")
    # A new dict, the entry's own. The entry checks once that its detail is plain JSON (no
    # fractions); only when it is not is the detail copied deep with its fractions rewritten
    # and the entry made again.
    try:
        return _entry_of(
            index,
            event,
            dict(detail),
            event_name=event_name,
            host_id=host_id,
            time=time,
            hosts=hosts,
        )
    except AuditEntryTooLargeError:
        raise
    except AuditLogError:
        if plain_json(detail):
            raise
    return _entry_of(
        index,
        event,
        _portable_detail(detail),
        event_name=event_name,
        host_id=host_id,
        time=time,
        hosts=hosts,
    )


def _entry_of(
    index: int,
    event: EventType,
    body: dict[str, Any],
    *,
    event_name: str,
    host_id: str,
    time: str,
    hosts: dict[str, Subject],
) -> AuditEntry:
    """``_new_entry`` of ``body``, which becomes the entry's detail."""
    if event is EventType.ATTESTED:
        body["trusted"] = event_name == "attested"
    elif event is EventType.ENROLLED:
        body["reenrolled"] = event_name == "reenrolled"
    elif event is EventType.HOST_ADMITTED:
        body["auto"] = event_name == "auto_admitted"
    if event is EventType.OPERATOR_ACTION:
        body["action"] = event_name
        subject = Subject(kind=SubjectKind.OPERATOR, id=str(body.get("name") or "unknown"))
    elif event is EventType.POLICY_VERSION:
        subject = Subject(kind=SubjectKind.OPERATOR, id=str(body.get("by") or "unknown"))
    else:
        found = hosts.get(host_id)
        if found is None:
            found = hosts[host_id] = Subject(kind=SubjectKind.HOST, id=host_id)
        subject = found
    return AuditEntry(index=index, time=time, event=event, subject=subject, detail=body)


class ConnSource:
    """The log's stored subtrees, read in one transaction (a ``SubtreeSource``)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def subtree_hashes(self, spans: Sequence[Span]) -> Sequence[bytes]:
        if not spans:
            return ()
        keys = [(s.level, s.position) for s in spans]
        by_level: dict[int, list[int]] = {}
        for level, position in keys:
            by_level.setdefault(level, []).append(position)
        # One primary-key lookup per level (SQLite plans a row-value IN list as a full scan),
        # as the driver's own SQL: SQLAlchemy's building and compiling of this expression cost
        # 2 ms a proof. The SQL holds placeholders only.
        mark = "?" if self._conn.dialect.paramstyle == "qmark" else "%s"
        where = " OR ".join(
            f"(level = {mark} AND position IN ({', '.join([mark] * len(positions))}))"
            for positions in by_level.values()
        )
        params = tuple(x for level, positions in by_level.items() for x in (level, *positions))
        rows = self._conn.exec_driver_sql(
            f"SELECT level, position, hash FROM audit_nodes WHERE {where}",  # noqa: S608
            params,
        ).all()
        found = {(r.level, r.position): bytes(r.hash) for r in rows}
        missing = [k for k in keys if k not in found]
        if missing:
            level, position = missing[0]
            raise AuditLogError(
                f"the audit log's subtree at level {level}, position {position} is missing from"
                " the database"
            )
        return [found[k] for k in keys]


@dataclass(frozen=True, slots=True)
class Head:
    size: int
    root: bytes


@dataclass(frozen=True, slots=True)
class Event:
    """One audited decision as the store names it: a row of the host's history and an entry
    of the log."""

    name: str
    host_id: str
    detail: Mapping[str, Any]


_INSERT_CHECKPOINT = insert(audit_checkpoints)
_HEAD = select(audit_head.c.size, audit_head.c.root).where(audit_head.c.id == HEAD_ID)
_LAST_CHECKPOINT = (
    select(audit_checkpoints.c.size, audit_checkpoints.c.note)
    .order_by(audit_checkpoints.c.size.desc())
    .limit(1)
)


def init_head(conn: Connection) -> None:
    """The head row of an empty log, if there is none."""
    if conn.execute(select(audit_head.c.id).where(audit_head.c.id == HEAD_ID)).first() is None:
        conn.execute(
            insert(audit_head).values(
                id=HEAD_ID,
                size=0,
                root=EMPTY_ROOT,
                frontier=b"",
                checkpoint_size=-1,
                checkpoint_at=0.0,
            )
        )


def head(conn: Connection) -> Head:
    row = conn.execute(_HEAD).one()
    return Head(int(row.size), bytes(row.root))


def _frontier(size: int, packed: bytes) -> Frontier:
    hashes = tuple(packed[i : i + 32] for i in range(0, len(packed), 32))
    return Frontier(size, hashes)


class LastHead:
    """The head this process's last append left (a store's, shared by its threads): the next
    append is built on it and written in one statement, on the condition that the head row
    still holds it; if another process appended in between, nothing is written and the
    append locks the row, reads it and is built again (``append``). A stale or wrong value
    costs that retry, never a wrong entry: the condition compares the frontier's bytes."""

    def __init__(self) -> None:
        self.state: auditwrite.HeadState | None = None


def append(
    conn: Connection,
    events: Sequence[Event],
    *,
    now: float,
    signer: NoteSigner | None,
    last: LastHead | None = None,
) -> list[AuditEntry]:
    """Append ``events`` (their history rows and log entries, in order) in ``conn``'s
    transaction; sign a checkpoint if one is due and ``signer`` is given. With ``last``, built
    on the head it holds unless a checkpoint is due then (signing needs the row locked)."""
    count = len(events)
    if not count:
        return []
    with auditwrite.writer(conn) as writer:
        guess = None if last is None else last.state
        if guess is not None and not _checkpoint_due(guess, count, now, signer):
            entries, writes = _plan(conn, guess, events, now, None)
            written = writer.write(guess, writes)
        else:
            written = False
        if not written:  # the row locked: other appends wait, so the write finds it unchanged
            before = writer.lock()
            entries, writes = _plan(conn, before, events, now, signer)
            if not writer.write(before, writes):
                raise AuditLogError("the audit log's head row changed while it was locked")
    if last is not None:
        last.state = writes.after
    return entries


def _checkpoint_due(
    before: auditwrite.HeadState, count: int, now: float, signer: NoteSigner | None
) -> bool:
    return signer is not None and (
        before.checkpoint_size < 0
        or before.size + count - before.checkpoint_size >= CHECKPOINT_ENTRIES
        or now - before.checkpoint_at >= CHECKPOINT_SECONDS
    )


def _plan(
    conn: Connection,
    before: auditwrite.HeadState,
    events: Sequence[Event],
    now: float,
    signer: NoteSigner | None,
) -> tuple[list[AuditEntry], auditwrite.Writes]:
    """The entries of ``events`` appended to ``before`` (more than the events if launches had
    to be split: ``_fitted``) and what writing them writes, signing the checkpoint if one is
    due (``signer``: only with the head row locked)."""
    fitted, entries = _fitted(before.size, events, now)
    leaves = [entry.canonical() for entry in entries]
    frontier, nodes = _frontier(before.size, before.frontier).extend([leaf_hash(x) for x in leaves])
    root = frontier.root()
    checkpoint_size, checkpoint_at = before.checkpoint_size, before.checkpoint_at
    if signer is not None and _checkpoint_due(before, len(entries), now, signer):
        _sign(conn, signer, Head(frontier.size, root), now)
        checkpoint_size, checkpoint_at = frontier.size, now
    writes = auditwrite.Writes(
        now=now,
        # the entry's detail text: the event's detail as the log holds it, made once
        history=[
            (e.host_id, e.name, x.detail_text()) for e, x in zip(fitted, entries, strict=True)
        ],
        first=before.size,
        leaves=leaves,
        nodes=nodes,
        root=root,
        after=auditwrite.HeadState(
            frontier.size, b"".join(frontier.hashes), checkpoint_size, checkpoint_at
        ),
    )
    return entries, writes


def _sign(conn: Connection, signer: NoteSigner, at: Head, now: float) -> str:
    note = sign_checkpoint(Checkpoint(origin=signer.name, size=at.size, root=at.root), signer)
    conn.execute(_INSERT_CHECKPOINT, {"size": at.size, "at": now, "note": note})
    return note


def checkpoint(conn: Connection, signer: NoteSigner | None, now: float) -> str:
    """The signed checkpoint of the whole log: the last one signed, or a new one if the log
    has grown since (``signer`` needed then). IntegrityError if another process signed the
    same size meanwhile: read again."""
    return _latest(conn, signer, now, whole=True)[0]


def watch(
    conn: Connection, signer: NoteSigner | None, now: float, old: int
) -> tuple[str, tuple[bytes, ...]]:
    """What a host that holds a checkpoint of size ``old`` checks the log with at every
    attestation: the last checkpoint signed (appends sign one at least every
    CHECKPOINT_ENTRIES entries or CHECKPOINT_SECONDS, so this signs nothing; a new one only
    if there is none) and the consistency proof to it from ``old`` (none for 0, or for
    ``old`` not below its size: the host judges that)."""
    note, size = _latest(conn, signer, now, whole=False)
    proof = consistency_proof(ConnSource(conn), old, size) if 0 < old < size else ()
    return note, proof


def _latest(
    conn: Connection, signer: NoteSigner | None, now: float, *, whole: bool
) -> tuple[str, int]:
    """The last checkpoint signed and its size; with ``whole``, a new one if the log has grown
    since."""
    row = conn.execute(_LAST_CHECKPOINT).first()
    if row is not None and not whole:
        return str(row.note), int(row.size)
    current = head(conn)
    if row is not None and row.size == current.size:
        return str(row.note), current.size
    if signer is None:
        raise AuditLogError("the audit log has no checkpoint of its current size and no log key")
    return _sign(conn, signer, current, now), current.size


def entries(conn: Connection, start: int, end: int) -> list[AuditEntry]:
    """Entries ``start`` to ``end - 1`` (at most MAX_ENTRIES)."""
    size = head(conn).size
    if not 0 <= start < end <= size or end - start > MAX_ENTRIES:
        raise NotFoundError(
            f"audit entries {start}..{end - 1}: expected 0 <= start < end <= {size} and at most"
            f" {MAX_ENTRIES} at a time"
        )
    rows = conn.execute(
        select(audit_log.c.idx, audit_log.c.entry)
        .where(audit_log.c.idx >= start, audit_log.c.idx < end)
        .order_by(audit_log.c.idx)
    ).all()
    return [_entry(r.idx, r.entry) for r in rows]


def _entry(index: int, raw: bytes) -> AuditEntry:
    try:
        return AuditEntry.from_json(json.loads(raw), f"audit entry {index}")
    except ValueError as e:
        raise AuditLogError(f"audit entry {index} in the database is not JSON ({e})") from None


def entries_between(
    conn: Connection, since: float | None, until: float | None, size: int
) -> list[AuditEntry]:
    """Every entry of the first ``size`` from the first with a time at or after ``since`` to
    the last before ``until``, ascending and without a gap (a row missing from the database
    is an error, not a shorter export)."""
    bounds = select(func.min(audit_log.c.idx), func.max(audit_log.c.idx)).where(
        audit_log.c.idx < size
    )
    if since is not None:
        bounds = bounds.where(audit_log.c.at >= since)
    if until is not None:
        bounds = bounds.where(audit_log.c.at < until)
    first, last = conn.execute(bounds).one()
    if first is None:
        return []
    rows = conn.execute(
        select(audit_log.c.idx, audit_log.c.entry)
        .where(audit_log.c.idx >= first, audit_log.c.idx <= last)
        .order_by(audit_log.c.idx)
    ).all()
    found = [_entry(r.idx, r.entry) for r in rows]
    for expected, entry in zip(range(first, last + 1), found, strict=False):
        if entry.index != expected:
            break
    else:
        if len(found) == last - first + 1:
            return found
        expected = first + len(found)
    raise AuditLogError(f"audit entry {expected} is missing from the database")


def inclusion(conn: Connection, index: int, size: int) -> tuple[bytes, ...]:
    _check_sizes(conn, index + 1, size, "inclusion proof of entry")
    return inclusion_proof(ConnSource(conn), index, size)


def consistency(conn: Connection, old: int, new: int) -> tuple[bytes, ...]:
    _check_sizes(conn, old, new, "consistency proof from tree size")
    return consistency_proof(ConnSource(conn), old, new)


def _check_sizes(conn: Connection, low: int, high: int, what: str) -> None:
    size = head(conn).size
    if not 0 <= low <= high <= size or high == 0:
        raise NotFoundError(
            f"{what} {low} to {high}: expected sizes within the log's {size} entries"
        )


def export(
    conn: Connection,
    *,
    signer: NoteSigner,
    note: str,
    since: float | None,
    until: float | None,
    from_size: int | None,
) -> Bundle:
    """The bundle of the entries in [since, until) under ``note`` (a checkpoint of the log,
    ``signer``'s), with a consistency proof from ``from_size`` if given."""
    size = open_checkpoint(note, signer.verifier_key).checkpoint.size
    chosen = entries_between(conn, since, until, size)
    if not chosen:
        raise NotFoundError("no audit entries in that time range")
    return export_bundle(
        ConnSource(conn),
        key=signer.verifier_key,
        checkpoint=note,
        entries=chosen,
        since=from_size,
    )
