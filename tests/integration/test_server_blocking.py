"""The server's event loop never waits for the database: with one host's attestation blocked
on a lock held in PostgreSQL, ``/v1/health`` and another host's requests still answer, and the
blocked attestation completes once the lock is released. And the agent keeps its connection
from one attestation to the next, replacing one the server closed without failing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from tests.integration.attesting import Forger, attest, enroll
from tests.integration.conftest import (
    Host,
    fresh_database,
    make_host,
    make_server,
    new_swtpm,
)
from tests.support.postgres import Postgres
from trusthook.agent.serverclient import ServerClient, tls_context

pytestmark = pytest.mark.integration

BOUND = 30.0  # seconds for an answer on a loaded two-core machine; answers take well under 1


def _until(condition: Callable[[], bool], what: str, bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"not within {bound:.0f}s: {what}"
        time.sleep(0.05)


def _second_host(root: Path) -> Host:
    """A host with a TPM of its own, manufactured now: another EK, so another host."""
    tpm = new_swtpm(root / "tpm")
    tpm.start()
    return make_host(tpm, root)


def test_a_locked_attestation_blocks_neither_health_nor_other_hosts(
    host: Host, tmp_path: Path, ek_bundle: Path, postgres: Postgres
) -> None:
    database = fresh_database(postgres)
    server = make_server(tmp_path / "srv", ek_bundle, database, "postgresql")
    other = _second_host(tmp_path / "other")
    other.agent.start()
    lock = psycopg.connect(database.replace("+psycopg", ""))
    try:
        with server.process:
            enroll(host, server)
            enroll(other, server)
            code, blocked_verdict = attest(host)
            assert code == 0, blocked_verdict
            code, other_verdict = attest(other)
            assert code == 0, other_verdict
            blocked_id, other_id = blocked_verdict["host_id"], other_verdict["host_id"]

            # the first write of an attestation's verdict is the host's row: lock it
            lock.execute("SELECT 1 FROM hosts WHERE host_id = %s FOR UPDATE", (blocked_id,))
            outcome: dict[str, Any] = {}

            def blocked_attestation() -> None:
                try:
                    outcome["verdict"] = Forger(host, server).send()
                except Exception as e:  # noqa: BLE001 - reported by the test's assertion
                    outcome["error"] = e

            thread = threading.Thread(target=blocked_attestation, daemon=True)
            thread.start()
            watcher = psycopg.connect(database.replace("+psycopg", ""), autocommit=True)

            def waiting_on_lock() -> bool:
                row = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchone()
                return row is not None and int(row[0]) > 0

            try:
                _until(waiting_on_lock, "the attestation waits for the locked row")

                with ServerClient(server.url, tls_context(server.ca_cert), timeout=BOUND) as anyone:
                    assert anyone.get("/v1/health") == {"status": "ok"}
                answered = Forger(other, server).send()  # another host attests meanwhile
                assert answered["trusted"] is True, answered
                with ServerClient(server.url, server.operator(), timeout=BOUND) as operator:
                    assert operator.get(f"/v1/hosts/{other_id}")["trusted"] is True
                    listed = {h["host_id"] for h in operator.get("/v1/hosts")["hosts"]}
                    assert listed == {blocked_id, other_id}
                assert thread.is_alive() and waiting_on_lock(), "the lock stopped blocking"
            finally:
                lock.rollback()  # release: the blocked attestation goes on
                watcher.close()
            thread.join(BOUND)
            assert not thread.is_alive(), "the attestation did not complete after the release"
            assert "error" not in outcome, outcome
            assert outcome["verdict"]["trusted"] is True, outcome
            assert outcome["verdict"]["host_id"] == blocked_id
    finally:
        lock.close()
        other.agent.stop()
        other.tpm.stop()


def _connections(host: Host, port: int) -> set[int]:
    """The local ports of the agent's established connections to the server on ``port``."""
    assert host.agent.proc is not None
    return {
        c.laddr.port
        for c in psutil.Process(host.agent.proc.pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    }


def test_the_agent_keeps_its_connection_and_replaces_a_closed_one(
    host: Host, tmp_path: Path, ek_bundle: Path
) -> None:
    server = make_server(tmp_path / "srv", ek_bundle)
    port = server.process.config.port
    with server.process:
        enroll(host, server)
        assert attest(host)[0] == 0
        held = _connections(host, port)
        assert len(held) == 1, held
        for _ in range(2):
            assert attest(host)[0] == 0
            assert _connections(host, port) == held  # the same connection, no new handshake
    # the server stopped: it closed the idle connection; the next attestation opens another
    with server.process:  # on the same port: its reservation kept it
        code, verdict = attest(host)
        assert code == 0, verdict
        again = _connections(host, port)
        assert len(again) == 1 and again != held, (held, again)
