"""Enrollment and attestation end to end: real swtpm hosts, agents and server processes over
mutual TLS on loopback, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.attesting import (
    Forger,
    attest,
    checks,
    enroll,
    host_client,
    now,
    wait_past,
)
from tests.integration.conftest import (
    AttestServer,
    Host,
    fresh_database,
    holding_port,
    make_host,
    make_server,
    runc,
)
from trusthook._devenv.swtpm import Swtpm
from trusthook.agent.serverclient import ServerClient, tls_context
from trusthook.errors import ServerRefusedError
from trusthook.server.ca import CertificateAuthority, pem

pytestmark = pytest.mark.integration


def test_enroll_then_attest_with_containers(
    host: Host, attest_server: AttestServer, bundle_factory: Any
) -> None:
    out = enroll(host, attest_server)
    assert "enrolled with" in out
    code, verdict = attest(host)
    assert code == 0 and verdict["trusted"], verdict
    assert verdict["verified_recnum"] == -1

    for i in range(2):
        bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
        run = runc("run", "--bundle", str(bundle), f"att-{i}-{bundle.name}")
        assert run.returncode == 0, run.stderr
    code, verdict = attest(host)
    assert code == 0 and verdict["trusted"], verdict
    assert verdict["verified_recnum"] == 1

    status = host.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "TRUSTED" in status.stdout

    with ServerClient(attest_server.url, attest_server.operator()) as client:
        hosts = client.get("/v1/hosts")["hosts"]
        assert [h["host_id"] for h in hosts] == [verdict["host_id"]]
        one = client.get(f"/v1/hosts/{verdict['host_id']}")
    assert one["trusted"] is True and one["valid_until"] is not None


def test_enrollment_is_never_silently_repeated(host: Host, attest_server: AttestServer) -> None:
    enroll(host, attest_server)
    d = host.config.state_dir / "attest"
    old_cert, old_key = (d / "client.crt").read_bytes(), (d / "client.key").read_bytes()
    again = host.cli(
        "enroll", "--server", attest_server.url, "--server-ca", str(attest_server.ca_cert)
    )
    assert again.returncode == 1
    assert "already enrolled" in again.stderr and "--reenroll" in again.stderr
    out = enroll(host, attest_server, "--reenroll")
    assert "re-enrolled" in out
    # the old client certificate is no longer accepted
    stale_cert, stale_key = host.root / "old.crt", host.root / "old.key"
    stale_cert.write_bytes(old_cert)
    stale_key.write_bytes(old_key)
    context = tls_context(d / "server-ca.pem", stale_cert, stale_key)
    with (
        ServerClient(attest_server.url, context) as client,
        pytest.raises(ServerRefusedError, match="replaced by a later enrollment"),
    ):
        client.post("/v1/nonces")
    assert attest(host)[0] == 0  # the new one works


def test_unknown_ek_ca_is_refused(host: Host, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(pem(CertificateAuthority.create("someone else", now()).certificate))
    server = make_server(tmp_path / "srv", other_ca)
    with server.process:
        result = host.cli("enroll", "--server", server.url, "--server-ca", str(server.ca_cert))
    assert result.returncode == 1
    assert "EK certificate" in result.stderr, result.stderr
    assert not (host.config.state_dir / "attest" / "client.crt").exists()


def test_golden_pcr_mismatch_names_pcr_expected_and_got(
    host: Host, tmp_path: Path, ek_bundle: Path
) -> None:
    server = make_server(
        tmp_path / "srv", ek_bundle, groups={"strict": {0: ["ab" * 32]}, "lab": {}}
    )
    with server.process:
        enroll(host, server, group="strict")
        code, verdict = attest(host)
        with ServerClient(server.url, server.operator()) as client:
            operator_view = client.get(f"/v1/hosts/{verdict['host_id']}")
    assert code == 2 and not verdict["trusted"]
    (reason,) = verdict["reasons"]
    assert reason["check"] == "golden_pcr"
    # the host itself is not told the golden values; the operator is
    assert reason["expected"] is None and reason["got"] == "00" * 32
    assert "shown to operators only" in reason["message"]
    (seen,) = operator_view["reasons"]
    assert seen["expected"] == "ab" * 32 and seen["got"] == "00" * 32


def test_stale_host_becomes_untrusted(host: Host, tmp_path: Path, ek_bundle: Path) -> None:
    validity = 2
    server = make_server(tmp_path / "srv", ek_bundle, validity=validity)
    with server.process:
        enroll(host, server)
        code, verdict = attest(host)
        assert code == 0
        host.agent.stop()  # nothing attests this host any more: its last attestation is final
        with ServerClient(server.url, server.operator()) as client:
            last = client.get(f"/v1/hosts/{verdict['host_id']}")["last_attestation"]
        wait_past(datetime.fromisoformat(last) + timedelta(seconds=validity))
        with ServerClient(server.url, server.operator()) as client:
            status = client.get(f"/v1/hosts/{verdict['host_id']}")
    assert status["trusted"] is False
    assert checks(status) == ["stale"]


def test_agent_reports_unreachable_server_and_retries(
    swtpm: Swtpm, tmp_path: Path, ek_bundle: Path, bundle_factory: Any
) -> None:
    (tmp_path / "host").mkdir()
    host = make_host(swtpm, tmp_path / "host", attest_interval=2)
    server = make_server(tmp_path / "srv", ek_bundle)
    server.process.start()
    host.agent.start()
    try:
        enroll(host, server)
        server.process.stop()
        result = host.cli("attest")
        assert result.returncode == 1
        assert "cannot reach attestation server" in result.stderr
        status = host.cli("status", "--json")
        assert status.returncode == 2
        assert "cannot reach" in json.loads(status.stdout)["error"]
        # the loop's next attempt fails too, at most an interval later, and it says so
        deadline = time.monotonic() + 30
        while "retrying in" not in host.agent.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "retrying in" in host.agent.output()
        server.process.start()  # on the same port: its reservation kept it
        # a retry comes at most an interval later and passes
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = host.cli("status", "--json")
            if status.returncode == 0:
                break
            time.sleep(0.5)
        assert status.returncode == 0, status.stdout
    finally:
        host.agent.stop()
        server.process.stop()


def test_database_restarted_mid_run(
    host: Host, tmp_path: Path, ek_bundle: Path, postgres: Any
) -> None:
    """PostgreSQL restarts under a running server: requests during the outage get a clear
    503 the agent reports; afterwards attestation goes on and no enrollment was lost."""
    server = make_server(tmp_path / "srv", ek_bundle, fresh_database(postgres), "postgresql")
    with server.process:
        enroll(host, server)
        assert attest(host)[0] == 0
        postgres.stop()
        with holding_port(postgres.port):  # until it restarts, on the same port
            try:
                down = host.cli("attest")
                assert down.returncode == 1
                assert "database" in down.stderr and "failed" in down.stderr, down.stderr
            finally:
                postgres.start()
        code, verdict = attest(host)
        assert code == 0, verdict
        assert server.process.proc is not None and server.process.proc.poll() is None


def test_replicas_share_nonces(host: Host, tmp_path: Path, ek_bundle: Path, postgres: Any) -> None:
    """Two server processes on one PostgreSQL database: a nonce issued by one is verified by
    the other, and then refused by both."""
    database = fresh_database(postgres)
    first = make_server(tmp_path / "a", ek_bundle, database, "postgresql")
    second_root = tmp_path / "b"
    shutil.copytree(first.root / "state", second_root / "state")  # same CA and TLS identity
    second = make_server(second_root, ek_bundle, database, "postgresql")
    with first.process, second.process:
        enroll(host, first)
        host.agent.stop()
        forger = Forger(host, first)
        with host_client(host, first) as client_a:
            body = forger.evidence(client_a.post("/v1/nonces"))
        with host_client(host, second) as client_b:
            verdict = client_b.post("/v1/attestations", body, signed=True)
            assert verdict["trusted"] is True, verdict
        for server in (first, second):
            with host_client(host, server) as client:
                replay = client.post("/v1/attestations", body, signed=True)
            assert [r["check"] for r in replay["reasons"]] == ["nonce"]
            assert "already used" in replay["reasons"][0]["message"]
