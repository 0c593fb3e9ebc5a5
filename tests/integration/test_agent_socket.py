"""The agent's socket is root's alone, and its protocol refuses what it does not understand."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from trusthook.agent.listener import MAX_HEADER_BYTES
from trusthook.common.wire import MAX_MESSAGE_BYTES, exchange
from trusthook.errors import AgentRefusedError

from .conftest import Host

pytestmark = pytest.mark.integration


def _open_parents(sock: Path) -> None:
    """Let uid 65534 traverse to the socket (pytest's directories are 0700)."""
    for parent in sock.parents:
        if parent == Path("/tmp"):
            break
        os.chmod(parent, 0o755)


def _as_nobody(socket_path: str) -> str:
    """Ask the agent for a snapshot from a forked child running as uid/gid 65534."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, try, report, exit without running pytest's atexit
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            exchange(socket_path, b'{"op":"snapshot","version":1}\n', timeout=5)
            result = "answered"
        except Exception as e:  # noqa: BLE001 - reported to the parent verbatim
            result = f"{type(e).__name__} {e}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_socket_and_directory_are_root_only(host: Host) -> None:
    sock = host.config.socket
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
    _open_parents(sock)
    assert "Permission denied" in _as_nobody(str(sock))  # the socket's own 0600 keeps it out


def test_peer_credentials_are_checked_even_if_permissions_are_loosened(host: Host) -> None:
    sock = host.config.socket
    _open_parents(sock)
    os.chmod(sock, 0o666)
    out = _as_nobody(str(sock))
    assert "AgentRefusedError only root may use the trusthook agent, not uid 65534" in out


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json\n", "request header is not valid JSON"),
        (b"[1]\n", "request header must be a JSON object"),
        (b'{"op":"snapshot","version":9}\n', "protocol version 9, expected 1"),
        (b'{"op":"snapshot","version":true}\n', "protocol version True, expected 1"),
        (b'{"op":"extend","version":1}\n', "unknown op 'extend'"),
        (b'{"op":"hook","stage":"poststop","version":1}\n{}', "'stage' must be one of"),
        (b'{"op":"hook","stage":"createRuntime","version":1}\n{}', "'audit' must be true or false"),
        (
            b'{"audit":true,"op":"hook","stage":"createRuntime","version":1}\n{}',
            "the hook runs in audit mode, this host in enforce mode",
        ),
        (b"x" * (MAX_MESSAGE_BYTES + MAX_HEADER_BYTES + 10), "request is larger than"),
        (b"[" * 100_000 + b"\n", "request header is not valid JSON"),
        (
            b'{"audit":false,"op":"hook","stage":"createRuntime","version":1}\n{"id":'
            + b"9" * 5000
            + b"}",
            "state JSON on stdin is not valid JSON",
        ),
    ],
)
def test_malformed_requests_get_one_line_reasons(host: Host, raw: bytes, message: str) -> None:
    with pytest.raises(AgentRefusedError, match=message):
        exchange(str(host.config.socket), raw, timeout=10)
    assert host.snapshot()[0] == []


def test_agent_refuses_a_socket_directory_others_can_write(host: Host) -> None:
    host.agent.stop()
    os.chmod(host.config.socket.parent, 0o777)
    with pytest.raises(Exception, match="trusthook agent exited with 1"):
        host.agent.start()
    assert "is writable by others than root" in host.agent.output()


def test_agent_refuses_a_socket_path_that_is_not_a_socket(host: Host) -> None:
    host.agent.stop()
    host.config.socket.write_text("precious")
    with pytest.raises(Exception, match="trusthook agent exited with 1"):
        host.agent.start()
    assert "exists and is not a socket" in host.agent.output()
    assert host.config.socket.read_text() == "precious"
