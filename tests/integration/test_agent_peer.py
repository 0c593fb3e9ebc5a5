"""The hook talks only to an agent that runs as root on a socket only root could have placed:
a fake agent run by another user, or a socket in a directory others can write, is refused
before any state is sent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import HOOK

pytestmark = pytest.mark.integration
NOBODY = 65534
STATE = b'{"ociVersion":"1.0.2","id":"c","status":"creating","bundle":"/b"}'
# A listener that records whether anything reached it.
SERVE = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen()
print("ready", flush=True)
while True:
    conn, _ = s.accept()
    data = conn.recv(65536)
    if data:
        open(sys.argv[2], "ab").write(data)
    conn.close()
"""


def hook(socket_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HOOK), "--socket", str(socket_path), "--timeout", "5"],
        input=STATE.decode(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def nobody_agent(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A listener run by uid 65534, its socket then moved into a root-only directory (a unix
    socket is found by its inode, so it keeps serving there)."""
    scratch = Path(tempfile.mkdtemp(prefix="trusthook-peer-"))  # reachable by uid 65534
    os.chmod(scratch, 0o777)
    received = scratch / "received"
    bound = scratch / "agent.sock"
    child = subprocess.Popen(
        [
            *("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"),
            *(sys.executable, "-I", "-c", SERVE, str(bound), str(received)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        root_only = tmp_path / "run"
        root_only.mkdir(mode=0o700)
        moved = root_only / "agent.sock"
        bound.rename(moved)
        yield moved, received
    finally:
        child.kill()
        child.wait(timeout=10)
        for p in scratch.iterdir():
            p.unlink()
        scratch.rmdir()


def received_before_marker(socket_path: Path, received: Path) -> bytes:
    """What the listener recorded before a marker sent now. It serves one connection at a
    time in the order they came, so once the marker is recorded, whatever reached it before
    is recorded too."""
    marker = b"marker"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(socket_path))
        s.sendall(marker)
    deadline = time.monotonic() + 30
    while not (received.exists() and received.read_bytes().endswith(marker)):
        assert time.monotonic() < deadline, "the listener never recorded the marker"
        time.sleep(0.05)
    return received.read_bytes().removesuffix(marker)


def test_an_agent_that_is_not_root_is_refused(nobody_agent: tuple[Path, Path]) -> None:
    socket_path, received = nobody_agent
    result = hook(socket_path)
    assert result.returncode == 1
    assert f"runs as uid {NOBODY}, not root" in result.stderr
    assert received_before_marker(socket_path, received) == b""  # the state was never sent


def test_a_socket_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    result = hook(shared / "agent.sock")
    assert result.returncode == 1
    assert f"agent socket directory {shared} is not root's alone" in result.stderr


def test_a_socket_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    owned = tmp_path / "owned"
    owned.mkdir(mode=0o755)
    os.chown(owned, NOBODY, NOBODY)
    result = hook(owned / "agent.sock")
    assert result.returncode == 1
    assert f"owner uid {NOBODY}" in result.stderr
