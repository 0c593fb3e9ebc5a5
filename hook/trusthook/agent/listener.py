"""The agent's unix socket: root-only, one request per connection, a thread per connection."""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import stat
import time
from pathlib import Path
from typing import Any

from trusthook.agent.metrics import AgentMetrics
from trusthook.agent.service import AgentService
from trusthook.common.jsonobject import parse_object
from trusthook.common.protocol import OP_HOOK
from trusthook.common.wire import ERROR, MAX_MESSAGE_BYTES, OK, peer_uid, read_to_eof
from trusthook.errors import ServiceError, TrusthookError

log = logging.getLogger(__name__)
MAX_HEADER_BYTES = 4096  # a body may be MAX_MESSAGE_BYTES; its header comes on top


def _error(message: str) -> bytes:
    return ERROR + " ".join(message.split()).encode("utf-8", "replace") + b"\n"


class _Handler(socketserver.BaseRequestHandler):
    server: AgentServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(self.server.io_timeout)
        self.op: object = None
        try:
            sock.sendall(self._respond(sock))
        except OSError as e:
            log.warning("client connection failed: %s", e)
            return
        if self.op == OP_HOOK:
            accepted: float = self.client_address  # AgentServer.get_request
            self.server.metrics.hook_answered(time.monotonic() - accepted)

    def _launched(self, result: dict[str, Any] | None) -> None:
        """Count a hook request's outcome: refused (an error answer: the container does not
        start), unmeasured (audit mode let it start) or measured."""
        if self.op == OP_HOOK:
            unmeasured = result is not None and "unmeasured" in result
            self.server.metrics.launch(
                "refused" if result is None else "unmeasured" if unmeasured else "measured"
            )

    def _respond(self, sock: socket.socket) -> bytes:
        limit = MAX_MESSAGE_BYTES + MAX_HEADER_BYTES
        raw = read_to_eof(sock, limit)  # read first: closing on unread data resets the peer
        if raw is None:
            log.warning("refused a request larger than %d bytes", limit)
            return _error(f"request is larger than {limit} bytes")
        uid = peer_uid(sock)
        if uid != 0:
            log.warning("refused a request from uid %d", uid)
            return _error(f"only root may use the trusthook agent, not uid {uid}")
        line, _, body = raw.partition(b"\n")
        try:
            header = parse_object(line, "request header", ValueError)
        except ValueError as e:
            log.warning("malformed request: %s", e)
            return _error(str(e))
        op = self.op = header.get("op")
        try:
            result = self.server.service.handle(header, body)
        except TrusthookError as e:
            level = logging.ERROR if isinstance(e, ServiceError) else logging.WARNING
            log.log(level, "%s failed: %s", op, e)
            self._launched(None)
            return _error(str(e))
        except Exception as e:  # outermost point for one request: answer, never drop it
            log.exception("%s failed unexpectedly", op)
            self._launched(None)
            return _error(f"internal error in the trusthook agent ({type(e).__name__}: {e})")
        log.debug("%s ok", op)
        self._launched(result)
        return OK + b"\n" + json.dumps(result, separators=(",", ":")).encode()


class AgentServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves ``service`` on a unix socket that only root can reach."""

    request_queue_size = 512  # many containers may start at once
    daemon_threads = False  # server_close() waits for in-flight launches
    allow_reuse_address = False

    def __init__(
        self,
        path: Path,
        service: AgentService,
        *,
        metrics: AgentMetrics | None = None,
        io_timeout: float = 30.0,
    ) -> None:
        self.service = service
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self.io_timeout = io_timeout
        _prepare_socket_path(path)
        old_umask = os.umask(0o177)
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)

    def get_request(self) -> tuple[socket.socket, float]:
        """Accept a connection. A unix socket's peer has no address: in its place goes the
        moment the connection was accepted, which a hook's round trip is timed from."""
        sock, _ = self.socket.accept()
        return sock, time.monotonic()


def _prepare_socket_path(path: Path) -> None:
    """Create the socket's directory (0700) or check that only root can write to it, and
    remove a stale socket left by a dead agent."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.parent.stat()
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise ServiceError(
            f"agent socket directory {path.parent} is writable by others than root"
            f" (owner uid {st.st_uid}, mode {st.st_mode & 0o7777:o}); refusing to serve there"
        )
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise ServiceError(f"agent socket path {path} exists and is not a socket; refusing it")
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
