"""The TLS layer under uvicorn: the client certificate in the ASGI scope, which uvicorn does
not put there, and a log line for every refused handshake.

``PeerCertProtocol`` is uvicorn's h11 protocol (``uvicorn.Config(http=PeerCertProtocol)``) that,
for a connection whose client presented a certificate, adds the ASGI TLS extension to each
request's scope: ``scope["extensions"]["tls"]["client_cert_chain"]`` holds the PEM certificate.
The TLS layer has verified it against the CA in ``ssl_ca_certs`` by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from asyncio import selector_events, sslproto
from asyncio.constants import SSL_HANDSHAKE_TIMEOUT, SSL_SHUTDOWN_TIMEOUT
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

log = logging.getLogger(__name__)
_PARSED = "trusthook.certificate"  # our key in the TLS extension: the parsed certificate


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
            _PARSED: certificate,  # parsed once per connection, not per request
        }
        self.app = _with_tls(self.app, tls)

    # An idle keep-alive connection is closed without TLS close_notify: asyncio would wait up
    # to 30 s (its TLS shutdown timeout) for the client's own close_notify, which an agent
    # holding the connection between attestations does not send until it next uses the
    # connection; meanwhile a stopping server waits for every such connection. No answer is
    # in flight on an idle connection, so nothing can be truncated; the agent sees the socket
    # closed before its next request and opens another (agent/serverclient.py).

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()


def peer_certificate(scope: Mapping[str, Any]) -> x509.Certificate | None:
    """The client certificate ``PeerCertProtocol`` put in ``scope``, or None if none was."""
    tls = scope.get("extensions", {}).get("tls", {})
    parsed = tls.get(_PARSED)
    if isinstance(parsed, x509.Certificate):
        return parsed
    chain = tls.get("client_cert_chain")
    if not chain:
        return None
    return x509.load_pem_x509_certificate(str(chain[0]).encode())


class _RefusalReportingTLS(sslproto.SSLProtocol):
    """asyncio's TLS protocol, except that a refused handshake is logged with the peer's address
    and the TLS alert OpenSSL wrote is sent before the connection closes (asyncio drops it, so
    the client saw only an EOF in violation of the protocol)."""

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if isinstance(handshake_exc, ssl.SSLError):
            transport = self._transport
            peer = transport.get_extra_info("peername") if transport is not None else None
            where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "an unknown peer"
            reason = handshake_exc.reason or type(handshake_exc).__name__
            log.warning("refused a TLS handshake from %s: %s", where, reason)
            with contextlib.suppress(Exception):  # best effort: the alert to the client
                self._process_outgoing()  # type: ignore[attr-defined]  # CPython 3.11
        super()._on_handshake_complete(handshake_exc)


class HandshakeLoggingLoop(asyncio.SelectorEventLoop):
    """asyncio's event loop with ``_RefusalReportingTLS`` for TLS connections: every handshake
    the server refuses (a client certificate from another CA, an expired one, no common
    protocol) is logged and answered with its alert; asyncio logs them only in debug mode. Run
    the server in it: ``asyncio.Runner(loop_factory=HandshakeLoggingLoop)``. CPython 3.11's
    selector loop builds the TLS transport this way (tests/integration/test_evidence.py checks
    the log line and the client's message)."""

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: asyncio.BaseProtocol,
        sslcontext: ssl.SSLContext,
        waiter: asyncio.Future[None] | None = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: dict[str, Any] | None = None,
        server: asyncio.AbstractServer | None = None,
        ssl_handshake_timeout: float = SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float = SSL_SHUTDOWN_TIMEOUT,
    ) -> asyncio.Transport:
        # typeshed's SSLProtocol and selector_events stubs lag CPython 3.11's; the calls are
        # those BaseSelectorEventLoop._make_ssl_transport makes
        tls = _RefusalReportingTLS(
            self,
            protocol,
            sslcontext,
            waiter,  # type: ignore[arg-type]
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        selector_events._SelectorSocketTransport(  # type: ignore[attr-defined]
            self, rawsock, tls, extra=extra, server=server
        )
        transport: asyncio.Transport = tls._app_transport
        return transport
