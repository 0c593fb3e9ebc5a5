"""What the server's audit log costs per audited decision, on SQLite and on PostgreSQL, side by
side in one run: the store's ``record_event`` as it is (the host-history row and the Merkle log
entry, subtrees, head and the checkpoints due, in one transaction) against the same transaction
with the history row alone (what an audited decision cost before the log). Also: proofs from
the database at the log's size. CPU time of this process (the database server's own CPU is not
counted on PostgreSQL; its wall time is printed too).

Target: appending adds <= 0.2 ms of server CPU per attestation.

Usage (root): .venv/bin/python -m bench.audit.append [--events N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy
from tests.support.postgres import Postgres

from trusthook.audit import NoteSigner
from trusthook.server.schema import audit
from trusthook.server.store import Store
from trusthook.server.store import _sqlite_pragmas as sqlite_pragmas

TARGET_MS = 0.2
HOST = "ab" * 32
DETAIL = {"reasons": [{"check": "nonce", "message": "the quote's nonce is not the one issued"}]}


def timed(n: int, step: Callable[[int], object]) -> tuple[float, float]:
    """CPU and wall milliseconds per call of ``step(i)``."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        step(i)
    return (time.process_time() - cpu) * 1000 / n, (time.perf_counter() - wall) * 1000 / n


def measure(url: str, events: int) -> None:
    store = Store(url, log_signer=NoteSigner.generate("bench.example/trusthook-audit"))
    store.create_schema()
    engine = sqlalchemy.create_engine(url)
    if url.startswith("sqlite"):  # the store's own connection settings (WAL, synchronous)
        sqlalchemy.event.listen(engine, "connect", sqlite_pragmas)

    def history_only(i: int) -> None:
        with engine.begin() as conn:
            conn.execute(
                sqlalchemy.insert(audit).values(
                    at=1.7e9 + i, host_id=HOST, event="refused", detail=json.dumps(DETAIL)
                )
            )

    def with_log(i: int) -> None:
        store.record_event(host_id=HOST, event_name="refused", detail=DETAIL, now=1.7e9 + i)

    timed(50, with_log)  # warm both paths
    timed(50, history_only)
    before_cpu, before_wall = timed(events, history_only)
    log_cpu, log_wall = timed(events, with_log)
    size = events + 50
    incl_cpu, _ = timed(200, lambda i: store.audit_inclusion(i * 7 % size, size))
    cons_cpu, _ = timed(200, lambda i: store.audit_consistency(1 + i * 5 % (size - 1), size))
    added = log_cpu - before_cpu
    name = url.split(":", 1)[0]
    print(
        f"{name:10} history row only   {before_cpu:6.3f} ms CPU ({before_wall:6.3f} ms wall)"
        f"  per decision"
    )
    print(
        f"{name:10} + Merkle log entry {log_cpu:6.3f} ms CPU ({log_wall:6.3f} ms wall)"
        f"  added {added:.3f} ms CPU (target <= {TARGET_MS}) ratio {log_cpu / before_cpu:.2f}x"
    )
    print(
        f"{name:10} at {size} entries: inclusion proof {incl_cpu:.3f} ms CPU,"
        f" consistency proof {cons_cpu:.3f} ms CPU"
    )
    engine.dispose()
    store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure(f"sqlite:///{Path(tmp) / 'bench.db'}", args.events)
        pg = Postgres(Path(tempfile.mkdtemp(prefix="trusthook-bench-pg-")))
        pg.start()
        try:
            name = f"b_{uuid.uuid4().hex[:12]}"
            admin = sqlalchemy.create_engine(pg.url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
            admin.dispose()
            measure(f"{pg.url.rsplit('/', 1)[0]}/{name}", args.events)
        finally:
            pg.stop()
            pg.cleanup()


if __name__ == "__main__":
    main()
