"""The request key: a TPM-resident signing key with which the agent signs its requests, so the
host's mTLS key (a file) alone cannot speak for the host (docs/attestation.md §10).

At enrollment the host's AK certifies it (TPM2_Certify, qualifying data derived from the
enrollment id); the server keeps its public point. Every attestation and release request then
carries ``Trusthook-Request-Signature``: the key's ECDSA signature over ``request_digest`` of
the request's method, path and exact body bytes. The body holds the server's single-use nonce,
so a signature is worth one request. Pure: bytes in, a key or None out, or
``AttestationError("request_key" | "request_signature", ...)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPMA_OBJECT

from trusthook.attest.certify import verify_certification
from trusthook.attest.identity import AttestationKey
from trusthook.attest.tpmwire import parse_ecdsa_signature
from trusthook.errors import AttestationError

KEY_CHECK = "request_key"
SIGNATURE_CHECK = "request_signature"
SIGNATURE_HEADER = "Trusthook-Request-Signature"
_DOMAIN = b"trusthook request v1\0"
_QUALIFYING_DOMAIN = b"trusthook request key\0"
REQUIRED = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.SIGN_ENCRYPT
)
FORBIDDEN = TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT
P256_BYTES = 32


def request_digest(method: str, path: str, body: bytes) -> bytes:
    """What the request key signs for one request: SHA-256 of the domain string, the method,
    a NUL, the path, a NUL and the body exactly as sent."""
    head = _DOMAIN + method.encode("ascii") + b"\0" + path.encode("ascii") + b"\0"
    return hashlib.sha256(head + body).digest()


def enrollment_qualifying(enrollment_id: str) -> bytes:
    """The qualifying data of the request key's certification in enrollment ``enrollment_id``:
    it ties the certification to this enrollment (the id is the server's fresh random value)."""
    return hashlib.sha256(_QUALIFYING_DOMAIN + enrollment_id.encode("ascii")).digest()


def verify_request_key(
    *, ak: AttestationKey, public: bytes, attest: bytes, signature: bytes, enrollment_id: str
) -> bytes:
    """The request key's public point (uncompressed SEC1, 65 bytes, what the server stores)
    once the AK's certification of it in this enrollment checks out and its public area is a
    P-256 ECDSA-SHA256 signing key that cannot leave the TPM."""
    area = verify_certification(
        ak=ak,
        public=public,
        attest=attest,
        signature=signature,
        qualifying=enrollment_qualifying(enrollment_id),
        check=KEY_CHECK,
        what="request key",
    )
    return _check_area(area)


def _check_area(area: Any) -> bytes:
    if int(area.type) != TPM2_ALG.ECC:
        raise AttestationError(KEY_CHECK, "the request key is not an ECC key")
    attributes = int(area.objectAttributes)
    if attributes & REQUIRED != REQUIRED or attributes & FORBIDDEN:
        raise AttestationError(
            KEY_CHECK,
            "the request key may leave its TPM or is not a plain signing key",
            expected="fixedTPM|fixedParent|sensitiveDataOrigin|sign, not restricted or decrypt",
            got=f"attributes {attributes:#010x}",
        )
    detail = area.parameters.eccDetail
    if int(detail.curveID) != TPM2_ECC.NIST_P256:
        raise AttestationError(
            KEY_CHECK,
            "the request key is not on curve P-256",
            expected=f"curve {int(TPM2_ECC.NIST_P256):#06x}",
            got=f"curve {int(detail.curveID):#06x}",
        )
    scheme = (int(detail.scheme.scheme), int(detail.scheme.details.ecdsa.hashAlg))
    if scheme != (TPM2_ALG.ECDSA, TPM2_ALG.SHA256):
        raise AttestationError(
            KEY_CHECK,
            "the request key's scheme is not ECDSA with SHA-256: the TPM would sign with others",
            expected="ecdsa-sha256",
            got=f"scheme {scheme[0]:#06x}, hash {scheme[1]:#06x}",
        )
    x, y = bytes(area.unique.ecc.x), bytes(area.unique.ecc.y)
    if len(x) != P256_BYTES or len(y) != P256_BYTES:
        raise AttestationError(KEY_CHECK, "the request key's point is not 32+32 bytes")
    point = b"\x04" + x + y
    _public_key(point)  # on the curve
    return point


@lru_cache(maxsize=4096)
def _public_key(point: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise AttestationError(KEY_CHECK, "the request key's point is not on P-256") from None


def check_request_signature(
    point: bytes, *, method: str, path: str, body: bytes, header: str | None
) -> None:
    """Return if ``header`` (the base64 TPMT_SIGNATURE sent as SIGNATURE_HEADER) is the request
    key's signature over this request; AttestationError("request_signature") otherwise."""
    if not point:
        raise AttestationError(
            SIGNATURE_CHECK,
            "this host enrolled without a request key; enroll again (--reenroll)",
        )
    if header is None:
        raise AttestationError(
            SIGNATURE_CHECK,
            f"the request has no {SIGNATURE_HEADER}: requests of a host must be signed by its"
            " TPM request key (the client certificate alone is not enough)",
        )
    try:
        raw = base64.b64decode(header, validate=True)
    except (binascii.Error, ValueError):
        raise AttestationError(SIGNATURE_CHECK, f"{SIGNATURE_HEADER} is not base64") from None
    r, s = parse_ecdsa_signature(raw, SIGNATURE_CHECK)
    digest = request_digest(method, path, body)
    try:
        _public_key(point).verify(
            encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256()))
        )
    except InvalidSignature:
        raise AttestationError(
            SIGNATURE_CHECK,
            "the request is not signed by this host's TPM request key (or was altered after"
            " signing)",
        ) from None
