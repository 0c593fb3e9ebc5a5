"""The CLI's cheap commands stay cheap: ``--help``, ``status`` and ``log show`` load neither the
image stack, the server, tpm2-pytss nor the crypto libraries (each costs tens to hundreds of
milliseconds to import). Each command runs in a fresh interpreter against a stand-in agent on
a real unix socket that answers in the agent's wire format (docs/api.md), and the test reads
which modules the command loaded."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from trusthook.common.messages import SnapshotResult, StatusResult

HEAVY = (
    "cryptography",
    "jwcrypto",
    "tpm2_pytss",
    "fastapi",
    "pydantic",
    "sqlalchemy",
    "uvicorn",
    "cffi",
    "zstandard",
    "trusthook.image.crypt",
    "trusthook.image.layout",
    "trusthook.server",
    "trusthook.agent.tpm",
    "trusthook.measure.native",
)
PROBE = """
import json, sys
from trusthook.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Path]:
    """Answers ``status`` (not enrolled) and ``snapshot`` (an empty log) as the agent does."""
    path = tmp_path / "agent.sock"
    answers = {
        "status": StatusResult(enrollment=None, attempt=None).to_json(),
        "snapshot": SnapshotResult(pcr=23, pcr_value=bytes(32), records=()).to_json(),
    }
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                request = b""
                while chunk := conn.recv(65536):
                    request += chunk
                op = json.loads(request.partition(b"\n")[0])["op"]
                conn.sendall(b"ok\n" + json.dumps(answers[op]).encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    server.close()
    thread.join(timeout=5)


def loaded(socket_path: Path, *argv: str) -> tuple[object, list[str]]:
    config = socket_path.with_name("trusthook.toml")
    config.write_text(f'[agent]\nsocket = "{socket_path}"\n')
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "--trusthook-config", str(config), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    return report["code"], report["modules"]


@pytest.mark.parametrize(
    ("argv", "code"),
    [(["--help"], 0), (["status"], 1), (["log", "show"], 0), (["status", "--help"], 0)],
)
def test_cheap_commands_import_nothing_heavy(agent: Path, argv: list[str], code: int) -> None:
    got, modules = loaded(agent, *argv)
    assert got == code
    heavy = [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == []


def test_the_probe_sees_heavy_imports(agent: Path) -> None:
    """The check can fail: a command that needs the image stack shows it."""
    _, modules = loaded(agent, "image", "inspect", str(agent.parent / "no-layout"))
    assert "trusthook.image.layout" in modules
