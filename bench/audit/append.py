"""What the server's audit log costs per audited decision, on SQLite and on PostgreSQL, side by
side in one run: the same transaction without the audit log (the host-history rows alone: what
an audited decision cost before the log) and with it (the log's append as the store runs it:
the history rows, the Merkle log entries, subtrees, head and the checkpoints due), for one
decision and for an attestation that verified 10 launches (one entry each: the verdict holds
its launches, docs/audit.md §2). The two are
called in turn, a call of one then a call of the other, so that a change in the machine's load
falls on both; the figures are the medians over the rounds and the spread of the added cost is
printed with them. Also:
what of the added cost is building the entries and their hashes in Python (no database), and
inclusion and consistency proofs from the database at the log's size and at --proof-size
entries. CPU time of this process (the database server's own CPU is not counted on PostgreSQL;
the wall time is printed too).

Target: appending adds <= 0.2 ms of server CPU per attestation; an inclusion proof at 1,000,000
entries in <= 5 ms.

Usage (root): .venv/bin/python -m bench.audit.append [--events N] [--rounds R] [--proof-size N]
(--proof-size 0: no proofs at scale)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy
from tests.support.postgres import Postgres

from trusthook.audit import Frontier, NoteSigner
from trusthook.server import auditlog
from trusthook.server.schema import audit
from trusthook.server.store import Store
from trusthook.server.store import _sqlite_pragmas as sqlite_pragmas

TARGET_MS = 0.2
HOST = "ab" * 32
DETAIL = {"reasons": [{"check": "nonce", "message": "the quote's nonce is not the one issued"}]}
LAUNCHES = 10
LAUNCH = {
    "container": "web-7f3a",
    "image": "oci:/var/lib/images/web:1.4",
    "image_digest": "sha256:" + "ab" * 32,
    "rootfs_digest": "sha256:" + "cd" * 32,
    "config_digest": "sha256:" + "ef" * 32,
    "launch_profile": "sha256:" + "01" * 32,
    "recnum": 17,
    "stage": "createRuntime",
    "host_time": "2026-12-02T01:00:00.000000Z",
    "boot_id": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
}


def timed(n: int, step: Callable[[int], object], start: int = 0) -> tuple[float, float]:
    """CPU and wall milliseconds per call of ``step(i)``, ``i`` from ``start``."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(start, start + n):
        step(i)
    return (time.process_time() - cpu) * 1000 / n, (time.perf_counter() - wall) * 1000 / n


def paired(
    n: int, first: Callable[[int], object], second: Callable[[int], object], start: int = 0
) -> tuple[tuple[float, float], tuple[float, float]]:
    """``timed`` for two steps called in turn, ``first(i)`` then ``second(i)``: a change in
    the machine's speed falls on both alike, call by call."""
    cpu, wall = [0.0, 0.0], [0.0, 0.0]
    clock, perf = time.process_time, time.perf_counter
    for i in range(start, start + n):
        for k, step in enumerate((first, second)):
            c, w = clock(), perf()
            step(i)
            cpu[k] += clock() - c
            wall[k] += perf() - w
    scale = 1000 / n
    return (cpu[0] * scale, wall[0] * scale), (cpu[1] * scale, wall[1] * scale)


@dataclass(frozen=True, slots=True)
class Result:
    database: str
    case: str
    without_cpu: float  # medians over the rounds, ms
    with_cpu: float
    added: float
    added_low: float
    added_high: float
    python: float  # building the entries and hashes, no database

    @property
    def met(self) -> bool:
        return self.added <= TARGET_MS


def measure_append(
    engine: sqlalchemy.Engine,
    signer: NoteSigner,
    name: str,
    *,
    launches: int,
    events: int,
    rounds: int,
) -> Result:
    verdict = DETAIL | ({"launches": [LAUNCH] * launches} if launches else {})
    batch = [auditlog.Event("refused", HOST, verdict)]

    def no_log(i: int) -> None:
        with engine.begin() as conn:
            conn.execute(
                sqlalchemy.insert(audit),
                [
                    {
                        "at": 1.7e9 + i,
                        "host_id": e.host_id,
                        "event": e.name,
                        "detail": json.dumps(e.detail),
                    }
                    for e in batch
                ],
            )

    last = auditlog.LastHead()  # as the store appends: on the head its last append left

    def with_log(i: int) -> None:
        with engine.begin() as conn:
            auditlog.append(conn, batch, now=1.7e9 + i, signer=signer, last=last)

    def python_only(i: int) -> None:
        entries = auditlog.entries_for(0, batch, 1.7e9 + i)
        Frontier().extend([entry.leaf_hash() for entry in entries])

    timed(50, with_log)  # warm both paths (and psycopg's prepared statements)
    timed(50, no_log)
    per_round = max(1, events // rounds)
    without: list[tuple[float, float]] = []
    with_: list[tuple[float, float]] = []
    for r in range(rounds):
        base, logged = paired(per_round, no_log, with_log, r * per_round)
        without.append(base)
        with_.append(logged)
    added = sorted(w[0] - b[0] for w, b in zip(with_, without, strict=True))
    python, _ = timed(per_round, python_only)
    label = f"{'one decision' if not launches else f'attestation + {launches} launches'}"
    label += f" ({len(batch)} {'entry' if len(batch) == 1 else 'entries'})"
    result = Result(
        database=name,
        case=label,
        without_cpu=statistics.median(b[0] for b in without),
        with_cpu=statistics.median(w[0] for w in with_),
        added=statistics.median(added),
        added_low=added[0],
        added_high=added[-1],
        python=python,
    )
    wall_without = statistics.median(b[1] for b in without)
    wall_with = statistics.median(w[1] for w in with_)
    print(
        f"{name:10} {label:38} no audit log   {result.without_cpu:6.3f} ms CPU"
        f" ({wall_without:6.3f} ms wall)"
    )
    print(
        f"{name:10} {label:38} with audit log {result.with_cpu:6.3f} ms CPU"
        f" ({wall_with:6.3f} ms wall)  added {result.added:.3f} ms CPU"
        f" ({result.added_low:.3f}..{result.added_high:.3f} over {rounds} rounds;"
        f" {result.python:.3f} of it building entries and hashes, no database)"
        f" ratio {result.with_cpu / result.without_cpu:.2f}x"
    )
    return result


def measure(url: str, events: int, rounds: int, proof_size: int) -> list[Result]:
    signer = NoteSigner.generate("bench.example/trusthook-audit")
    store = Store(url, log_signer=signer)
    store.create_schema()
    engine = sqlalchemy.create_engine(url)
    if url.startswith("sqlite"):  # the store's own connection settings (WAL, synchronous)
        sqlalchemy.event.listen(engine, "connect", sqlite_pragmas)
    name = "sqlite" if url.startswith("sqlite") else "postgresql"

    def empty(_: int) -> None:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.select(1))

    timed(50, empty)
    empty_cpu, empty_wall = timed(events // 2, empty)
    print(
        f"{name:10} {'a transaction of one SELECT 1':38} {'':14} {empty_cpu:6.3f} ms CPU"
        f" ({empty_wall:6.3f} ms wall): what every decision's transaction costs anyway"
    )
    results = [
        measure_append(engine, signer, name, launches=n, events=events, rounds=rounds)
        for n in (0, LAUNCHES)
    ]
    filler = [auditlog.Event("launched", HOST, {"trusted": True, "launches": [LAUNCH]})] * 1000
    with engine.connect() as conn:
        size = auditlog.head(conn).size
    for target in sorted({size, max(size, proof_size)} if proof_size else {size}):
        while size < target:  # grow the log in transactions of 1000 entries
            with engine.begin() as conn:
                auditlog.append(conn, filler[: target - size], now=1.7e9, signer=None)
            size = min(target, size + 1000)

        def inclusion(i: int, n: int = size) -> object:
            return store.audit_inclusion(i * 7919 % n, n)

        def consistency(i: int, n: int = size) -> object:
            return store.audit_consistency(1 + i * 5 % (n - 1), n)

        incl_cpu, incl_wall = timed(200, inclusion)
        cons_cpu, _ = timed(200, consistency)
        print(
            f"{name:10} at {size:>9,} entries: inclusion proof {incl_cpu:.3f} ms CPU"
            f" ({incl_wall:.3f} ms wall; target <= 5 ms), consistency proof {cons_cpu:.3f} ms CPU"
        )
    engine.dispose()
    store.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000, help="decisions timed per path")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument(
        "--proof-size", type=int, default=1_000_000, help="log size for the proofs at scale"
    )
    args = parser.parse_args()
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        results += measure(f"sqlite:///{db}", args.events, args.rounds, args.proof_size)
        pg = Postgres(Path(tempfile.mkdtemp(prefix="trusthook-bench-pg-")))
        pg.start()
        try:
            name = f"b_{uuid.uuid4().hex[:12]}"
            admin = sqlalchemy.create_engine(pg.url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
            admin.dispose()
            url = f"{pg.url.rsplit('/', 1)[0]}/{name}"
            results += measure(url, args.events, args.rounds, args.proof_size)
        finally:
            pg.stop()
            pg.cleanup()
    print(f"\nadded server CPU per attestation (target <= {TARGET_MS} ms), medians:")
    for r in results:
        print(
            f"  {r.database:10} {r.case:38} {r.without_cpu:.3f} -> {r.with_cpu:.3f} ms:"
            f" +{r.added:.3f} ms ({r.added_low:.3f}..{r.added_high:.3f})"
            f" {'met' if r.met else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
