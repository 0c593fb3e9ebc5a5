"""Framing of the agent's unix-socket protocol (docs/api.md), client side.

A request is one header line (a JSON object) and an optional body; the client then shuts down
its write side. The answer is ``ok`` plus a newline and a JSON result, or ``error <reason>``.
Only ``_socket`` is imported: the hook runs on every container start, and the ``socket``
module's import alone would add several milliseconds to it.
"""

from __future__ import annotations

import _socket
import os
import sys
import time

from trusthook.errors import AgentRefusedError, AgentUnavailableError

MAX_MESSAGE_BYTES = 1 << 20
STAGES = ("createRuntime", "prestart")  # the OCI hook stages trusthook runs at
OK = b"ok"
ERROR = b"error "


def read_to_eof(sock: _socket.socket, limit: int) -> bytes | None:
    """Everything the peer sends until it shuts down its side, or None past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit and (chunk := sock.recv(65536)):
        chunks.append(chunk)
        size += len(chunk)
    return None if size > limit else b"".join(chunks)


def _connect(sock: _socket.socket, path: str, deadline: float) -> None:
    """Connect, waiting while the agent's listen backlog is full (EAGAIN on unix sockets)."""
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError from None
            time.sleep(0.002)


def check_socket_directory(path: str) -> None:
    """Refuse an agent socket whose directory someone other than root could have put there."""
    directory = os.path.dirname(path) or "."
    try:
        st = os.stat(directory)
    except OSError as e:
        raise AgentUnavailableError(f"agent socket directory {directory}: {e.strerror}") from None
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise AgentUnavailableError(
            f"agent socket directory {directory} is not root's alone (owner uid {st.st_uid},"
            f" mode {st.st_mode & 0o7777:o}); refusing to talk to an agent there"
        )


def peer_uid(sock: _socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED: pid, uid, gid)."""
    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(raw[4:8], sys.byteorder)


def exchange(
    path: str, request: bytes, *, timeout: float, max_answer: int = MAX_MESSAGE_BYTES
) -> bytes:
    """Send ``request`` to the agent at ``path``; return the result bytes after ``ok\\n``.
    Only an agent running as root, on a socket in a directory only root can write, is asked."""
    check_socket_directory(path)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        _connect(sock, path, time.monotonic() + timeout)
        uid = peer_uid(sock)
        if uid != 0:
            raise AgentRefusedError(
                f"the process listening on agent socket {path} runs as uid {uid}, not root;"
                " refusing to talk to it"
            )
        sock.sendall(request)
        sock.shutdown(_socket.SHUT_WR)
        answer = read_to_eof(sock, max_answer)
    except FileNotFoundError:
        raise AgentUnavailableError(
            f"agent socket {path} does not exist; is the trusthook agent running?"
        ) from None
    except ConnectionRefusedError:
        raise AgentUnavailableError(
            f"nothing listens on agent socket {path}; is the trusthook agent running?"
        ) from None
    except TimeoutError:
        raise AgentUnavailableError(
            f"trusthook agent on {path} did not answer within {timeout:g}s"
        ) from None
    except OSError as e:
        raise AgentUnavailableError(f"cannot talk to the trusthook agent on {path}: {e}") from None
    finally:
        sock.close()
    if answer is None:
        raise AgentRefusedError(f"trusthook agent's answer is larger than {max_answer} bytes")
    status, _, result = answer.partition(b"\n")
    if status == OK:
        return result
    if status.startswith(ERROR):
        raise AgentRefusedError(status[len(ERROR) :].decode("utf-8", "replace"))
    if not answer:
        raise AgentUnavailableError(f"trusthook agent on {path} closed the connection unanswered")
    raise AgentRefusedError(f"trusthook agent on {path} sent a malformed answer")
