"""TPM identity checks against real swtpm-made material: EK certificates from swtpm's local CA,
EK and AK public areas from the TPM, and credentials activated in the TPM."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_SE,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMA_OBJECT,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TSS2_Exception,
)
from tpm2_pytss.utils import NVReadEK, create_ek_template

from tests.integration.conftest import new_swtpm
from trusthook.attest.identity import (
    check_ak_public,
    check_anchors,
    check_ek_public,
    fingerprint,
    load_ca_bundle,
    make_credential,
    verify_ek_certificate,
)
from trusthook.errors import ConfigError, EnrollmentError

pytestmark = pytest.mark.integration

SWTPM_LOCALCA = Path("/var/lib/swtpm-localca")
EK_CERT_INDEX = 0x01C00002
AK_ATTRIBUTES = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
)
AK_TEMPLATE = "rsa2048:rsassa-sha256:null"


# TPM helpers (tpm2-pytss directly, independent of trusthook.agent.tpm)


@dataclass(frozen=True)
class Material:
    """What a host sends at enrollment, read from one manufactured TPM."""

    state: Path
    ek_certificate: bytes
    ek_public: bytes
    ak_public: bytes
    ak_name: bytes  # as the TPM computes it
    storage_public: bytes  # a restricted decryption key: not an AK


@dataclass(frozen=True)
class Tpms:
    mine: Material
    other: Material


def _read_ek_certificate(e: ESAPI) -> bytes:
    handle = e.tr_from_tpmpublic(EK_CERT_INDEX)
    public, _ = e.nv_read_public(handle)
    size = public.nvPublic.dataSize
    der = b""
    while len(der) < size:
        chunk = min(1024, size - len(der))
        der += bytes(e.nv_read(handle, chunk, len(der), ESYS_TR.OWNER))
    return der


def _ek(e: ESAPI) -> tuple[Any, bytes]:
    _, template = create_ek_template("EK-RSA2048", NVReadEK(e))
    handle, public, *_ = e.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT)
    return handle, bytes(public.marshal())


def _primary(e: ESAPI, template: str, attributes: int) -> tuple[Any, bytes]:
    public_template = TPM2B_PUBLIC.parse(template, objectAttributes=attributes)
    handle, public, *_ = e.create_primary(
        TPM2B_SENSITIVE_CREATE(), public_template, ESYS_TR.ENDORSEMENT
    )
    return handle, bytes(public.marshal())


def _ak(e: ESAPI) -> tuple[Any, bytes]:
    return _primary(e, AK_TEMPLATE, AK_ATTRIBUTES)


def _manufacture(state: Path) -> Material:
    tpm = new_swtpm(state)
    tpm.setup()
    with tpm:
        e = ESAPI(tpm.tcti)
        try:
            certificate = _read_ek_certificate(e)
            _, ek_public = _ek(e)
            ak, ak_public = _ak(e)
            storage_attributes = (AK_ATTRIBUTES & ~TPMA_OBJECT.SIGN_ENCRYPT) | TPMA_OBJECT.DECRYPT
            _, storage_public = _primary(e, "rsa2048:null:aes128cfb", storage_attributes)
            return Material(
                state=state,
                ek_certificate=certificate,
                ek_public=ek_public,
                ak_public=ak_public,
                ak_name=bytes(e.tr_get_name(ak)),
                storage_public=storage_public,
            )
        finally:
            e.close()


@pytest.fixture(scope="session")
def tpms(tmp_path_factory: pytest.TempPathFactory) -> Tpms:
    root = tmp_path_factory.mktemp("identity-tpms")
    return Tpms(mine=_manufacture(root / "mine"), other=_manufacture(root / "other"))


@pytest.fixture(scope="session")
def bundle() -> tuple[x509.Certificate, ...]:
    """swtpm's local CA: its root and the intermediate that signs EK certificates."""
    pem = b"".join(p.read_bytes() for p in sorted(SWTPM_LOCALCA.glob("*cert*.pem")))
    return load_ca_bundle(pem, str(SWTPM_LOCALCA))


@pytest.fixture
def esapi(tpms: Tpms) -> Iterator[ESAPI]:
    """The first TPM, running again (its EK and AK are primaries: recreated identically)."""
    with new_swtpm(tpms.mine.state) as tpm:
        e = ESAPI(tpm.tcti)
        try:
            yield e
        finally:
            e.close()


def _now() -> datetime:
    return datetime.now(UTC)


def _localca(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((SWTPM_LOCALCA / name).read_bytes())


def _edit_public(public: bytes, **changes: Any) -> bytes:
    """``public`` with fields of its TPMT_PUBLIC changed (dotted paths as ``a__b``)."""
    parsed, _ = TPM2B_PUBLIC.unmarshal(public)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = parsed.publicArea
        for part in parents:
            target = getattr(target, part)
        setattr(target, leaf, value)
    return bytes(parsed.marshal())


# Self-made certificate chains, for cases swtpm's CA cannot produce


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool | None,
    start: datetime,
    end: datetime,
    path_length: int | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_cn(subject))
        .issuer_name(_cn(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length), critical=True
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


# EK certificate chain


def test_ek_certificate_verifies(tpms: Tpms, bundle: tuple[x509.Certificate, ...]) -> None:
    assert sorted(c.subject.rfc4514_string() for c in bundle) == [
        "CN=swtpm-localca",
        "CN=swtpm-localca-rootca",
    ]
    certificate = verify_ek_certificate(tpms.mine.ek_certificate, bundle, _now())
    assert certificate.issuer.rfc4514_string() == "CN=swtpm-localca"
    # an intermediate alone is no trust anchor: a chain must end at a root
    alone = (_localca("issuercert.pem"),)
    with pytest.raises(
        EnrollmentError,
        match=r"chain ends at CN=swtpm-localca, which is not a trust anchor: got no certificate"
        r" for its issuer CN=swtpm-localca-rootca",
    ):
        verify_ek_certificate(tpms.mine.ek_certificate, alone, _now())
    # unless the operator names it an anchor (ek_ca_anchors)
    anchors = check_anchors(alone, {fingerprint(alone[0])}, "the test bundle")
    assert verify_ek_certificate(tpms.mine.ek_certificate, alone, _now(), anchors) == certificate


def test_unknown_issuer_refused(tpms: Tpms) -> None:
    root_only = (_localca("swtpm-localca-rootca-cert.pem"),)
    with pytest.raises(EnrollmentError, match=r"issuer CN=swtpm-localca is not in the EK CA"):
        verify_ek_certificate(tpms.mine.ek_certificate, root_only, _now())
    with pytest.raises(EnrollmentError, match=r"\(0 certificates\)"):
        verify_ek_certificate(tpms.mine.ek_certificate, (), _now())


def test_impostor_ca_refused(tpms: Tpms, bundle: tuple[x509.Certificate, ...]) -> None:
    """A CA with the issuer's name but another key: the signature does not verify."""
    now = _now()
    key = _key()
    name = "swtpm-localca"
    impostor = _certificate(
        name, key, name, key, ca=True, start=now - timedelta(1), end=now + timedelta(1)
    )
    with pytest.raises(EnrollmentError, match=r"signature does not verify .* CN=swtpm-localca"):
        verify_ek_certificate(tpms.mine.ek_certificate, (impostor,), now)
    # next to the real one it is merely skipped
    verify_ek_certificate(tpms.mine.ek_certificate, (impostor, *bundle), now)
    # an impostor root above the real intermediate is caught one level up
    root_name = "swtpm-localca-rootca"
    root = _certificate(
        root_name, key, root_name, key, ca=True, start=now - timedelta(1), end=now + timedelta(1)
    )
    with pytest.raises(EnrollmentError, match=r"CA certificate CN=swtpm-localca signature"):
        verify_ek_certificate(tpms.mine.ek_certificate, (_localca("issuercert.pem"), root), now)


def test_validity_window(tpms: Tpms, bundle: tuple[x509.Certificate, ...]) -> None:
    certificate = x509.load_der_x509_certificate(tpms.mine.ek_certificate)
    before = certificate.not_valid_before_utc - timedelta(seconds=1)
    with pytest.raises(EnrollmentError, match="EK certificate is not yet valid"):
        verify_ek_certificate(tpms.mine.ek_certificate, bundle, before)
    # swtpm's EK certificates end at the end of 9999 (RFC 5280's "no expiry")
    assert certificate.not_valid_after_utc == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    after = datetime(9999, 12, 31, 23, 59, 59, 1, tzinfo=UTC)
    with pytest.raises(EnrollmentError, match="EK certificate has expired"):
        verify_ek_certificate(tpms.mine.ek_certificate, bundle, after)


def test_garbage_der_refused(tpms: Tpms, bundle: tuple[x509.Certificate, ...]) -> None:
    for der in (b"", b"not a certificate", tpms.mine.ek_certificate[:-10]):
        with pytest.raises(EnrollmentError, match="not a DER X.509 certificate"):
            verify_ek_certificate(der, bundle, _now())


def test_chain_rules_on_made_chains() -> None:
    """Issuer not a CA, path length, CA outside its validity, and a looping chain."""
    now = _now()
    start, end = now - timedelta(days=1), now + timedelta(days=1)
    root_key, mid_key, leaf_key = _key(), _key(), _key()
    root = _certificate("root", root_key, "root", root_key, ca=True, start=start, end=end)

    def leaf(issuer_cert: x509.Certificate) -> bytes:
        name = issuer_cert.subject.rfc4514_string().removeprefix("CN=")
        return _der(_certificate("ek", leaf_key, name, mid_key, ca=False, start=start, end=end))

    good_mid = _certificate("mid", mid_key, "root", root_key, ca=True, start=start, end=end)
    verify_ek_certificate(leaf(good_mid), (root, good_mid), now)

    for mid, needle in (
        (
            _certificate("mid", mid_key, "root", root_key, ca=False, start=start, end=end),
            "issuer CN=mid is not a CA: got ca=False",
        ),
        (
            _certificate("mid", mid_key, "root", root_key, ca=None, start=start, end=end),
            "issuer CN=mid is not a CA: got no basicConstraints",
        ),
        (
            _certificate("mid", mid_key, "root", root_key, ca=True, start=now, end=end),
            "CA certificate CN=mid is not yet valid",
        ),
        (
            _certificate("mid", mid_key, "root", root_key, ca=True, start=start, end=start),
            "CA certificate CN=mid has expired",
        ),
    ):
        with pytest.raises(EnrollmentError, match=needle):
            verify_ek_certificate(leaf(mid), (root, mid), now - timedelta(seconds=1))

    # a root that allows no intermediate CA
    strict_root = _certificate(
        "root", root_key, "root", root_key, ca=True, start=start, end=end, path_length=0
    )
    with pytest.raises(EnrollmentError, match="allows 0 CAs below it, got 1"):
        verify_ek_certificate(leaf(good_mid), (strict_root, good_mid), now)

    # two CAs certifying each other never reach a root
    a_key, b_key = _key(), _key()
    a = _certificate("a", a_key, "b", b_key, ca=True, start=start, end=end)
    b = _certificate("b", b_key, "a", a_key, ca=True, start=start, end=end)
    ek = _der(_certificate("ek", leaf_key, "a", a_key, ca=False, start=start, end=end))
    with pytest.raises(EnrollmentError, match="chain is longer than 5"):
        verify_ek_certificate(ek, (a, b), now)


def test_load_ca_bundle_refuses_non_pem(tmp_path: Path) -> None:
    for data in (b"", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"):
        with pytest.raises(ConfigError, match=f"EK CA bundle {tmp_path}"):
            load_ca_bundle(data, str(tmp_path))


# EK public area


def test_ek_public_matches_certificate(tpms: Tpms, bundle: tuple[x509.Certificate, ...]) -> None:
    certificate = verify_ek_certificate(tpms.mine.ek_certificate, bundle, _now())
    ek = check_ek_public(tpms.mine.ek_public, certificate)
    assert bytes(ek.marshal()) == tpms.mine.ek_public


def test_ek_public_of_another_tpm_refused(tpms: Tpms, bundle: tuple[x509.Certificate, ...]) -> None:
    certificate = verify_ek_certificate(tpms.mine.ek_certificate, bundle, _now())
    with pytest.raises(EnrollmentError, match="expected the EK certificate's modulus"):
        check_ek_public(tpms.other.ek_public, certificate)


def test_ek_public_template_enforced(tpms: Tpms, bundle: tuple[x509.Certificate, ...]) -> None:
    certificate = verify_ek_certificate(tpms.mine.ek_certificate, bundle, _now())
    ek = tpms.mine.ek_public
    attributes = int(TPM2B_PUBLIC.unmarshal(ek)[0].publicArea.objectAttributes)
    cases: list[tuple[bytes, str]] = [
        (
            _edit_public(ek, objectAttributes=attributes | TPMA_OBJECT.USERWITHAUTH),
            "EK object attributes got fixedtpm.*userwithauth.*, expected fixedtpm",
        ),
        (
            _edit_public(ek, objectAttributes=attributes | 1 << 30),
            r"EK object attributes got fixedtpm\|.*\|decrypt\|bit30, expected",
        ),
        (_edit_public(ek, authPolicy=b"\x00" * 32), "EK authPolicy got 0000"),
        (
            _edit_public(ek, parameters__rsaDetail__symmetric__keyBits__aes=256),
            "EK symmetric algorithm got aes-256-cfb, expected aes-128-cfb",
        ),
        (_edit_public(ek, nameAlg=TPM2_ALG.SHA1), "EK name algorithm got sha1, expected sha256"),
        (tpms.mine.ak_public, "EK object attributes got"),
        (ek + b"\x00", "EK public area is malformed: got 317 bytes"),
        (b"\x00\x02\x00", "EK public area is not a marshaled TPM2B_PUBLIC"),
    ]
    for public, needle in cases:
        with pytest.raises(EnrollmentError, match=needle):
            check_ek_public(public, certificate)


# AK public area


def test_ak_public_accepted(tpms: Tpms) -> None:
    ak = check_ak_public(tpms.mine.ak_public)
    assert ak.public == tpms.mine.ak_public
    assert ak.name == tpms.mine.ak_name
    assert ak.name[:2] == b"\x00\x0b" and len(ak.name) == 34
    assert ak.public_key().key_size == 2048
    # the key verifies what the TPM signs with the AK (a restricted key signs only digests
    # the TPM hashed itself, proven by a ticket)
    with new_swtpm(tpms.mine.state) as tpm:
        e = ESAPI(tpm.tcti)
        try:
            handle, _ = _ak(e)
            digest, ticket = e.hash(b"hello", TPM2_ALG.SHA256, ESYS_TR.OWNER)
            signature = e.sign(handle, digest, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), ticket)
        finally:
            e.close()
    ak.public_key().verify(
        bytes(signature.signature.rsassa.sig), b"hello", padding.PKCS1v15(), hashes.SHA256()
    )


def test_ak_public_refused(tpms: Tpms) -> None:
    ak = tpms.mine.ak_public
    attributes = int(TPM2B_PUBLIC.unmarshal(ak)[0].publicArea.objectAttributes)
    size = int.from_bytes(ak[:2], "big")
    cases: list[tuple[bytes, str]] = [
        (tpms.mine.storage_public, "expected sign to be set"),
        (tpms.mine.ek_public, "expected sign to be set"),
        (
            _edit_public(ak, objectAttributes=attributes & ~TPMA_OBJECT.RESTRICTED),
            "AK object attributes got .*, expected restricted to be set",
        ),
        (
            _edit_public(ak, objectAttributes=attributes & ~TPMA_OBJECT.FIXEDTPM),
            "expected fixedtpm to be set",
        ),
        (
            _edit_public(ak, objectAttributes=attributes | TPMA_OBJECT.DECRYPT),
            "AK object attributes got .*decrypt.*, expected decrypt to be clear",
        ),
        (
            _edit_public(ak, parameters__rsaDetail__scheme__details__rsassa__hashAlg=TPM2_ALG.SHA1),
            "AK signing scheme got rsassa-sha1, expected rsassa-sha256",
        ),
        (
            _edit_public(ak, parameters__rsaDetail__scheme__scheme=TPM2_ALG.RSAPSS),
            "AK signing scheme got rsapss-sha256, expected rsassa-sha256",
        ),
        (
            _edit_public(ak, parameters__rsaDetail__keyBits=1024),
            "AK RSA key got 1024 bits",
        ),
        (
            bytes(TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", AK_ATTRIBUTES).marshal()),
            "AK key type got ecc, expected rsa",
        ),
        (ak + b"\xff", "AK public area is malformed"),
        ((size - 4).to_bytes(2, "big") + ak[2:], "not canonically marshaled"),
        (b"", "AK public area is not a marshaled TPM2B_PUBLIC"),
    ]
    for public, needle in cases:
        with pytest.raises(EnrollmentError, match=needle):
            check_ak_public(public)


# Credential activation


def test_credential_activates_in_the_tpm(
    tpms: Tpms, bundle: tuple[x509.Certificate, ...], esapi: ESAPI
) -> None:
    certificate = verify_ek_certificate(tpms.mine.ek_certificate, bundle, _now())
    ek = check_ek_public(tpms.mine.ek_public, certificate)
    ak = check_ak_public(tpms.mine.ak_public)
    secret = b"s" * 32
    ek_handle, ek_public = _ek(esapi)
    ak_handle, ak_public = _ak(esapi)
    assert (ek_public, ak_public) == (tpms.mine.ek_public, tpms.mine.ak_public)

    def activate(blob: bytes, encrypted: bytes) -> bytes:
        session = esapi.start_auth_session(
            ESYS_TR.NONE,
            ESYS_TR.NONE,
            TPM2_SE.POLICY,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            TPM2_ALG.SHA256,
        )
        try:
            esapi.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            return bytes(
                esapi.activate_credential(
                    ak_handle,
                    ek_handle,
                    TPM2B_ID_OBJECT.unmarshal(blob)[0],
                    TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted)[0],
                    session1=ESYS_TR.PASSWORD,
                    session2=session,
                )
            )
        finally:
            esapi.flush_context(session)

    assert activate(*make_credential(ek, secret, ak.name)) == secret
    # sealed for another TPM's AK name: this TPM's AK cannot take it
    other_ak = check_ak_public(tpms.other.ak_public)
    with pytest.raises(TSS2_Exception):
        activate(*make_credential(ek, secret, other_ak.name))
    # sealed to another TPM's EK: this TPM's EK cannot open it
    other_certificate = verify_ek_certificate(tpms.other.ek_certificate, bundle, _now())
    other_ek = check_ek_public(tpms.other.ek_public, other_certificate)
    with pytest.raises(TSS2_Exception):
        activate(*make_credential(other_ek, secret, ak.name))
