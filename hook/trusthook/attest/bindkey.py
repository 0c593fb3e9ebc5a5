"""Verify a host's release key with no TPM: a TPM2_Certify by the host's AK, bound to a nonce.

Released image keys are encrypted to this key, so the server must know it cannot leave the TPM
and that only the agent can use it: the AK (already proven to share a TPM with the EK at
enrollment) signs a ``TPMS_ATTEST`` of type ``TPM_ST_ATTEST_CERTIFY`` naming the key, with the
release's nonce as qualifying data; the key's public area must be an RSA-2048 decryption key
with fixedTPM, fixedParent and sensitiveDataOrigin set, restricted and sign clear, RSA-OAEP-SHA256
as its scheme, userWithAuth clear and ``RELEASE_KEY_POLICY`` as its authPolicy
(docs/attestation.md, "The release key"). Pure: bytes in, a ``cryptography`` key out, or
``AttestationError("release_key", ...)``.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from tpm2_pytss.constants import TPM2_ALG, TPM2_CC, TPMA_OBJECT

from trusthook.attest.certify import verify_certification
from trusthook.attest.identity import AttestationKey
from trusthook.errors import AttestationError

CHECK = "release_key"
REQUIRED = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
FORBIDDEN = TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT
RSA_BITS = 2048


def _policy_digest() -> bytes:
    """The authPolicy of the release key, as a trial session computes it (TPM 2.0 Part 3,
    TPM2_PolicyAuthValue and TPM2_PolicyCommandCode): from a zero SHA-256 digest, PolicyAuthValue
    (the key's auth value, which only the agent holds, must be proven), then
    PolicyCommandCode(TPM2_RSA_Decrypt) (and only for decryption)."""
    digest = bytes(32)
    digest = hashlib.sha256(digest + struct.pack(">I", TPM2_CC.PolicyAuthValue)).digest()
    step = struct.pack(">II", TPM2_CC.PolicyCommandCode, TPM2_CC.RSA_Decrypt)
    return hashlib.sha256(digest + step).digest()


RELEASE_KEY_POLICY = _policy_digest()


def _fail(message: str, *, expected: str | None = None, got: str | None = None) -> AttestationError:
    return AttestationError(CHECK, message, expected=expected, got=got)


def verify_bind_key(
    *, ak: AttestationKey, public: bytes, attest: bytes, signature: bytes, nonce: bytes
) -> rsa.RSAPublicKey:
    """The release key in ``public`` once the AK's certification of it, with this release's
    nonce as qualifying data, checks out."""
    area = verify_certification(
        ak=ak,
        public=public,
        attest=attest,
        signature=signature,
        qualifying=nonce,
        check=CHECK,
        what="release key",
    )
    return _check_area(area)


def _check_area(area: Any) -> rsa.RSAPublicKey:
    if int(area.type) != TPM2_ALG.RSA:
        raise _fail("the release key is not an RSA key")
    attributes = int(area.objectAttributes)
    if (
        attributes & REQUIRED != REQUIRED
        or attributes & FORBIDDEN
        or not (attributes & TPMA_OBJECT.DECRYPT)
    ):
        raise _fail(
            "the release key may leave its TPM or is not a plain decryption key",
            expected="fixedTPM|fixedParent|sensitiveDataOrigin|decrypt, not restricted or sign",
            got=f"attributes {attributes:#010x}",
        )
    detail = area.parameters.rsaDetail
    scheme = (int(detail.scheme.scheme), int(detail.scheme.details.oaep.hashAlg))
    if scheme != (TPM2_ALG.OAEP, TPM2_ALG.SHA256):
        raise _fail("the release key's scheme is not RSA-OAEP with SHA-256")
    modulus = bytes(area.unique.rsa)
    if int(detail.keyBits) != RSA_BITS or len(modulus) != RSA_BITS // 8:
        raise _fail(f"the release key is not RSA-{RSA_BITS}")
    if attributes & TPMA_OBJECT.USERWITHAUTH:
        raise _fail(
            "the release key can be used with its auth value alone, outside its policy",
            expected="userWithAuth clear",
            got=f"attributes {attributes:#010x}",
        )
    policy = bytes(area.authPolicy)
    if policy != RELEASE_KEY_POLICY:
        raise _fail(
            "the release key's policy is not PolicyAuthValue then PolicyCommandCode(RSA_Decrypt):"
            " a TPM user other than the agent could use it",
            expected=RELEASE_KEY_POLICY.hex(),
            got=policy.hex() or "no policy",
        )
    exponent = int(detail.exponent) or 65537
    try:
        return rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
    except ValueError as e:  # an even modulus or exponent, an exponent below 3
        raise _fail(f"the release key is not a valid RSA public key ({e})") from None
