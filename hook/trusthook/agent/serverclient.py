"""HTTPS to the attestation server, with the host's client certificate (mutual TLS).

Errors: a server that cannot be reached or fails (5xx) is ``ServerUnavailableError``, which the
attester retries with backoff; a refusal (4xx) is ``ServerRefusedError`` carrying the server's
own one-line reason.

A client given a ``signer`` (the TPM request key's, docs/attestation.md §10) signs the requests
posted with ``signed=True`` (those that carry evidence, and with it the server's nonce):
``Trusthook-Request-Signature`` carries the signature over the method, path and exact body.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from trusthook.attest.requestkey import SIGNATURE_HEADER, request_digest
from trusthook.common import b64
from trusthook.errors import ConfigError, ServerRefusedError, ServerUnavailableError

MAX_ANSWER_BYTES = 16 << 20
Signer = Callable[[bytes], bytes]  # a request digest -> a marshaled TPMT_SIGNATURE


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
    """One HTTPS connection to the server, reused for the requests of one exchange."""

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

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._conn.close()

    def get(self, path: str) -> dict[str, Any]:
        return self._request("GET", path, None)

    def post(
        self, path: str, body: dict[str, Any] | None = None, *, signed: bool = False
    ) -> dict[str, Any]:
        """POST ``body``; ``signed``: with the request key's signature (ConfigError if this
        client has no signer)."""
        return self._request("POST", path, body if body is not None else {}, signed=signed)

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None, *, signed: bool = False
    ) -> dict[str, Any]:
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        if signed:
            if self._signer is None or payload is None:
                raise ConfigError(f"{method} {path} must be signed, and this client cannot sign")
            signature = self._signer(request_digest(method, path, payload))
            headers[SIGNATURE_HEADER] = b64.encode(signature)
        try:
            self._conn.request(method, path, body=payload, headers=headers)
            response = self._conn.getresponse()
            raw = response.read(MAX_ANSWER_BYTES + 1)
        except ssl.SSLCertVerificationError as e:
            self._conn.close()
            raise ServerUnavailableError(
                f"attestation server {self.url}: its certificate does not verify against the"
                f" configured CA ({e.verify_message})"
            ) from None
        except ssl.SSLError as e:
            self._conn.close()
            raise _tls_refusal(self.url, e) from None
        except (OSError, http.client.HTTPException) as e:
            self._conn.close()
            raise ServerUnavailableError(
                f"cannot reach attestation server {self.url}: {e or type(e).__name__}"
            ) from None
        if len(raw) > MAX_ANSWER_BYTES:
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
