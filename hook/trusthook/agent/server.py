"""The agent's unix socket: root-only, one request per connection, a thread per connection."""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
from pathlib import Path
from typing import Any

from trusthook.agent.service import AgentService
from trusthook.errors import ServiceError, TrusthookError
from trusthook.wire import ERROR, MAX_MESSAGE_BYTES, OK

log = logging.getLogger(__name__)
_UCRED = struct.Struct("3i")


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


def _read_request(sock: socket.socket) -> bytes:
    chunks, size = [], 0
    while size <= MAX_MESSAGE_BYTES and (chunk := sock.recv(65536)):
        chunks.append(chunk)
        size += len(chunk)
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"request is larger than {MAX_MESSAGE_BYTES} bytes")
    return b"".join(chunks)


def _parse_header(line: bytes) -> dict[str, Any]:
    try:
        header = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"request header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("request header must be a JSON object")
    return header


def _error(message: str) -> bytes:
    return ERROR + " ".join(message.split()).encode("utf-8", "replace") + b"\n"


class _Handler(socketserver.BaseRequestHandler):
    server: AgentServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(self.server.io_timeout)
        try:
            sock.sendall(self._respond(sock))
        except OSError as e:
            log.warning("client connection failed: %s", e)

    def _respond(self, sock: socket.socket) -> bytes:
        uid = peer_uid(sock)
        if uid != 0:
            log.warning("refused a request from uid %d", uid)
            return _error(f"only root may use the trusthook agent, not uid {uid}")
        try:
            line, _, body = _read_request(sock).partition(b"\n")
            header = _parse_header(line)
        except ValueError as e:
            log.warning("malformed request: %s", e)
            return _error(str(e))
        op = header.get("op")
        try:
            result = self.server.service.handle(header, body)
        except TrusthookError as e:
            level = logging.ERROR if isinstance(e, ServiceError) else logging.WARNING
            log.log(level, "%s failed: %s", op, e)
            return _error(str(e))
        log.info("%s ok", op)
        return OK + b"\n" + json.dumps(result, separators=(",", ":")).encode()


class AgentServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves ``service`` on a unix socket that only root can reach."""

    daemon_threads = False  # server_close() waits for in-flight launches
    allow_reuse_address = False

    def __init__(self, path: Path, service: AgentService, *, io_timeout: float = 30.0) -> None:
        self.service = service
        self.io_timeout = io_timeout
        _prepare_socket_path(path)
        old_umask = os.umask(0o177)
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)


def _prepare_socket_path(path: Path) -> None:
    """Create the socket's directory (0700) and remove a stale socket left by a dead agent."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink()
        return
    except OSError as e:
        raise ServiceError(f"cannot use agent socket path {path}: {e}") from e
    finally:
        probe.close()
    raise ServiceError(f"another trusthook agent is already listening on {path}")
