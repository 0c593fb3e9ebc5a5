"""The TLS client certificate in the ASGI scope, which uvicorn does not put there.

``PeerCertProtocol`` is uvicorn's h11 protocol (``uvicorn.Config(http=PeerCertProtocol)``) that,
for a connection whose client presented a certificate, adds the ASGI TLS extension to each
request's scope: ``scope["extensions"]["tls"]["client_cert_chain"]`` holds the PEM certificate.
The TLS layer has verified it against the CA in ``ssl_ca_certs`` by then.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from uvicorn._types import (
    ASGI3Application,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPScope,
    Scope,
)
from uvicorn.protocols.http.h11_impl import H11Protocol


def _with_tls(app: ASGI3Application, tls: dict[object, object]) -> ASGI3Application:
    async def app_with_tls(
        scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http":
            extensions = {**scope.get("extensions", {}), "tls": tls}
            with_tls: HTTPScope = {**scope, "extensions": extensions}
            scope = with_tls
        await app(scope, receive, send)

    return app_with_tls


class PeerCertProtocol(H11Protocol):
    """h11 HTTP/1.1 with the client certificate, if any, in each request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if ssl_object is None or not der:
            return
        certificate = x509.load_der_x509_certificate(der)
        version = ssl_object.version()
        tls: dict[object, object] = {
            "server_cert": None,
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)],
            "client_cert_name": certificate.subject.rfc4514_string(),
            "client_cert_error": None,
            "tls_version": ssl.TLSVersion[version.replace(".", "_")].value if version else None,
        }
        self.app = _with_tls(self.app, tls)


def peer_certificate(scope: Mapping[str, Any]) -> x509.Certificate | None:
    """The client certificate ``PeerCertProtocol`` put in ``scope``, or None if none was."""
    tls = scope.get("extensions", {}).get("tls", {})
    chain = tls.get("client_cert_chain")
    if not chain:
        return None
    return x509.load_pem_x509_certificate(str(chain[0]).encode())
