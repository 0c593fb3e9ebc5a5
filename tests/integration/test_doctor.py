"""``trusthook doctor`` on a real host: swtpm, the agent, enrolled with a real server over TLS,
docker, containerd and podman configured by ``trusthook runtime configure`` (on temporary
paths). The healthy host is ready; each broken variant (no TPM, the agent stopped, the socket
open to everyone, the hook uninstalled, the server's certificate expired) gives exactly its
failing line and a non-zero exit."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.dockerd import runtime_wrapper
from trusthook._devenv.agentproc import AgentProcess, write_agent_config
from trusthook._devenv.child import spawn, wait_ready
from trusthook._devenv.swtpm import Swtpm
from trusthook.hostsetup.report import Report, Status
from trusthook.server.ca import CertificateAuthority, pem

from .attesting import attest, enroll
from .conftest import HOOK, HOOK_TIMEOUT, NO_PERIODIC_ATTESTATION, AttestServer, Host, make_server

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[1] / "data" / "engines"


@dataclass
class ReadyHost:
    host: Host
    server: AttestServer
    hook: Path  # the hook the config names: a copy, so a test can uninstall it
    argv: list[str]  # the doctor's engine arguments

    def doctor(self) -> tuple[int, Report, str]:
        result = self.host.cli("doctor", "--json", *self.argv)
        assert result.returncode in (0, 2), result.stderr
        text = self.host.cli("doctor", *self.argv).stdout
        return result.returncode, Report.from_json(json.loads(result.stdout)), text


@pytest.fixture
def ready(swtpm: Swtpm, tmp_path: Path, ek_bundle: Path) -> Iterator[ReadyHost]:
    """A host as a platform team leaves it: the agent running and enrolled (and attested), its
    hook installed, docker, containerd and podman configured for trusthook."""
    hook = tmp_path / "bin" / "trusthook-hook"
    hook.parent.mkdir()
    shutil.copy2(HOOK, hook)
    config_path = tmp_path / "trusthook.toml"
    config = write_agent_config(
        config_path,
        tcti=swtpm.tcti,
        state_dir=tmp_path / "state",
        hook=hook,
        attest_interval=NO_PERIODIC_ATTESTATION,
        hook_timeout=HOOK_TIMEOUT,
    )
    host = Host(
        swtpm,
        config_path,
        config,
        AgentProcess(config_path, config, tmp_path / "agent.log"),
        tmp_path,
    )
    server = make_server(tmp_path / "server", ek_bundle)
    server.process.start()
    host.agent.start()
    try:
        enroll(host, server)
        code, verdict = attest(host)
        assert code == 0, verdict
        etc = tmp_path / "etc"
        etc.mkdir()
        shutil.copy(DATA / "containerd-debian12.toml", etc / "config.toml")
        shim = runtime_wrapper(config_path, tmp_path / "bin" / "trusthook-runtime")
        for engine, where in (
            ("docker", ["--config", str(etc / "daemon.json")]),
            ("containerd", ["--config", str(etc / "config.toml")]),
            (
                "podman",
                ["--hooks-dir", str(etc / "hooks.d"), "--config", str(etc / "containers.conf")],
            ),
        ):
            argv = ["runtime", "configure", "--runtime", engine, *where, "--shim-path", str(shim)]
            result = host.cli(*argv)
            assert result.returncode == 0, result.stderr
        argv = [
            "--engine-config",
            f"docker={etc / 'daemon.json'}",
            "--engine-config",
            f"containerd={etc / 'config.toml'}",
            "--engine-config",
            f"podman={etc / 'containers.conf'}",
            "--hooks-dir",
            str(etc / "hooks.d"),
        ]
        yield ReadyHost(host, server, hook, argv)
    finally:
        host.agent.stop()
        server.process.stop()


def failing(report: Report) -> list[str]:
    return [c.name for c in report.failed]


def line(text: str, name: str) -> str:
    return next(x for x in text.splitlines() if x.split()[1:2] == [name])


def test_a_healthy_host_is_ready(ready: ReadyHost) -> None:
    code, report, text = ready.doctor()
    assert code == 0, text
    assert report.ready and failing(report) == []
    status = {c.name: c.status for c in report.checks}
    assert status["tpm"] is Status.WARN  # swtpm: for development only
    assert all(s is Status.OK for n, s in status.items() if n != "tpm"), text
    assert len(text.splitlines()) == len(report.checks) + 1
    assert text.splitlines()[-1].startswith("ready")
    assert [c.name for c in report.checks] == [
        "tpm",
        "agent",
        "agent-socket",
        "pcr-bank",
        "pcr-log",
        "hook",
        "shim",
        "engines",
        "native-hasher",
        "enrollment",
        "server",
        "clock",
    ]
    engines = next(c for c in report.checks if c.name == "engines").detail
    assert engines == "configured: docker, containerd, podman"
    assert "from the attestation server's clock" in line(text, "clock")


def test_no_tpm(ready: ReadyHost) -> None:
    ready.host.tpm.stop()
    code, report, text = ready.doctor()
    assert code == 2
    assert failing(report) == ["tpm"], text
    assert "no TPM: nothing answers for swtpm" in line(text, "tpm")
    assert "skipped: no usable TPM" in line(text, "pcr-bank")


def test_a_stopped_agent(ready: ReadyHost) -> None:
    ready.host.agent.stop()
    code, report, text = ready.doctor()
    assert code == 2
    assert failing(report) == ["agent"], text
    assert "the agent is not running" in line(text, "agent")
    assert "fix: start the agent" in line(text, "agent")
    for name in ("agent-socket", "pcr-bank", "enrollment", "server"):
        assert line(text, name).startswith("skip"), text


def test_a_socket_open_to_everyone(ready: ReadyHost) -> None:
    ready.host.config.socket.chmod(0o666)
    code, report, text = ready.doctor()
    assert code == 2
    assert failing(report) == ["agent-socket"], text
    assert "has mode 0666, expected 0600" in line(text, "agent-socket")


def test_the_hook_not_installed(ready: ReadyHost) -> None:
    ready.hook.unlink()
    code, report, text = ready.doctor()
    assert code == 2
    assert failing(report) == ["hook"], text
    assert f"{ready.hook}' not found or not executable" in line(text, "hook")


def test_the_server_unreachable(ready: ReadyHost) -> None:
    ready.server.process.stop()
    code, report, text = ready.doctor()
    assert code == 2
    assert failing(report) == ["server"], text
    server_line = line(text, "server")
    assert f"cannot reach {ready.server.url}" in server_line
    assert "fix: check that the server runs and that this host reaches it" in server_line


def test_the_server_certificate_expired(ready: ReadyHost) -> None:
    server = ready.server.process
    state = server.config.state_dir
    expired_at = datetime.now(UTC) - timedelta(days=1)
    ca = CertificateAuthority.load_dir(state / "ca")
    key, certificate = ca.issue_server_certificate(
        ["localhost", "127.0.0.1"], expired_at - timedelta(days=30), timedelta(days=30)
    )
    server.stop()
    (state / "tls" / "server.crt").write_bytes(pem(certificate))
    (state / "tls" / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    start_unverified(server.config_path, server.config.port, server)
    code, report, text = ready.doctor()
    assert code == 2
    assert failing(report) == ["server"], text
    server_line = line(text, "server")
    assert "certificate has expired" in server_line
    assert f"on {expired_at.date()}" in server_line
    assert "renew the server's certificate" in server_line


def start_unverified(config_path: Path, port: int, server: Any) -> None:
    """Start the server as ServerProcess does, waiting for its port only (its certificate
    does not verify, which the usual readiness check needs)."""
    log_path = server.log_path
    proc = spawn(
        [sys.executable, "-m", "trusthook.cli", "server", "run", "--config", str(config_path)],
        log_path,
    )

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    wait_ready(proc, listening, what="trusthook server", log_path=log_path, timeout=30)
    server.proc = proc  # stopped by its PID with the others
