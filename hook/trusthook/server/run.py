"""``trusthook server``: set up the state directory, serve over mutual TLS, issue and revoke
operator certificates (each recorded in the database: only recorded, unrevoked ones are
accepted). Layout under ``state_dir`` (0700):
``ca/ca.key`` ``ca/ca.crt`` (the CA issuing client certificates), ``tls/server.key``
``tls/server.crt`` (the server's own certificate), ``trusthook.db`` (SQLite, by default).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trusthook.attest.identity import check_anchors, load_ca_bundle
from trusthook.common.files import write_atomic
from trusthook.errors import ConfigError, NotFoundError, UsageError
from trusthook.server.app import create_app
from trusthook.server.auditlog import create_signer, load_signer
from trusthook.server.ca import CertificateAuthority, pem
from trusthook.server.config import ServerConfig
from trusthook.server.metrics import ServerMetrics
from trusthook.server.records import OperatorCert
from trusthook.server.service import OPERATOR_PREFIX, ServerService
from trusthook.server.store import POOL_SIZE, Store
from trusthook.server.tlsproto import HandshakeLoggingLoop, PeerCertProtocol

log = logging.getLogger(__name__)
SERVER_CERT_LIFETIME = timedelta(days=825)
OPERATOR_CERT_LIFETIME = timedelta(days=365)
OPERATOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,54}")  # a file name, and CN fits 64
# Seconds an idle connection is kept open: longer than the agents' attestation interval (60 s
# by default), so each host's agent keeps its connection from one attestation to the next and
# the server does no TLS handshake for it (a full one costs more CPU than the appraisal). Each
# held connection is one file descriptor of the server process while idle.
KEEP_ALIVE = 150


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

    @property
    def audit_key(self) -> Path:
        """The audit log's Ed25519 key (NoteSigner text), named after the log's origin."""
        return self.state_dir / "audit" / "log.key"


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
    if not paths.audit_key.exists():
        signer = create_signer(paths.audit_key, audit_origin(config))
        made.append(f"audit log key {paths.audit_key} ({signer.verifier_key.encode()})")
    store = Store(config.database_url)
    try:
        store.create_schema()
    finally:
        store.dispose()
    made.append(f"database schema in {Store.safe_url(config.database_url)}")
    return made


def audit_origin(config: ServerConfig) -> str:
    """The audit log's origin (its key's name): the server's first host name."""
    return f"{config.hostnames[0]}/trusthook-audit"


def open_store(config: ServerConfig) -> Store:
    """The server's store, signing audit checkpoints with its log key."""
    return Store(config.database_url, log_signer=load_signer(Paths(config.state_dir).audit_key))


def operator_certificate(
    config: ServerConfig, name: str, out: Path, *, by: str = "trusthook"
) -> tuple[Path, Path]:
    """A client certificate for an operator or orchestrator (reads every host's status),
    recorded in the database before its files are written; ``by``: who asked for it."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    if not OPERATOR_NAME.fullmatch(name):
        raise UsageError(
            f"operator name: got {name[:80]!r}, expected a name matching {OPERATOR_NAME.pattern}"
        )
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
    record = OperatorCert(
        serial=format(certificate.serial_number, "x"),
        name=name,
        issued_at=now.timestamp(),
        expires_at=certificate.not_valid_after_utc.timestamp(),
        issued_by=by,
    )
    with _store(config) as store:
        store.add_operator_cert(record)
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


def revoke_operator_certificates(
    config: ServerConfig, name_or_serial: str, *, by: str, reason: str
) -> list[OperatorCert]:
    """Revoke the operator certificate with this serial, or every one issued to this name;
    NotFoundError if none is unrevoked."""
    with _store(config) as store:
        revoked = store.revoke_operator_certs(
            name_or_serial,
            by=by,
            reason=reason,
            now=datetime.now(UTC).timestamp(),
        )
    if not revoked:
        raise NotFoundError(
            f"no unrevoked operator certificate named or with serial {name_or_serial[:80]!r};"
            " see 'trusthook server operator-cert list'"
        )
    return revoked


def operator_certificates(config: ServerConfig) -> list[OperatorCert]:
    with _store(config) as store:
        return store.list_operator_certs()


@contextmanager
def _store(config: ServerConfig) -> Iterator[Store]:
    store = Store(config.database_url)
    try:
        yield store
    finally:
        store.dispose()


def load_ek_bundle(config: ServerConfig) -> tuple[x509.Certificate, ...]:
    """The EK CA bundle, once every configured anchor is a certificate in it."""
    source = str(config.ek_ca_bundle)
    try:
        bundle = load_ca_bundle(config.ek_ca_bundle.read_bytes(), source)
    except OSError as e:
        raise ConfigError(f"cannot read EK CA bundle {source}: {e.strerror}") from e
    check_anchors(bundle, config.ek_ca_anchors, source)
    return bundle


def build_service(config: ServerConfig) -> tuple[ServerService, Store]:
    bundle = load_ek_bundle(config)
    store = open_store(config)
    service = ServerService(config=config, store=store, ca=load_ca(config), ek_roots=bundle)
    return service, store


def run_server(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT (uvicorn's handlers)."""
    paths = Paths(config.state_dir)
    service, store = build_service(config)
    store.create_schema()
    app = create_app(
        service, max_body=config.max_body, metrics=ServerMetrics(store), threads=POOL_SIZE
    )
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
            proxy_headers=False,  # no proxy in front: TLS with client certificates ends here
            server_header=False,
            timeout_keep_alive=KEEP_ALIVE,
        )
    )
    if config.auto_admit is not None:
        log.warning(
            "[admission] auto_admit is ON: every host whose EK chains to the EK CA bundle is"
            " admitted to group %r without an operator; for labs only",
            config.auto_admit,
        )
    log.info(
        "serving on https://%s:%d (database %s)",
        config.host,
        config.port,
        Store.safe_url(config.database_url),
    )
    try:
        with asyncio.Runner(loop_factory=HandshakeLoggingLoop) as runner:
            runner.run(server.serve())
    finally:
        store.dispose()
