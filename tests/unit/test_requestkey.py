"""The request key (attest/requestkey.py) with no TPM: the AK's certification of it at
enrollment, and its signature on each request. Each attack a thief of the host's mTLS key
(a file) or a forging host could try is refused with its own message; tests/integration/
test_request_key.py plays them against a real server and swtpm."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC

from tests.softtpm import SoftTpm, ecc_public, ecdsa_signature
from trusthook.agent.tpm import request_key_template
from trusthook.attest.identity import check_ak_public
from trusthook.attest.requestkey import (
    check_request_signature,
    enrollment_qualifying,
    request_digest,
    verify_request_key,
)
from trusthook.errors import AttestationError

ENROLLMENT = "0123456789abcdef0123456789abcdef"
PATH = "/v1/attestations"
BODY = b'{"nonce":"Tk5OTg=="}'


@pytest.fixture(scope="module")
def tpm() -> SoftTpm:
    return SoftTpm()


def verify(tpm: SoftTpm, public: bytes, *, enrollment: str = ENROLLMENT) -> bytes:
    attest, signature = tpm.certify(public, enrollment_qualifying(enrollment))
    return verify_request_key(
        ak=check_ak_public(tpm.ak_public),
        public=public,
        attest=attest,
        signature=signature,
        enrollment_id=ENROLLMENT,
    )


def header(signature: bytes) -> str:
    return base64.b64encode(signature).decode()


def check(point: bytes, signature: str | None, *, path: str = PATH, body: bytes = BODY) -> None:
    check_request_signature(point, method="POST", path=path, body=body, header=signature)


def test_the_agents_template_is_accepted_and_its_signatures_verify(tpm: SoftTpm) -> None:
    point = verify(tpm, tpm.request_public)
    numbers = tpm.request.public_key().public_numbers()
    assert point == b"\x04" + numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")
    check(point, header(tpm.sign_request(request_digest("POST", PATH, BODY))))


def edited(tpm: SoftTpm, **changes: object) -> bytes:
    template = request_key_template(bytes(32))
    area = template.publicArea
    if "attributes" in changes:
        area.objectAttributes = changes["attributes"]
    if "curve" in changes:
        area.parameters.eccDetail.curveID = changes["curve"]
    if "hash" in changes:
        area.parameters.eccDetail.scheme.details.ecdsa.hashAlg = changes["hash"]
    return ecc_public(template, tpm.request)


BASE = request_key_template(bytes(32)).publicArea.objectAttributes


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attributes": BASE & ~TPMA_OBJECT.FIXEDTPM}, "may leave its TPM"),
        ({"attributes": BASE & ~TPMA_OBJECT.SENSITIVEDATAORIGIN}, "may leave its TPM"),
        ({"attributes": BASE | TPMA_OBJECT.RESTRICTED}, "not a plain signing key"),
        ({"attributes": BASE | TPMA_OBJECT.DECRYPT}, "not a plain signing key"),
        ({"curve": TPM2_ECC.NIST_P384}, "not on curve P-256"),
        ({"hash": TPM2_ALG.SHA1}, "scheme is not ECDSA with SHA-256"),
    ],
)
def test_a_key_that_is_not_a_tpm_bound_p256_signing_key_is_refused(
    tpm: SoftTpm, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(AttestationError, match=message) as refused:
        verify(tpm, edited(tpm, **changes))
    assert refused.value.check == "request_key"


def test_an_rsa_key_is_refused(tpm: SoftTpm) -> None:
    rsa_public = TPM2B_PUBLIC.parse(
        "rsa2048:rsassa-sha256:null", nameAlg="sha256", objectAttributes=BASE
    )
    rsa_public.publicArea.unique.rsa = bytes(256)
    with pytest.raises(AttestationError, match="not an ECC key"):
        verify(tpm, bytes(rsa_public.marshal()))


def test_a_certification_for_another_enrollment_is_refused(tpm: SoftTpm) -> None:
    with pytest.raises(AttestationError, match="made for another request"):
        verify(tpm, tpm.request_public, enrollment="f" * 32)


def test_a_certification_by_another_ak_is_refused(tpm: SoftTpm) -> None:
    other = SoftTpm(request=tpm.request)
    public = tpm.request_public
    attest, signature = other.certify(public, enrollment_qualifying(ENROLLMENT))
    with pytest.raises(AttestationError, match="not signed by this host's AK"):
        verify_request_key(
            ak=check_ak_public(tpm.ak_public),
            public=public,
            attest=attest,
            signature=signature,
            enrollment_id=ENROLLMENT,
        )


def test_a_certification_of_another_key_is_refused(tpm: SoftTpm) -> None:
    """The AK certified the TPM's key; the host sends a software key of its own with it."""
    attest, signature = tpm.certify(tpm.request_public, enrollment_qualifying(ENROLLMENT))
    software = ecc_public(request_key_template(bytes(32)), ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(AttestationError, match="names another key"):
        verify_request_key(
            ak=check_ak_public(tpm.ak_public),
            public=software,
            attest=attest,
            signature=signature,
            enrollment_id=ENROLLMENT,
        )


@pytest.fixture(scope="module")
def point(tpm: SoftTpm) -> bytes:
    return verify(tpm, tpm.request_public)


def test_an_unsigned_request_is_refused(point: bytes) -> None:
    """The thief has the client certificate and key, not the TPM."""
    with pytest.raises(AttestationError, match="has no Trusthook-Request-Signature") as refused:
        check(point, None)
    assert refused.value.check == "request_signature"


def test_a_signature_by_another_key_is_refused(point: bytes) -> None:
    forged = ecdsa_signature(
        ec.generate_private_key(ec.SECP256R1()), request_digest("POST", PATH, BODY)
    )
    with pytest.raises(AttestationError, match="not signed by this host's TPM request key"):
        check(point, header(forged))


def test_a_signature_moved_to_another_body_or_path_is_refused(tpm: SoftTpm, point: bytes) -> None:
    signed = header(tpm.sign_request(request_digest("POST", PATH, BODY)))
    for path, body in ((PATH, BODY + b" "), ("/v1/releases", BODY)):
        with pytest.raises(AttestationError, match="was altered after signing"):
            check(point, signed, path=path, body=body)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64!", "is not base64"),
        (header(b"\x00\x14\x00\x0b" + bytes(4)), "not ECDSA with SHA-256"),
        (header(b"\x00\x18\x00\x0b\x00\x21" + bytes(33) + b"\x00\x00"), "field over 32"),
        (header(b"\x00\x18\x00\x0b\x00\x01"), "truncated"),
    ],
)
def test_a_malformed_signature_is_refused(point: bytes, value: str, message: str) -> None:
    with pytest.raises(AttestationError, match=message) as refused:
        check(point, value)
    assert refused.value.check == "request_signature"


def test_a_host_enrolled_without_a_request_key_must_enroll_again() -> None:
    with pytest.raises(AttestationError, match="enroll again"):
        check(b"", "AAAA")
