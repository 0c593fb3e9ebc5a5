"""The server's audit log on a real SQLite store (server/auditlog.py): every audited decision
becomes an entry in the same transaction, checkpoints are signed with the log key, and what
``trusthook audit export`` writes verifies offline with ``trusthook audit verify``. Whoever
rewrites the database is caught: an altered, removed or reordered entry fails the export's
verification or the export itself, naming the entry."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from tests.unit.test_admission import HOST, Server, decided, make_server
from tests.unit.test_policy_appraise import HERE, launch, manifest
from trusthook.audit import (
    MAX_LAUNCHES,
    Bundle,
    EventType,
    leaf_hash,
    merkle,
    open_checkpoint,
    tree_root,
    verify_bundle,
)
from trusthook.audit.entry import MAX_ENTRY_BYTES
from trusthook.cli import main
from trusthook.common.eventlog import Identity, Record
from trusthook.errors import (
    AdmissionError,
    AuditEntryTooLargeError,
    AuditLogError,
    AuditVerificationError,
    StorageError,
)
from trusthook.policy.appraise import appraise_launch
from trusthook.server import auditlog, driversql
from trusthook.server.auditlog import (
    CHECKPOINT_ENTRIES,
    CHECKPOINT_SECONDS,
    MAX_VIOLATION_TEXT,
    Event,
    LastHead,
    entries_for,
    load_signer,
    verdict_events,
)
from trusthook.server.records import AppraisedLaunch
from trusthook.server.run import Paths, open_store
from trusthook.server.store import Store


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path)
    yield s
    s.store.dispose()


def signed_store(server: Server) -> Store:
    config = server.service._config
    return open_store(config)


def config_file(server: Server, tmp_path: Path) -> Path:
    path = tmp_path / "server.toml"
    state = server.config_data["server"]["state_dir"]
    path.write_text(f'[server]\nstate_dir = "{state}"\n[groups.lab]\n[groups.payments]\n')
    return path


def record(store: Store, n: int, *, start: float = 1_700_000_000.0, step: float = 1.0) -> None:
    for i in range(n):
        store.record_event(
            host_id=HOST,
            event_name="attested" if i % 2 else "refused",
            detail={"reasons": [] if i % 2 else [{"check": "nonce", "message": "m"}]},
            now=start + i * step,
        )


def db(server: Server) -> sqlite3.Connection:
    return sqlite3.connect(server.state_dir / "trusthook.db")


def test_every_decision_is_an_entry_and_the_export_verifies(server: Server) -> None:
    with pytest.raises(AdmissionError):
        server.enroll()  # an unknown EK: queued
    server.admin.approve(HOST, group="lab", attributes={}, decision=decided())
    server.enroll()
    store = signed_store(server)
    try:
        record(store, 3)
        bundle = store.audit_export(since=None, until=None, from_size=None, now=10.0)
        key = load_signer(Paths(server.state_dir).audit_key).verifier_key
    finally:
        store.dispose()
    events = [e.event for e in bundle.entries]
    assert events[:2] == [EventType.HOST_PENDING, EventType.HOST_APPROVED]
    assert EventType.ENROLLED in events and events[-3:] == [EventType.ATTESTED] * 3
    assert [e.index for e in bundle.entries] == list(range(len(events)))
    assert [e.detail["trusted"] for e in bundle.entries[-3:]] == [False, True, False]
    verified = verify_bundle(Bundle.from_bytes(bundle.to_bytes()), key=key)
    assert verified.checkpoint.size == len(events)


def test_checkpoints_are_signed_every_n_entries_or_t_seconds_and_when_asked(
    server: Server,
) -> None:
    store = signed_store(server)
    try:
        record(store, CHECKPOINT_ENTRIES + 5, step=0.01)  # a burst: by count
        record(store, 3, start=1_700_000_100.0, step=CHECKPOINT_SECONDS)  # slow: by time
        key = load_signer(Paths(server.state_dir).audit_key).verifier_key
        with db(server) as conn:
            sizes = [r[0] for r in conn.execute("SELECT size FROM audit_checkpoints ORDER BY size")]
        n = CHECKPOINT_ENTRIES
        assert sizes == [1, n + 1, n + 6, n + 7, n + 8]
        note = store.audit_checkpoint(now=2_000_000_000.0)
        assert open_checkpoint(note, key).checkpoint.size == n + 8  # the last: not outgrown
        record(store, 1, start=1_700_000_500.0)
        note = store.audit_checkpoint(now=2_000_000_001.0)  # outgrown: a new one
        assert open_checkpoint(note, key).checkpoint.size == n + 9
    finally:
        store.dispose()


def export_cli(server: Server, tmp_path: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / f"bundle-{len(list(tmp_path.glob('bundle-*')))}.json"
    code = main(
        ["audit", "export", "--config", str(config_file(server, tmp_path)), *extra, str(out)]
    )
    return code, out


def vkey(server: Server) -> str:
    return load_signer(Paths(server.state_dir).audit_key).verifier_key.encode()


def test_the_commands_export_by_time_and_verify_offline(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record(server.store, 10)
    since = datetime.fromtimestamp(1_700_000_003.0, UTC).isoformat()
    until = datetime.fromtimestamp(1_700_000_007.0, UTC).isoformat()
    code, out = export_cli(server, tmp_path, "--since", since, "--until", until)
    assert code == 0
    assert "exported 4 audit entries (3..6)" in capsys.readouterr().out
    assert main(["audit", "key", "--config", str(config_file(server, tmp_path))]) == 0
    assert capsys.readouterr().out.strip() == vkey(server)
    assert main(["audit", "verify", str(out), "--key", vkey(server)]) == 0
    assert "OK: 4 audit entries (3..6)" in capsys.readouterr().out


def test_an_entry_altered_in_the_database_is_named(server: Server, tmp_path: Path) -> None:
    record(server.store, 6)
    with db(server) as conn:
        raw = json.loads(conn.execute("SELECT entry FROM audit_log WHERE idx = 2").fetchone()[0])
        raw["detail"]["trusted"] = True  # a refusal rewritten as a pass
        text = json.dumps(raw, separators=(",", ":"), sort_keys=True).encode()
        conn.execute("UPDATE audit_log SET entry = ? WHERE idx = 2", (text,))
    code, out = export_cli(server, tmp_path)
    assert code == 0  # the export carries what the database holds
    with pytest.raises(AuditVerificationError, match="audit entry 2: altered"):
        verify_bundle(Bundle.from_bytes(out.read_bytes()), key=None)


def test_an_entry_removed_from_the_database_stops_the_export(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record(server.store, 6)
    with db(server) as conn:
        conn.execute("DELETE FROM audit_log WHERE idx = 3")
    code, out = export_cli(server, tmp_path)
    assert code == 1 and not out.exists()
    assert "audit entry 3 is missing from the database" in capsys.readouterr().err


def test_two_entries_swapped_in_the_database_are_named(server: Server, tmp_path: Path) -> None:
    record(server.store, 6)
    with db(server) as conn:
        rows = dict(conn.execute("SELECT idx, entry FROM audit_log WHERE idx IN (1, 4)").fetchall())
        for index, other in ((1, 4), (4, 1)):
            entry = json.loads(rows[other])
            entry["index"] = index  # renumbered to pass for the other
            data = json.dumps(entry, separators=(",", ":"), sort_keys=True).encode()
            conn.execute("UPDATE audit_log SET entry = ? WHERE idx = ?", (data, index))
    _, out = export_cli(server, tmp_path)
    with pytest.raises(AuditVerificationError, match="audit entry 1: altered"):
        verify_bundle(Bundle.from_bytes(out.read_bytes()), key=None)


def test_a_rewritten_history_is_not_consistent_with_a_kept_checkpoint(
    server: Server, tmp_path: Path
) -> None:
    """An auditor kept a checkpoint; the operator then rebuilds the log without one entry
    (rows and subtrees recomputed, head and checkpoints replaced, signed with the real key)."""
    record(server.store, 8)
    store = signed_store(server)
    try:
        kept = store.audit_checkpoint(now=1_800_000_000.0)
    finally:
        store.dispose()
    (tmp_path / "kept.note").write_text(kept)
    with db(server) as conn:
        rows = [r[0] for r in conn.execute("SELECT entry FROM audit_log ORDER BY idx")]
        for table in ("audit_log", "audit_nodes", "audit_checkpoints", "audit"):
            conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
        conn.execute(
            "UPDATE audit_head SET size = 0, root = ?, frontier = x'', checkpoint_size = -1",
            (bytes.fromhex(EMPTY),),
        )
    store = signed_store(server)
    try:
        for raw in rows[:3] + rows[4:]:  # entry 3 gone
            entry: dict[str, Any] = json.loads(raw)
            store.record_event(
                host_id=entry["subject"]["id"],
                event_name="attested" if entry["detail"]["trusted"] else "refused",
                detail={"reasons": entry["detail"]["reasons"]},
                now=datetime.fromisoformat(entry["time"]).timestamp(),
            )
        record(store, 2, start=1_700_000_100.0)  # and more, to pass the kept size
    finally:
        store.dispose()
    code, out = export_cli(server, tmp_path, "--from-size", "8")
    assert code == 0
    with pytest.raises(AuditVerificationError, match="not consistent|does not extend|fork"):
        verify_bundle(Bundle.from_bytes(out.read_bytes()), kept, key=None)


EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_an_unmapped_event_is_refused_with_its_transaction(server: Server) -> None:
    with pytest.raises(AuditLogError, match="'made_up' has no log event type"):
        server.store.record_event(host_id=HOST, event_name="made_up", detail={}, now=1.0)
    with db(server) as conn:
        assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 0
        assert conn.execute("SELECT size FROM audit_head").fetchone()[0] == 0


def test_fractions_in_a_detail_are_written_as_decimal_text(server: Server) -> None:
    server.store.record_event(
        host_id=HOST, event_name="cleared", detail={"since": 1.5, "at": 2.0}, now=1.0
    )
    (entry,) = server.store.audit_entries(0, 1)
    assert entry.detail == {"since": "1.5", "at": 2}


def test_an_appraisals_launches_ride_in_its_verdict_and_the_rest_follow() -> None:
    """The verdict holds the first MAX_LAUNCHES launches, ``launched`` entries the rest, in
    the records' order, each a valid entry within the size limit."""
    events = verdict_events(
        HOST,
        {"reasons": []},
        [
            AppraisedLaunch(
                record=Record.for_event(recnum=n, pcr=23, event=launch(container_id=f"c{n}"))
            )
            for n in range(70)
        ],
        trusted=True,
    )
    assert [e.name for e in events] == ["attested"] + ["launched"] * 4
    assert [len(e.detail["launches"]) for e in events] == [MAX_LAUNCHES] * 4 + [6]
    entries = entries_for(0, events, 1.0)  # the log accepts each of them
    held = [x["recnum"] for e in entries for x in e.detail["launches"]]
    assert held == list(range(70))
    assert [e.detail["trusted"] for e in entries] == [True] * 5
    assert verdict_events(HOST, {"reasons": []}, [], trusted=False)[0].detail == {"reasons": []}


@pytest.mark.parametrize("path", ["sqlite3", "core"])
def test_an_append_built_on_a_stale_head_writes_nothing_and_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """An append is built on the head the process's last append left; a head that moved on
    meanwhile (here: that append rolled back, and another process appended an entry of the
    same size) writes nothing, and the append is built again on the locked row: the indexes
    follow each other, and the stored subtrees and the head's root are those of the leaves.
    On the sqlite3 cursor and on SQLAlchemy Core (the path of drivers without their own)."""
    if path == "core":
        monkeypatch.setattr(driversql, "DRIVERS", ())
    url = f"sqlite:///{tmp_path / 'log.db'}"
    Store(url).create_schema()
    engine = sqlalchemy.create_engine(url)
    mine, other = LastHead(), LastHead()

    def add(last: LastHead, n: int, *, roll_back: bool = False) -> None:
        with engine.begin() as conn:
            event = Event("attested", HOST, {"reasons": [], "n": n})
            auditlog.append(conn, [event], now=1.0 + n, signer=None, last=last)
            if roll_back:
                raise RuntimeError("the decision's transaction fails after its append")

    add(mine, 0)
    with pytest.raises(RuntimeError):
        add(mine, 1, roll_back=True)
    assert mine.state is not None and mine.state.size == 2  # stale: the database holds 1
    add(other, 2)  # another process: index 1, the size ``mine`` expects, another frontier
    add(mine, 3)
    add(mine, 4)  # on the head it left, which is current
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("SELECT idx, entry FROM audit_log ORDER BY idx"))
        leaves = [(int(i), bytes(e)) for i, e in rows]
        assert [i for i, _ in leaves] == [0, 1, 2, 3]
        assert [json.loads(e)["detail"]["n"] for _, e in leaves] == [0, 2, 3, 4]
        expected = merkle.root([leaf_hash(e) for _, e in leaves])
        assert auditlog.head(conn) == auditlog.Head(4, expected)
        assert tree_root(auditlog.ConnSource(conn), 4) == expected
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM audit")).scalar() == 4
    engine.dispose()


def big_launches(count: int, size: int) -> list[AppraisedLaunch]:
    """``count`` appraised launches whose image references are ``size`` characters long."""
    return [
        AppraisedLaunch(
            record=Record.for_event(
                recnum=n, pcr=23, event=launch(container_id=f"c{n}", image_reference="r" * size)
            )
        )
        for n in range(count)
    ]


def test_launches_that_do_not_fit_one_entry_are_split_in_order(tmp_path: Path) -> None:
    """16 launches of 6 KB each are more than one entry holds: the verdict keeps the first
    half, ``launched`` entries after it the rest (halved until each fits), each with a
    history row of its own, the records in their order."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    Store(url).create_schema()
    engine = sqlalchemy.create_engine(url)
    events = verdict_events(HOST, {"reasons": []}, big_launches(16, 6000), trusted=False)
    assert len(events) == 1  # 16 fit the count: the size is what splits them
    with engine.begin() as conn:
        entries = auditlog.append(conn, events, now=1.0, signer=None)
    assert [e.event for e in entries] == [EventType.ATTESTED] + [EventType.LAUNCHED] * (
        len(entries) - 1
    )
    assert len(entries) > 1
    assert all(len(e.canonical()) <= MAX_ENTRY_BYTES for e in entries)
    assert [x["recnum"] for e in entries for x in e.detail["launches"]] == list(range(16))
    assert [e.detail["trusted"] for e in entries] == [False] * len(entries)
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("SELECT event, detail FROM audit ORDER BY id"))
        history = [(event, json.loads(detail)) for event, detail in rows]
    assert [event for event, _ in history] == ["refused"] + ["launched"] * (len(entries) - 1)
    assert [d["launches"] for _, d in history] == [e.detail["launches"] for e in entries]
    engine.dispose()


def test_a_violation_that_lists_many_images_is_cut_so_its_launch_fits_an_entry() -> None:
    """A workload that allows 2,000 images names them all in a violation's ``expected``
    (146 KB): the entry keeps its start and says how long it was, instead of refusing the
    launch (and with it every attestation of its host after it)."""
    images = ", ".join(f'"sha256:{n:064x}"' for n in range(2000))
    wide = manifest(f'[[workload]]\nname = "wide"\nmatch = ["wide-*"]\nimages = [{images}]\n')
    event = launch(identity=Identity(workload="wide-1"))
    compliance = appraise_launch(wide, event, HERE)
    (reason,) = compliance.reasons
    assert reason.expected is not None and len(reason.expected) > 2 * MAX_ENTRY_BYTES
    appraised = AppraisedLaunch(
        record=Record.for_event(recnum=0, pcr=23, event=event),
        compliance=compliance,
        policy_version=1,
    )
    (entry,) = entries_for(0, verdict_events(HOST, {"reasons": []}, [appraised], trusted=True), 1.0)
    assert len(entry.canonical()) <= MAX_ENTRY_BYTES
    (violation,) = entry.detail["launches"][0]["violations"]
    assert len(violation["expected"]) <= MAX_VIOLATION_TEXT
    assert violation["expected"].startswith(reason.expected[:900])
    assert violation["expected"].endswith(f"\u2026 (cut: {len(reason.expected)} characters)")
    assert {k: violation[k] for k in ("check", "message", "got")} == {
        "check": reason.check,
        "message": reason.message,
        "got": reason.got,
    }


def test_a_launch_larger_than_an_entry_is_refused_with_its_transaction(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    Store(url).create_schema()
    engine = sqlalchemy.create_engine(url)
    events = verdict_events(HOST, {"reasons": []}, big_launches(2, 70_000), trusted=True)
    refused = pytest.raises(AuditEntryTooLargeError, match=r"audit entry 0: \d+ bytes, expected")
    with refused, engine.begin() as conn:
        auditlog.append(conn, events, now=1.0, signer=None)
    with engine.connect() as conn:
        assert auditlog.head(conn).size == 0
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM audit")).scalar() == 0
    engine.dispose()


def test_a_repeated_nonce_is_named_and_not_retried_as_a_checkpoint_race(server: Server) -> None:
    store = signed_store(server)

    def issue() -> object:
        return store.issue_nonce(host_id=HOST, nonce=b"n" * 32, expires=2e9, now=1e9, watch=0)

    assert issue() is not None
    with pytest.raises(StorageError, match=r"^the new nonce was already issued .* ask for another"):
        issue()
    assert db(server).execute("SELECT count(*) FROM nonces").fetchone() == (1,)
    store.dispose()
