"""The agent's client keeps its connection and replaces one the server closed, against a real
HTTPS server on loopback: a connection closed while idle is noticed before the next request;
a request that got no answer on a reused connection is sent again, once, only when repeating it
is harmless (GET, ``retry=True``), never otherwise (an attestation)."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from trusthook.agent.serverclient import ServerClient, tls_context
from trusthook.errors import ServerUnavailableError
from trusthook.server.ca import CertificateAuthority, pem

BOUND = 30.0  # seconds: generous, for a loaded machine


@dataclass
class Seen:
    """What the server saw: the requests (method, path) and how many connections it closed."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    connections: int = 0
    closed: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    drop: set[str] = field(default_factory=set)  # paths answered once by closing, no answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: _Server

    def _answer(self) -> None:
        seen = self.server.seen
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        seen.requests.append((self.command, self.path))
        path = self.path.partition("?")[0]
        if path in seen.drop:  # as a server that stopped, or closed it as it arrived
            seen.drop.discard(path)
            self.close_connection = True
            return
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if path == "/then-close":  # closed after answering, as an idle timeout does
            self.close_connection = True

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.seen = Seen()

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        self.seen.connections += 1
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.seen.closed.release()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    now = datetime.now(UTC)
    ca = CertificateAuthority.create("test CA", now)
    key, certificate = ca.issue_server_certificate(["127.0.0.1"], now, timedelta(days=1))
    (tmp_path / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "server.crt").write_bytes(pem(certificate))
    (tmp_path / "ca.crt").write_bytes(pem(ca.certificate))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    httpd = _Server(context)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, tmp_path / "ca.crt"
    httpd.shutdown()
    httpd.server_close()
    thread.join(BOUND)


def _client(server: tuple[_Server, Path]) -> ServerClient:
    httpd, ca = server
    return ServerClient(
        f"https://127.0.0.1:{httpd.server_address[1]}", tls_context(ca), timeout=BOUND
    )


def _wait_closed(httpd: _Server) -> None:
    assert httpd.seen.closed.acquire(timeout=BOUND), "the server did not close the connection"


def test_requests_share_one_connection(server: tuple[_Server, Path]) -> None:
    with _client(server) as client:
        for _ in range(3):
            assert client.get("/a") == {"path": "/a"}
            assert client.post("/b", {"x": 1}) == {"path": "/b"}
        assert client.connections == 1
    assert server[0].seen.connections == 1


def test_a_connection_closed_while_idle_is_replaced_before_sending(
    server: tuple[_Server, Path],
) -> None:
    httpd = server[0]
    with _client(server) as client:
        client.get("/then-close")
        _wait_closed(httpd)
        # a POST that is never repeated: it passes only if it went on a new connection
        assert client.post("/v1/attestations", {"nonce": "n"}) == {"path": "/v1/attestations"}
        assert client.connections == 2
    assert httpd.seen.requests.count(("POST", "/v1/attestations")) == 1


def test_a_harmless_request_without_answer_is_sent_again_once(
    server: tuple[_Server, Path],
) -> None:
    httpd = server[0]
    with _client(server) as client:
        client.get("/a")
        httpd.seen.drop.update({"/b", "/v1/nonces"})
        assert client.get("/b") == {"path": "/b"}
        assert client.post("/v1/nonces", retry=True) == {"path": "/v1/nonces"}
        assert client.connections == 3
    assert httpd.seen.requests.count(("GET", "/b")) == 2
    assert httpd.seen.requests.count(("POST", "/v1/nonces")) == 2


def test_an_attestation_without_answer_is_not_sent_again(server: tuple[_Server, Path]) -> None:
    httpd = server[0]
    with _client(server) as client:
        client.get("/a")
        httpd.seen.drop.add("/v1/attestations")
        with pytest.raises(ServerUnavailableError, match="not sent again: it may have reached"):
            client.post("/v1/attestations", {"nonce": "n"})
        assert httpd.seen.requests.count(("POST", "/v1/attestations")) == 1
        assert client.get("/a") == {"path": "/a"}  # the next request opens a new connection
        assert client.connections == 2


def test_a_fresh_connection_without_answer_is_not_sent_again(
    server: tuple[_Server, Path],
) -> None:
    httpd = server[0]
    httpd.seen.drop.add("/b")
    with _client(server) as client, pytest.raises(ServerUnavailableError, match="cannot reach"):
        client.get("/b")  # not a stale connection: the server failed this request
    assert httpd.seen.requests.count(("GET", "/b")) == 1
