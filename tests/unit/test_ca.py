"""The server CA: what it issues, what CSRs it refuses, how it is stored."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trusthook.errors import ConfigError, EnrollmentError
from trusthook.server.ca import CertificateAuthority, pem

NOW = datetime(2026, 1, 1, tzinfo=UTC)
YEAR = timedelta(days=365)
HOST_ID = "ab" * 32


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("test CA", NOW)


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str = "ignored") -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cn(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_ca_certificate(ca: CertificateAuthority) -> None:
    certificate = ca.certificate
    assert certificate.subject == certificate.issuer
    assert _cn(certificate) == "test CA"
    certificate.verify_directly_issued_by(certificate)
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.key.curve, ec.SECP256R1)
    assert certificate.not_valid_after_utc - NOW == timedelta(days=3650)


def test_client_certificate(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = ca.issue_client_certificate(_csr(key, "evil.example"), HOST_ID, NOW, YEAR)
    assert certificate.subject.rfc4514_string() == f"CN={HOST_ID}"  # the CSR's name is ignored
    assert certificate.public_key() == key.public_key()
    certificate.verify_directly_issued_by(ca.certificate)
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certificate.serial_number.bit_length() > 100
    assert certificate.not_valid_after_utc == NOW + YEAR
    other = ca.issue_client_certificate(_csr(key), HOST_ID, NOW, YEAR)
    assert other.serial_number != certificate.serial_number
    # never beyond the CA's own end
    long = ca.issue_client_certificate(_csr(key), HOST_ID, NOW, 20 * YEAR)
    assert long.not_valid_after_utc == ca.certificate.not_valid_after_utc
    # RSA 2048 is fine too
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert ca.issue_client_certificate(_csr(rsa_key), HOST_ID, NOW, YEAR).public_key() == (
        rsa_key.public_key()
    )


def test_csr_refused(ca: CertificateAuthority) -> None:
    good = x509.load_pem_x509_csr(_csr(ec.generate_private_key(ec.SECP256R1())))
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature's integers: still DER, no longer valid
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    p384 = ec.generate_private_key(ec.SECP384R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(ed, None)
        .public_bytes(serialization.Encoding.PEM)
    )
    for csr, needle in (
        (tampered, "CSR signature does not verify"),
        (_csr(weak), "CSR key got RSA 1024, expected RSA >= 2048"),
        (_csr(p384), "CSR key got EC secp384r1, expected EC secp256r1"),
        (ed_csr, "CSR key got Ed25519PublicKey"),
        (b"not a csr", "CSR is not a PEM certificate signing request"),
    ):
        with pytest.raises(EnrollmentError, match=needle):
            ca.issue_client_certificate(csr, HOST_ID, NOW, YEAR)
    with pytest.raises(EnrollmentError, match="cannot be a certificate common name"):
        ca.issue_client_certificate(
            _csr(ec.generate_private_key(ec.SECP256R1())), "x" * 65, NOW, YEAR
        )


def test_server_certificate(ca: CertificateAuthority) -> None:
    key, certificate = ca.issue_server_certificate(["localhost", "127.0.0.1"], NOW, YEAR)
    assert certificate.public_key() == key.public_key()
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [IPv4Address("127.0.0.1")]
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _cn(certificate) == "localhost"
    with pytest.raises(ConfigError, match="at least one hostname"):
        ca.issue_server_certificate([], NOW, YEAR)


def test_save_and_load(ca: CertificateAuthority, tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    ca.save(directory)
    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert (directory / "ca.crt").read_bytes() == pem(ca.certificate)
    assert sorted(p.name for p in directory.iterdir()) == ["ca.crt", "ca.key"]  # no temp files
    loaded = CertificateAuthority.load_dir(directory)
    assert loaded.certificate == ca.certificate
    assert loaded.key.private_numbers() == ca.key.private_numbers()

    other = CertificateAuthority.create("other", NOW)
    with pytest.raises(ConfigError, match="already exists; refusing to overwrite"):
        other.save(directory)
    assert CertificateAuthority.load_dir(directory).certificate == ca.certificate
    # a half-written CA (key only) is not overwritten either
    (directory / "ca.crt").unlink()
    with pytest.raises(ConfigError, match="ca.key already exists"):
        other.save(directory)
    with pytest.raises(FileNotFoundError):
        CertificateAuthority.load_dir(directory)


def test_load_refuses_mismatch(ca: CertificateAuthority, tmp_path: Path) -> None:
    other = CertificateAuthority.create("other", NOW)
    with pytest.raises(ConfigError, match="does not match"):
        CertificateAuthority.load(_key_pem(ca.key), pem(other.certificate))
    leaf_key, leaf = ca.issue_server_certificate(["localhost"], NOW, YEAR)
    with pytest.raises(ConfigError, match="not a CA"):
        CertificateAuthority.load(_key_pem(leaf_key), pem(leaf))
    with pytest.raises(ConfigError, match="cannot load the server CA"):
        CertificateAuthority.load(b"junk", pem(ca.certificate))
