"""``trusthook server``: set up the state directory, serve over mutual TLS, issue operator
certificates. Layout under ``state_dir`` (0700):
``ca/ca.key`` ``ca/ca.crt`` (the CA issuing client certificates), ``tls/server.key``
``tls/server.crt`` (the server's own certificate), ``trusthook.db`` (SQLite, by default).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from cryptography.hazmat.primitives import serialization

from trusthook.attest.identity import load_ca_bundle
from trusthook.common.files import write_atomic
from trusthook.errors import ConfigError
from trusthook.server.app import create_app
from trusthook.server.ca import CertificateAuthority, pem
from trusthook.server.config import ServerConfig
from trusthook.server.service import OPERATOR_PREFIX, ServerService
from trusthook.server.store import Store
from trusthook.server.tlsproto import PeerCertProtocol

log = logging.getLogger(__name__)
SERVER_CERT_LIFETIME = timedelta(days=825)
OPERATOR_CERT_LIFETIME = timedelta(days=365)


@dataclass(frozen=True, slots=True)
class Paths:
    state_dir: Path

    @property
    def ca_dir(self) -> Path:
        return self.state_dir / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def tls_cert(self) -> Path:
        return self.state_dir / "tls" / "server.crt"

    @property
    def tls_key(self) -> Path:
        return self.state_dir / "tls" / "server.key"


def _write_private(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, data, mode)


def load_ca(config: ServerConfig) -> CertificateAuthority:
    paths = Paths(config.state_dir)
    try:
        return CertificateAuthority.load_dir(paths.ca_dir)
    except FileNotFoundError:
        raise ConfigError(
            f"no server CA in {paths.ca_dir}; run 'trusthook server init' first"
        ) from None


def init_server(config: ServerConfig, now: datetime | None = None) -> list[str]:
    """Create what is missing: CA, TLS certificate, database schema. Returns what was made."""
    now = now or datetime.now(UTC)
    paths = Paths(config.state_dir)
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    made = []
    if not paths.ca_cert.exists():
        CertificateAuthority.create("trusthook attestation server CA", now).save(paths.ca_dir)
        made.append(f"CA {paths.ca_cert}")
    ca = load_ca(config)
    if not paths.tls_cert.exists():
        key, certificate = ca.issue_server_certificate(config.hostnames, now, SERVER_CERT_LIFETIME)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(paths.tls_key, key_pem, 0o600)
        _write_private(paths.tls_cert, pem(certificate), 0o644)
        made.append(f"TLS certificate {paths.tls_cert} for {', '.join(config.hostnames)}")
    store = Store(config.database_url)
    try:
        store.create_schema()
    finally:
        store.dispose()
    made.append(f"database schema in {Store.safe_url(config.database_url)}")
    return made


def operator_certificate(config: ServerConfig, name: str, out: Path) -> tuple[Path, Path]:
    """A client certificate for an operator or orchestrator (reads every host's status)."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    certificate = load_ca(config).issue_client_certificate(
        csr.public_bytes(serialization.Encoding.PEM),
        OPERATOR_PREFIX + name,
        now,
        OPERATOR_CERT_LIFETIME,
    )
    key_path, cert_path = out / f"{name}.key", out / f"{name}.crt"
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write_private(cert_path, pem(certificate), 0o644)
    return key_path, cert_path


def build_service(config: ServerConfig) -> tuple[ServerService, Store]:
    try:
        bundle = load_ca_bundle(config.ek_ca_bundle.read_bytes(), str(config.ek_ca_bundle))
    except OSError as e:
        raise ConfigError(f"cannot read EK CA bundle {config.ek_ca_bundle}: {e.strerror}") from e
    store = Store(config.database_url)
    service = ServerService(config=config, store=store, ca=load_ca(config), ek_roots=bundle)
    return service, store


def run_server(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT (uvicorn's handlers)."""
    paths = Paths(config.state_dir)
    service, store = build_service(config)
    store.create_schema()
    app = create_app(service, max_body=config.max_body)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            ssl_certfile=str(paths.tls_cert),
            ssl_keyfile=str(paths.tls_key),
            ssl_ca_certs=str(paths.ca_cert),
            ssl_cert_reqs=ssl.CERT_OPTIONAL,
            http=PeerCertProtocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=10,
        )
    )
    log.info(
        "serving on https://%s:%d (database %s)",
        config.host,
        config.port,
        Store.safe_url(config.database_url),
    )
    try:
        server.run()
    finally:
        store.dispose()
