"""``trusthook doctor`` without a TPM or a server: each check against a stand-in agent on a
real unix socket (answering in the agent's wire format), temporary engine files and device
paths; the report's JSON form and text; the clock judged against fixed times."""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from trusthook.common.config import Config
from trusthook.common.messages import Enrollment, SnapshotResult, StatusResult
from trusthook.errors import InputError
from trusthook.hostsetup.choices import Engine
from trusthook.hostsetup.configure import apply, engine_files, plan_configure, runtime_spec
from trusthook.hostsetup.doctor import CLOCK_FLOOR, Doctor, judge_clock
from trusthook.hostsetup.report import Check, Report, Status

BIN = Path(sys.executable).parent
NOW = datetime(2026, 6, 1, tzinfo=UTC)
Answers = dict[str, dict[str, Any]]


class StandInAgent:
    """Answers ``status`` and ``snapshot`` as the agent does, on ``path``."""

    def __init__(self, path: Path, answers: Answers) -> None:
        self.answers = answers
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        path.chmod(0o600)
        self.server.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                request = b""
                while chunk := conn.recv(65536):
                    request += chunk
                op = json.loads(request.partition(b"\n")[0])["op"]
                conn.sendall(b"ok\n" + json.dumps(self.answers[op]).encode())

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)  # wakes accept(); close alone does not
        self.server.close()
        self.thread.join(timeout=5)


ENROLLED = StatusResult(
    enrollment=Enrollment(
        server="https://127.0.0.1:9", host_id="ab" * 32, hostname="h", group="lab"
    ),
    attempt=None,
)


def answers(*, status: StatusResult | None = None, pcr_value: bytes = bytes(32)) -> Answers:
    return {
        "status": (status or StatusResult(enrollment=None, attempt=None)).to_json(),
        "snapshot": SnapshotResult(pcr=23, pcr_value=pcr_value, records=()).to_json(),
    }


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Callable[..., Report]]:
    """Run the doctor on a host of temporary paths: a device standing in for the TPM, the
    agent (stand-in) if ``agent`` answers are given, every engine file under tmp_path."""
    tpm = tmp_path / "dev" / "tpmrm0"
    tpm.parent.mkdir()
    tpm.symlink_to("/dev/null")  # a character device that opens
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    config = Config(tcti=f"device:{tpm}", socket=run_dir / "agent.sock", state_dir=tmp_path)
    agents: list[StandInAgent] = []

    def run(
        agent: Answers | None = None,
        *,
        configure: tuple[Engine, ...] = (Engine.DOCKER,),
        config: Config = config,
        installed: tuple[str, ...] = (),
    ) -> Report:
        files = {
            e: engine_files(
                e,
                config=tmp_path / "etc" / e.value,
                hooks_dir=tmp_path / "hooks.d",
            )
            for e in Engine
        }
        for engine in configure:
            shim = str(BIN / "trusthook-runtime")
            spec = runtime_spec(config, shim=shim, hook=None, default=engine is not Engine.PODMAN)
            apply(plan_configure(files[engine], spec))
        if agent is not None and not config.socket.exists():
            agents.append(StandInAgent(config.socket, agent))
        doctor = Doctor(
            config,
            files=files,
            which=lambda name: f"/usr/bin/{name}" if name in installed else None,
            now=lambda: NOW,
            clock_synced=lambda: True,
        )
        return doctor.run()

    yield run
    for a in agents:
        a.close()


def statuses(report: Report) -> dict[str, str]:
    return {c.name: c.status.value for c in report.checks}


def failing(report: Report) -> list[str]:
    return [c.name for c in report.failed]


def test_a_healthy_host_not_enrolled_fails_only_enrollment(host: Callable[..., Report]) -> None:
    report = host(answers())
    assert statuses(report) == {
        "tpm": "ok",
        "agent": "ok",
        "agent-socket": "ok",
        "pcr-bank": "ok",
        "pcr-log": "ok",
        "hook": "ok",
        "shim": "ok",
        "engines": "ok",
        "native-hasher": "ok",
        "enrollment": "fail",
        "server": "skip",
        "clock": "ok",
    }
    assert not report.ready
    enrollment = report.checks[9]
    assert enrollment.fix == "trusthook enroll --server URL --server-ca FILE"
    assert report.checks[10].detail == "skipped: not enrolled"


def test_no_agent_fails_one_line_and_skips_what_needs_it(host: Callable[..., Report]) -> None:
    report = host(None)
    assert failing(report) == ["agent"]
    agent = report.checks[1]
    assert agent.detail.endswith("agent.sock: the agent is not running")
    assert agent.fix is not None and "systemctl start trusthook-agent" in agent.fix
    skipped = [c for c in report.checks if c.status is Status.SKIP]
    assert [c.name for c in skipped] == [
        "agent-socket",
        "pcr-bank",
        "pcr-log",
        "enrollment",
        "server",
    ]
    assert all("agent not running" in c.detail for c in skipped if c.name != "pcr-log")


def test_a_socket_others_may_use_fails_the_socket_line(
    host: Callable[..., Report], tmp_path: Path
) -> None:
    host(answers())  # the stand-in agent keeps serving
    (tmp_path / "run" / "agent.sock").chmod(0o666)
    report = host(answers())
    assert failing(report) == ["agent-socket", "enrollment"]
    line = report.checks[2]
    assert "has mode 0666, expected 0600" in line.detail
    assert line.fix is not None and "restart the agent" in line.fix


def test_a_socket_directory_others_may_write_fails(
    host: Callable[..., Report], tmp_path: Path
) -> None:
    host(answers())
    (tmp_path / "run").chmod(0o777)
    try:
        report = host(answers())
    finally:
        (tmp_path / "run").chmod(0o700)
    assert "agent-socket" in failing(report)
    assert "is not root's alone" in report.checks[2].detail


def test_a_log_that_does_not_replay_fails_pcr_log(host: Callable[..., Report]) -> None:
    report = host(answers(pcr_value=b"\x01" * 32))
    assert "pcr-log" in failing(report)
    assert "does not match PCR 23" in report.checks[4].detail


def test_no_tpm_device(host: Callable[..., Report], tmp_path: Path) -> None:
    config = Config(
        tcti=f"device:{tmp_path / 'none' / 'tpmrm0'}", socket=tmp_path / "run" / "agent.sock"
    )
    report = host(answers(), config=config)
    assert failing(report)[0] == "tpm"
    assert "no TPM device" in report.checks[0].detail
    assert report.checks[3].detail == "skipped: no usable TPM"


def test_no_resource_manager_device(tmp_path: Path, host: Callable[..., Report]) -> None:
    dev = tmp_path / "dev2"
    dev.mkdir()
    (dev / "tpm0").symlink_to("/dev/null")
    report = host(
        answers(),
        config=Config(tcti=f"device:{dev / 'tpmrm0'}", socket=tmp_path / "run" / "agent.sock"),
    )
    assert "no resource manager device" in report.checks[0].detail
    report = host(
        answers(),
        config=Config(tcti=f"device:{dev / 'tpm0'}", socket=tmp_path / "run" / "agent.sock"),
    )
    assert report.checks[0].status is Status.WARN  # works, but no other program may use it


def test_a_tpm_path_that_is_not_a_device(tmp_path: Path, host: Callable[..., Report]) -> None:
    fake = tmp_path / "tpmrm9"
    fake.write_text("")
    report = host(
        answers(), config=Config(tcti=f"device:{fake}", socket=tmp_path / "run" / "agent.sock")
    )
    assert "is not a character device" in report.checks[0].detail


def test_a_simulator_that_answers_is_a_warning_one_that_does_not_fails(
    tmp_path: Path, host: Callable[..., Report]
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        sim = Config(
            tcti=f"swtpm:host=127.0.0.1,port={port}", socket=tmp_path / "run" / "agent.sock"
        )
        report = host(answers(), config=sim)
        assert report.checks[0].status is Status.WARN
        assert "software TPM" in report.checks[0].detail
    report = host(answers(), config=sim)
    assert report.checks[0].status is Status.FAIL
    assert "nothing answers for swtpm" in report.checks[0].detail


def test_a_missing_hook_fails_the_hook_line(tmp_path: Path, host: Callable[..., Report]) -> None:
    hook = tmp_path / "bin" / "trusthook-hook"
    hook.parent.mkdir()
    hook.write_bytes((BIN / "trusthook-hook").read_bytes())
    hook.chmod(0o755)
    config = Config(
        tcti=f"device:{tmp_path / 'dev' / 'tpmrm0'}",
        socket=tmp_path / "run" / "agent.sock",
        hook_path=hook,
    )
    assert host(answers(), config=config, configure=(Engine.PODMAN,)).checks[5].status is Status.OK
    hook.unlink()
    report = host(answers(), config=config, configure=())
    assert failing(report) == ["hook", "enrollment"]
    detail = report.checks[5].detail
    assert f"{hook}' not found or not executable" in detail
    assert f"the hook {tmp_path / 'hooks.d' / 'trusthook.json'} runs" in detail


def test_a_hooks_file_with_another_socket_fails(
    tmp_path: Path, host: Callable[..., Report]
) -> None:
    base = Config(
        tcti=f"device:{tmp_path / 'dev' / 'tpmrm0'}", socket=tmp_path / "run" / "agent.sock"
    )
    other = replace(base, socket=tmp_path / "elsewhere.sock")
    host(answers(), config=other, configure=(Engine.PODMAN,))  # written for another agent
    report = host(answers(), config=base, configure=())
    assert "hook" in failing(report)
    assert "the agent refuses another socket or mode" in report.checks[5].detail


def test_a_runtime_that_names_a_missing_shim_fails_the_shim_line(
    tmp_path: Path, host: Callable[..., Report]
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "docker").write_text('{"runtimes": {"trusthook": {"path": "/gone/shim"}}}')
    report = host(answers(), configure=())
    assert failing(report) == ["shim", "enrollment"]
    assert "/gone/shim is not installed" in report.checks[6].detail


def test_an_engine_file_that_does_not_parse_fails_the_engines_line(
    tmp_path: Path, host: Callable[..., Report]
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "containerd").write_text("version = 2\n[plugins\n")
    report = host(answers())
    assert failing(report) == ["engines", "enrollment"]
    assert "is not valid TOML" in report.checks[7].detail


def test_engines(host: Callable[..., Report]) -> None:
    report = host(answers(), configure=(), installed=("dockerd", "podman"))
    line = report.checks[7]
    assert line.status is Status.FAIL
    assert "no container engine is configured" in line.detail and "docker, podman" in line.detail
    report = host(answers(), configure=(Engine.DOCKER,), installed=("dockerd", "podman"))
    line = report.checks[7]
    assert line.status is Status.WARN
    assert line.detail == (
        "configured: docker (trusthook is the default); installed but not configured: podman"
    )
    assert line.fix == "trusthook runtime configure --runtime podman"


def test_native_hasher(host: Callable[..., Report], tmp_path: Path) -> None:
    assert host(answers()).checks[8].detail == "the native hasher loads"
    python = Config(
        tcti=f"device:{tmp_path / 'dev' / 'tpmrm0'}",
        socket=tmp_path / "run" / "agent.sock",
        hasher="python",
    )
    assert "Python reference" in host(answers(), config=python).checks[8].detail


def test_enrolled_but_never_attested_is_a_warning(host: Callable[..., Report]) -> None:
    report = host(answers(status=ENROLLED))
    assert report.checks[9].status is Status.WARN
    assert "not attested yet" in report.checks[9].detail
    # the server's files are missing: the server line says so
    assert report.checks[10].status is Status.FAIL
    assert "cannot load TLS material" in report.checks[10].detail


@pytest.mark.parametrize(
    ("now", "server", "synced", "status", "says"),
    [
        (CLOCK_FLOOR - timedelta(days=1), None, True, Status.FAIL, "before 2025-01-01"),
        (NOW, NOW - timedelta(seconds=120), None, Status.FAIL, "120s from the attestation server"),
        (NOW, NOW + timedelta(seconds=10), None, Status.WARN, "10s from"),
        (NOW, NOW + timedelta(seconds=1), None, Status.OK, "1s from"),
        (NOW, None, False, Status.WARN, "not synchronised"),
        (NOW, None, None, Status.OK, "2026-06-01"),
    ],
)
def test_clock(
    now: datetime, server: datetime | None, synced: bool | None, status: Status, says: str
) -> None:
    check = judge_clock("clock", now, server, synced)
    assert check.status is status and says in check.detail


# the report


def test_report_json_round_trips_and_says_ready() -> None:
    report = Report(
        checks=(
            Check(name="tpm", status=Status.WARN, detail="swtpm", fix="use a TPM"),
            Check(name="agent", status=Status.OK, detail="answers"),
        )
    )
    data = report.to_json()
    assert data == {
        "version": 1,
        "ready": True,
        "checks": [
            {"name": "tpm", "status": "warn", "ok": True, "detail": "swtpm", "fix": "use a TPM"},
            {"name": "agent", "status": "ok", "ok": True, "detail": "answers", "fix": None},
        ],
    }
    assert Report.from_json(data) == report
    failed = Report(checks=(Check(name="agent", status=Status.FAIL, detail="x", fix="y"),))
    assert not failed.ready and failed.to_json()["ready"] is False


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda d: d.update(version=2), "version got 2"),
        (lambda d: d.update(ready=False), "ready got false"),
        (lambda d: d["checks"][0].update(status="maybe"), "status got 'maybe'"),
        (lambda d: d["checks"][0].update(ok=False), "ok got false"),
    ],
)
def test_report_json_is_checked(change: Callable[[dict[str, Any]], None], says: str) -> None:
    data = Report(checks=(Check(name="tpm", status=Status.OK, detail="ok"),)).to_json()
    change(data)
    with pytest.raises(InputError, match=says):
        Report.from_json(data)


def test_report_text_is_one_line_per_check_and_a_verdict() -> None:
    report = Report(
        checks=(
            Check(name="tpm", status=Status.OK, detail="/dev/tpmrm0"),
            Check(name="agent-socket", status=Status.FAIL, detail="mode\n0666", fix="restart"),
            Check(name="pcr-bank", status=Status.SKIP, detail="skipped: agent not running"),
        )
    )
    assert report.text().splitlines() == [
        "ok    tpm          /dev/tpmrm0",
        "FAIL  agent-socket mode 0666 -- fix: restart",
        "skip  pcr-bank     skipped: agent not running",
        "NOT READY: 1 check failed",
    ]
