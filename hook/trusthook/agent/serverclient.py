"""HTTPS to the attestation server, with the host's client certificate (mutual TLS).

Errors: a server that cannot be reached or fails (5xx) is ``ServerUnavailableError``, which the
attester retries with backoff; a refusal (4xx) is ``ServerRefusedError`` carrying the server's
own one-line reason.

A client given a ``signer`` (the TPM request key's, docs/attestation.md §10) signs the requests
posted with ``signed=True`` (those that carry evidence, and with it the server's nonce):
``Trusthook-Request-Signature`` carries the signature over the method, path and exact body.

The connection is HTTP/1.1 keep-alive and outlives an exchange: the attester holds one client
across attestations, so a host's periodic attestation costs the server no TLS handshake while
the server keeps idle connections longer than the interval (docs/attestation.md §1). A held
connection the server has closed meanwhile (idle timeout, restart) is noticed before a request
is sent on it (the socket reads as closed) and replaced by a fresh one. If a request on a reused
connection still fails before any answer, the server may or may not have received it; it is
sent again, once, on a fresh connection only when repeating it is harmless (``retry=True``:
every GET, and POST /v1/nonces, whose extra nonce expires unused). Anything else fails with
``ServerUnavailableError`` and the attester starts a new exchange: resending an attestation
whose first copy reached the server would present a spent nonce, which the server records as a
replay and answers with an untrusted verdict; a new exchange asks for a new nonce.
"""

from __future__ import annotations

import http.client
import json
import select
import ssl
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from trusthook.attest.requestkey import SIGNATURE_HEADER, request_digest
from trusthook.common import b64
from trusthook.errors import (
    ConfigError,
    ServerRefusedError,
    ServerUnavailableError,
    TrusthookError,
)

MAX_ANSWER_BYTES = 16 << 20
Signer = Callable[[bytes], bytes]  # a request digest -> a marshaled TPMT_SIGNATURE
# What a connection the server closed looks like when a request is sent on it: no answer.
_CLOSED = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


def tls_context(
    server_ca: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """Verify the server against ``server_ca``; present ``cert`` if given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(server_ca))
        if cert is not None:
            context.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load TLS material ({server_ca}, {cert}): {e}") from e
    return context


class ServerClient:
    """One HTTPS keep-alive connection to the server, reused for every request until closed
    (then opened again by the next request); not thread-safe."""

    def __init__(
        self,
        url: str,
        context: ssl.SSLContext,
        *,
        timeout: float = 30.0,
        signer: Signer | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"attestation server URL must be https://host[:port], got {url!r}")
        self.url = url.rstrip("/")
        self._signer = signer
        self._conn = http.client.HTTPSConnection(
            parts.hostname, parts.port or 443, context=context, timeout=timeout
        )
        self.connections = 0  # connections opened (TLS handshakes), for tests and benches

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def get(self, path: str) -> dict[str, Any]:
        return self._request("GET", path, None, retry=True)

    def post(
        self,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        signed: bool = False,
        retry: bool = False,
    ) -> dict[str, Any]:
        """POST ``body``; ``signed``: with the request key's signature (ConfigError if this
        client has no signer). ``retry``: repeating the request is harmless, so it is sent
        again on a fresh connection if a reused one turns out closed (see the module's
        docstring)."""
        payload = body if body is not None else {}
        return self._request("POST", path, payload, signed=signed, retry=retry)

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        signed: bool = False,
        retry: bool,
    ) -> dict[str, Any]:
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        if signed:
            if self._signer is None or payload is None:
                raise ConfigError(f"{method} {path} must be signed, and this client cannot sign")
            signature = self._signer(request_digest(method, path, payload))
            headers[SIGNATURE_HEADER] = b64.encode(signature)
        sock = self._conn.sock
        if sock is not None and _closed_by_peer(sock):
            self._conn.close()  # the server closed it while idle: the request goes on a new one
        reused = self._conn.sock is not None
        try:
            try:
                response, raw = self._send(method, path, payload, headers)
            except _CLOSED:
                self._conn.close()
                if not (reused and retry):
                    raise
                reused = False
                response, raw = self._send(method, path, payload, headers)  # once, afresh
        except _CLOSED as e:
            if not reused:
                raise self._failure(e) from None
            raise ServerUnavailableError(
                f"attestation server {self.url} closed the connection before answering"
                f" {method} {path} ({type(e).__name__}); not sent again: it may have reached"
                " the server"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            raise self._failure(e) from None
        if len(raw) > MAX_ANSWER_BYTES:
            self._conn.close()  # the rest of the answer is still on it
            raise ServerRefusedError(f"attestation server answer is over {MAX_ANSWER_BYTES} bytes")
        try:
            data = json.loads(raw) if raw else {}
        except (ValueError, RecursionError):  # RecursionError: "[" nested 100000 deep
            data = None
        if response.status >= 400:
            message = _error_message(data) or f"HTTP {response.status} {response.reason}"
            kind = ServerUnavailableError if response.status >= 500 else ServerRefusedError
            raise kind(f"attestation server {self.url} {method} {path}: {message}")
        if not isinstance(data, dict):
            raise ServerRefusedError(f"attestation server {self.url} sent a malformed answer")
        return data

    def _failure(self, e: OSError | http.client.HTTPException) -> TrusthookError:
        """What a failed request means; the connection is closed."""
        self._conn.close()
        if isinstance(e, ssl.SSLCertVerificationError):
            return ServerUnavailableError(
                f"attestation server {self.url}: its certificate does not verify against the"
                f" configured CA ({e.verify_message})"
            )
        if isinstance(e, ssl.SSLError):
            return _tls_refusal(self.url, e)
        return ServerUnavailableError(
            f"cannot reach attestation server {self.url}: {e or type(e).__name__}"
        )

    def _send(
        self, method: str, path: str, payload: bytes | None, headers: dict[str, str]
    ) -> tuple[http.client.HTTPResponse, bytes]:
        if self._conn.sock is None:
            self._conn.connect()  # what request() would do; counted
            self.connections += 1
        self._conn.request(method, path, body=payload, headers=headers)
        response = self._conn.getresponse()
        raw = response.read(MAX_ANSWER_BYTES + 1)
        if not response.isclosed():  # not read to its end: the connection is not reusable
            self._conn.close()
        return response, raw


def _closed_by_peer(sock: Any) -> bool:
    """Whether an idle keep-alive connection was closed by the server: between answers it
    has nothing to send, so a readable socket means end of stream (or a TLS alert or
    close_notify; either way the connection is done)."""
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _tls_refusal(url: str, error: ssl.SSLError) -> ServerRefusedError | ServerUnavailableError:
    """What a TLS error from the server means: an alert about the client's certificate is a
    refusal of this host's identity; anything else, an unreachable server."""
    reason = error.reason or ""
    if "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason):
        return ServerRefusedError(
            f"attestation server {url} refused this host's TLS client certificate (TLS alert"
            f" {reason}): it was not issued by this server's CA or is no longer valid;"
            " enroll again with this server"
        )
    if "ALERT" in reason:
        return ServerRefusedError(f"attestation server {url} refused the TLS handshake ({reason})")
    if isinstance(error, ssl.SSLEOFError):  # the alert did not arrive before the close
        return ServerUnavailableError(
            f"attestation server {url} closed the TLS connection during the handshake: it may"
            " refuse this host's client certificate (its log says), or it stopped"
        )
    return ServerUnavailableError(f"cannot reach attestation server {url}: {error}")


def _error_message(data: Any) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        message = data["error"].get("message")
        if isinstance(message, str):
            return " ".join(message.split())[:500]
    return None
