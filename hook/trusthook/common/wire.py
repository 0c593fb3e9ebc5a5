"""Framing of the agent's unix-socket protocol (docs/api.md), client side.

A request is one header line (a JSON object) and an optional body; the client then shuts down
its write side. The answer is ``ok`` plus a newline and a JSON result, or ``error <reason>``.
Only ``_socket`` is imported: the hook runs on every container start, and the ``socket``
module's import alone would add several milliseconds to it.
"""

from __future__ import annotations

import _socket
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


def exchange(
    path: str, request: bytes, *, timeout: float, max_answer: int = MAX_MESSAGE_BYTES
) -> bytes:
    """Send ``request`` to the agent at ``path``; return the result bytes after ``ok\\n``."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        _connect(sock, path, time.monotonic() + timeout)
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
