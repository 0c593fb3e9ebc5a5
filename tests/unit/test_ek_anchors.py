"""EK CA trust anchors on made chains: only roots (self-signed) and certificates the operator
names are anchors; an intermediate is believed only on the way to one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from trusthook.attest.identity import check_anchors, fingerprint, verify_ek_certificate
from trusthook.errors import ConfigError, EnrollmentError

NOW = datetime.now(UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


ROOT_KEY, MID_KEY, EK_KEY, OTHER_KEY = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
ROOT = _certificate("root", ROOT_KEY, "root", ROOT_KEY, ca=True)
MID = _certificate("mid", MID_KEY, "root", ROOT_KEY, ca=True)
EK = _certificate("ek", EK_KEY, "mid", MID_KEY, ca=False).public_bytes(Encoding.DER)


def test_a_chain_to_a_root_verifies() -> None:
    assert verify_ek_certificate(EK, (ROOT, MID), NOW).subject == _name("ek")


def test_an_intermediate_without_its_root_is_refused_unless_named() -> None:
    with pytest.raises(
        EnrollmentError,
        match="chain ends at CN=mid, which is not a trust anchor: got no certificate for its"
        f" issuer CN=root .*ek_ca_anchors = \\['{fingerprint(MID)}'\\]",
    ):
        verify_ek_certificate(EK, (MID,), NOW)
    anchors = check_anchors((MID,), {fingerprint(MID)}, "bundle.pem")
    assert verify_ek_certificate(EK, (MID,), NOW, anchors).subject == _name("ek")


def test_a_certificate_that_names_itself_its_issuer_but_another_key_signed_is_no_root() -> None:
    """Subject equal to issuer is not enough: its own key must verify its signature."""
    fake_root = _certificate("root", ROOT_KEY, "root", OTHER_KEY, ca=True)
    with pytest.raises(EnrollmentError, match="CA certificate CN=root signature does not verify"):
        verify_ek_certificate(EK, (fake_root, MID), NOW)


def test_named_anchors_must_be_in_the_bundle() -> None:
    with pytest.raises(ConfigError, match="EK CA anchor ff+ is not the SHA-256 of any certificate"):
        check_anchors((ROOT, MID), {"f" * 64}, "bundle.pem")
    assert check_anchors((ROOT,), set(), "bundle.pem") == frozenset()
