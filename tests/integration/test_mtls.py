"""Mutual TLS end to end: a real uvicorn server with ``PeerCertProtocol`` and certificates from
``CertificateAuthority``, real client sockets with and without client certificates."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trusthook.server.ca import CertificateAuthority, pem
from trusthook.server.tlsproto import PeerCertProtocol, peer_certificate

pytestmark = pytest.mark.integration

HOST_ID = "cd" * 32
DAY = timedelta(days=1)


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the client certificate's CN (or "none") and the TLS extension's version."""
    certificate = peer_certificate(scope)
    names = (
        []
        if certificate is None
        else certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    )
    tls = scope.get("extensions", {}).get("tls", {})
    body = json.dumps(
        {
            "cn": str(names[0].value) if names else "none",
            "tls_version": tls.get("tls_version"),
            "client_cert_name": tls.get("client_cert_name"),
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


def _client_identity(ca: CertificateAuthority, name: str, directory: Path) -> Identity:
    """A client key and the certificate ``ca`` issues for it through a CSR."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    certificate = ca.issue_client_certificate(csr, name, datetime.now(UTC), DAY)
    cert_path = directory / f"{name[:8]}.crt"
    cert_path.write_bytes(pem(certificate))
    return Identity(cert=cert_path, key=_write_key(directory / f"{name[:8]}.key", key))


@dataclass(frozen=True)
class Served:
    port: int
    ca_cert: Path
    ca: CertificateAuthority
    directory: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("mtls")
    now = datetime.now(UTC)
    ca = CertificateAuthority.create("mtls test CA", now)
    ca.save(directory / "ca")
    key, certificate = ca.issue_server_certificate(["localhost", "127.0.0.1"], now, DAY)
    (directory / "server.crt").write_bytes(pem(certificate))
    _write_key(directory / "server.key", key)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            echo,
            ssl_certfile=str(directory / "server.crt"),
            ssl_keyfile=str(directory / "server.key"),
            ssl_ca_certs=str(directory / "ca" / "ca.crt"),
            ssl_cert_reqs=ssl.CERT_OPTIONAL,
            http=PeerCertProtocol,
            lifespan="off",
            log_config=None,
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield Served(
            port=sock.getsockname()[1],
            ca_cert=directory / "ca" / "ca.crt",
            ca=ca,
            directory=directory,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _context(server_ca: Path, identity: Identity | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server_ca))
    if identity is not None:
        context.load_cert_chain(str(identity.cert), str(identity.key))
    return context


def _get(port: int, context: ssl.SSLContext, host: str = "127.0.0.1") -> list[dict[str, Any]]:
    """Two requests on one connection (keep-alive keeps the certificate)."""
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    try:
        answers = []
        for _ in range(2):
            connection.request("GET", "/")
            response = connection.getresponse()
            assert response.status == 200
            answers.append(json.loads(response.read()))
        return answers
    finally:
        connection.close()


def test_client_certificate_reaches_the_app(served: Served) -> None:
    identity = _client_identity(served.ca, HOST_ID, served.directory)
    answers = _get(served.port, _context(served.ca_cert, identity))
    for answer in answers:
        assert answer["cn"] == HOST_ID
        assert answer["client_cert_name"] == f"CN={HOST_ID}"
        assert answer["tls_version"] in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
    # over "localhost" too (the server certificate names both)
    assert _get(served.port, _context(served.ca_cert, identity), "localhost")[0]["cn"] == HOST_ID


def test_no_client_certificate_is_allowed(served: Served) -> None:
    answers = _get(served.port, _context(served.ca_cert))
    assert [a["cn"] for a in answers] == ["none", "none"]
    assert answers[0]["tls_version"] is None  # no certificate, no TLS extension


def test_client_certificate_from_another_ca_fails_the_handshake(served: Served) -> None:
    rogue = CertificateAuthority.create("mtls test CA", datetime.now(UTC))  # same name
    identity = _client_identity(rogue, HOST_ID, served.directory / "ca")
    # TLS 1.3: the client's handshake ends before the server checks its certificate, so the
    # refusal shows on the first read (asyncio closes without a readable alert: a plain EOF)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get(served.port, _context(served.ca_cert, identity))
    # TLS 1.2: the handshake itself fails
    context = _context(served.ca_cert, identity)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname="127.0.0.1")
    # a valid one still works afterwards
    good = _client_identity(served.ca, "after", served.directory)
    assert _get(served.port, _context(served.ca_cert, good))[0]["cn"] == "after"


def test_server_verified_against_our_ca_only(served: Served, tmp_path: Path) -> None:
    assert _get(served.port, _context(served.ca_cert))[0]["cn"] == "none"
    other_ca = tmp_path / "other.crt"
    other_ca.write_bytes(pem(CertificateAuthority.create("other", datetime.now(UTC)).certificate))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _get(served.port, _context(other_ca))
    # the server certificate does not name other hosts
    raw = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _context(served.ca_cert).wrap_socket(raw, server_hostname="example.com")
    raw.close()
