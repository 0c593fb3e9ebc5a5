"""The server's certificate authority: it issues the mutual-TLS client certificates hosts get at
enrollment, and the server's own TLS certificate.

Hosts are named by the certificate's CN (the host id), never by what their CSR asks for. On
disk a CA is ``ca.key`` (PKCS#8 PEM, 0600) and ``ca.crt`` (PEM) in one directory, written once.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trusthook.common.files import write_new
from trusthook.errors import ConfigError, EnrollmentError, TrusthookError

CA_LIFETIME = timedelta(days=3650)
# Certificates start a little in the past so that peers whose clocks lag accept them at once.
CLOCK_SKEW = timedelta(minutes=5)
MIN_RSA_BITS = 2048
KEY_FILE = "ca.key"
CERT_FILE = "ca.crt"


def pem(certificate: x509.Certificate) -> bytes:
    """``certificate`` as PEM."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str, error: type[TrusthookError]) -> x509.Name:
    try:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    except ValueError as e:
        raise error(f"{common_name[:80]!r} cannot be a certificate common name: {e}") from e


def _usage(*, digital_signature: bool, key_cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        write_new(path, data, mode)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; refusing to overwrite a CA") from None


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """An EC P-256 CA key and its self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, common_name: str, now: datetime) -> CertificateAuthority:
        """A new CA valid for ten years from ``now``."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(common_name, ConfigError)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(digital_signature=False, key_cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, certificate=certificate)

    @classmethod
    def load(cls, key_pem: bytes, cert_pem: bytes) -> CertificateAuthority:
        """A CA from PEM; ConfigError unless the key is EC and matches the CA certificate."""
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            certificate = x509.load_pem_x509_certificate(cert_pem)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"cannot load the server CA: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"server CA key is {type(key).__name__}, expected an EC key")
        if key.public_key() != certificate.public_key():
            raise ConfigError("server CA key does not match the public key of its certificate")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.value.ca:
            raise ConfigError(
                "server CA certificate is not a CA: expected basicConstraints ca=True"
            )
        return cls(key=key, certificate=certificate)

    @classmethod
    def load_dir(cls, directory: Path) -> CertificateAuthority:
        """The CA saved in ``directory``; FileNotFoundError if it has not been created."""
        return cls.load((directory / KEY_FILE).read_bytes(), (directory / CERT_FILE).read_bytes())

    def save(self, directory: Path) -> None:
        """Write ``ca.key`` (0600) then ``ca.crt`` into ``directory`` (made 0700 if missing);
        ConfigError if either exists."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for existing in (directory / KEY_FILE, directory / CERT_FILE):
            if existing.exists():
                raise ConfigError(f"{existing} already exists; refusing to overwrite a CA")
        key_pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new(directory / KEY_FILE, key_pem, 0o600)
        _write_new(directory / CERT_FILE, pem(self.certificate), 0o644)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def issue_client_certificate(
        self, csr_pem: bytes, host_id: str, now: datetime, lifetime: timedelta
    ) -> x509.Certificate:
        """A TLS client certificate for the CSR's key, named CN=``host_id``; EnrollmentError
        if the CSR is malformed, not signed by its key, or its key is weak."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
            public_key = csr.public_key()
        except ValueError as e:
            raise EnrollmentError(f"CSR is not a PEM certificate signing request: {e}") from e
        if not csr.is_signature_valid:
            raise EnrollmentError("CSR signature does not verify with the CSR's own public key")
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(public_key.curve, ec.SECP256R1):
                raise EnrollmentError(
                    f"CSR key got EC {public_key.curve.name}, expected EC secp256r1"
                    f" or RSA >= {MIN_RSA_BITS}"
                )
        elif isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < MIN_RSA_BITS:
                raise EnrollmentError(
                    f"CSR key got RSA {public_key.key_size}, expected RSA >= {MIN_RSA_BITS}"
                    " or EC secp256r1"
                )
        else:
            raise EnrollmentError(
                f"CSR key got {type(public_key).__name__}, expected EC secp256r1"
                f" or RSA >= {MIN_RSA_BITS}"
            )
        builder = self._leaf(_name(host_id, EnrollmentError), public_key, now, lifetime)
        return builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        ).sign(self.key, hashes.SHA256())

    def issue_server_certificate(
        self, hostnames: Sequence[str], now: datetime, lifetime: timedelta
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A new key and a TLS server certificate for ``hostnames`` (DNS names or IP
        addresses, the first one also the CN)."""
        if not hostnames:
            raise ConfigError("a server certificate needs at least one hostname")
        names: list[x509.GeneralName] = []
        for hostname in hostnames:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(hostname)))
            except ValueError:
                names.append(x509.DNSName(hostname))
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._leaf(_name(hostnames[0], ConfigError), key.public_key(), now, lifetime)
        certificate = (
            builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return key, certificate

    def _leaf(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        now: datetime,
        lifetime: timedelta,
    ) -> x509.CertificateBuilder:
        """An end-entity certificate to ``subject``, ending no later than this CA does."""
        issuer_key = self.key.public_key()
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(min(now + lifetime, self.certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(digital_signature=True, key_cert_sign=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False
            )
        )
