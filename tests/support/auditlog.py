"""What the audit-log tests do to a real server's database: grow its log, and rewrite its
history as an operator with database access could (signed with the real key, every
checkpoint of the new log well-formed)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy

from trusthook.server.config import load_server_config
from trusthook.server.run import open_store

EMPTY_ROOT = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def grow(config_path: Path, count: int, host: str = "dd", *, sign: bool = False) -> None:
    """``count`` more ``attested`` entries in the log, appended by the server's own store;
    with ``sign``, then a checkpoint of the whole log."""
    store = open_store(load_server_config(config_path))
    try:
        for i in range(count):
            store.record_event(
                host_id=host * 32, event_name="attested", detail={"reasons": []}, now=1e9 + i
            )
        if sign:
            store.audit_checkpoint(1e9 + count)
    finally:
        store.dispose()


def rewrite(config_path: Path, size: int) -> None:
    """Replace the whole log by ``size`` other entries, the last checkpoint of the whole new
    log (as whoever rewrites it would sign it: hosts are sent the last one signed)."""
    engine = sqlalchemy.create_engine(load_server_config(config_path).database_url)
    with engine.begin() as conn:
        for table in ("audit_log", "audit_nodes", "audit_checkpoints"):
            conn.execute(sqlalchemy.text(f"DELETE FROM {table}"))  # noqa: S608 - fixed names
        conn.execute(
            sqlalchemy.text(
                "UPDATE audit_head SET size = 0, root = :r, frontier = :f, checkpoint_size = -1"
            ),
            {"r": EMPTY_ROOT, "f": b""},
        )
    engine.dispose()
    grow(config_path, size, "ee", sign=True)
