"""What the server's audit log costs per audited decision, on SQLite and on PostgreSQL, side by
side in one run: the log's append as the store runs it (the host-history rows, the Merkle log
entries, subtrees, head and the checkpoints due, in one transaction) against the same
transaction with the history rows alone (what an audited decision cost before the log), for one
decision and for an attestation that verified 10 launches (11 entries). Also: inclusion and
consistency proofs from the database at the log's size and at --proof-size entries. CPU time of
this process (the database server's own CPU is not counted on PostgreSQL; its wall time is
printed too).

Target: appending adds <= 0.2 ms of server CPU per attestation; an inclusion proof at 1,000,000
entries in <= 5 ms.

Usage (root): .venv/bin/python -m bench.audit.append [--events N] [--proof-size N]
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
    "trusted": True,
}


def timed(n: int, step: Callable[[int], object]) -> tuple[float, float]:
    """CPU and wall milliseconds per call of ``step(i)``."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        step(i)
    return (time.process_time() - cpu) * 1000 / n, (time.perf_counter() - wall) * 1000 / n


def measure(url: str, events: int, proof_size: int) -> None:
    signer = NoteSigner.generate("bench.example/trusthook-audit")
    store = Store(url, log_signer=signer)
    store.create_schema()
    engine = sqlalchemy.create_engine(url)
    if url.startswith("sqlite"):  # the store's own connection settings (WAL, synchronous)
        sqlalchemy.event.listen(engine, "connect", sqlite_pragmas)
    name = url.split(":", 1)[0]
    for label, launches in (("one decision", 0), (f"attestation + {LAUNCHES} launches", LAUNCHES)):
        batch = [auditlog.Event("refused", HOST, DETAIL)]
        batch += [auditlog.Event("launched", HOST, LAUNCH)] * launches

        def history_only(i: int, batch: list[auditlog.Event] = batch) -> None:
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

        def with_log(i: int, batch: list[auditlog.Event] = batch) -> None:
            with engine.begin() as conn:
                auditlog.append(conn, batch, now=1.7e9 + i, signer=signer)

        timed(50, with_log)  # warm both paths
        timed(50, history_only)
        before_cpu, before_wall = timed(events, history_only)
        log_cpu, log_wall = timed(events, with_log)
        added = log_cpu - before_cpu
        print(
            f"{name:10} {label:26} history rows only {before_cpu:6.3f} ms CPU"
            f" ({before_wall:6.3f} ms wall)"
        )
        print(
            f"{name:10} {label:26} + Merkle log      {log_cpu:6.3f} ms CPU"
            f" ({log_wall:6.3f} ms wall)  added {added:.3f} ms CPU (target <= {TARGET_MS})"
            f" ratio {log_cpu / before_cpu:.2f}x"
        )
    filler = [auditlog.Event("launched", HOST, LAUNCH)] * 1000
    for target in sorted({events, proof_size}):
        with engine.connect() as conn:
            size = auditlog.head(conn).size
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument(
        "--proof-size", type=int, default=1_000_000, help="log size for the proofs at scale"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure(f"sqlite:///{Path(tmp) / 'bench.db'}", args.events, args.proof_size)
        pg = Postgres(Path(tempfile.mkdtemp(prefix="trusthook-bench-pg-")))
        pg.start()
        try:
            name = f"b_{uuid.uuid4().hex[:12]}"
            admin = sqlalchemy.create_engine(pg.url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
            admin.dispose()
            measure(f"{pg.url.rsplit('/', 1)[0]}/{name}", args.events, args.proof_size)
        finally:
            pg.stop()
            pg.cleanup()


if __name__ == "__main__":
    main()
