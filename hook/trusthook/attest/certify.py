"""Verify a TPM2_Certify with no TPM: the host's AK signed a ``TPMS_ATTEST`` of type
``TPM_ST_ATTEST_CERTIFY`` that names a key and carries the verifier's qualifying data.

A certification says the certified key lives in the same TPM as the AK; what kind of key it is
comes from its public area, which the caller checks (``bindkey`` for the release key,
``requestkey`` for the request key). Pure: bytes in, the key's public area out, or
``AttestationError(check, ...)`` with the caller's check name.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import TPM2_ALG
from tpm2_pytss.types import TPM2B_PUBLIC, TPMS_ATTEST

from trusthook.attest.identity import AttestationKey
from trusthook.attest.tpmwire import TPM_GENERATED_VALUE, parse_rsassa_signature
from trusthook.errors import AttestationError

TPM_ST_ATTEST_CERTIFY = 0x8017


def unmarshal_exact(
    kind: type[TPM2B_PUBLIC] | type[TPMS_ATTEST], data: bytes, what: str, check: str
) -> Any:
    """``kind`` unmarshaled from all of ``data``; AttestationError(check) otherwise."""
    try:
        value, used = kind.unmarshal(data)
    except TSS2_Exception as e:
        raise AttestationError(check, f"the {what} is malformed: {e}") from None
    if used != len(data):
        raise AttestationError(check, f"the {what} has {len(data) - used} trailing bytes")
    return value


def verify_certification(
    *,
    ak: AttestationKey,
    public: bytes,
    attest: bytes,
    signature: bytes,
    qualifying: bytes,
    check: str,
    what: str,
) -> Any:
    """The public area (``TPMT_PUBLIC``) of the key in ``public`` (a marshaled TPM2B_PUBLIC)
    once ``attest`` checks out as the AK's TPM2_Certify of exactly that key with
    ``qualifying`` as its qualifying data. ``what`` names the key in messages."""
    try:
        ak.public_key().verify(
            parse_rsassa_signature(signature), attest, padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        raise AttestationError(
            check, f"the certification of the {what} is not signed by this host's AK"
        ) from None
    except AttestationError as e:
        raise AttestationError(check, e.message, expected=e.expected, got=e.got) from None
    info = unmarshal_exact(TPMS_ATTEST, attest, f"certification of the {what}", check)
    if int(info.magic) != TPM_GENERATED_VALUE or int(info.type) != TPM_ST_ATTEST_CERTIFY:
        raise AttestationError(check, f"the signed structure for the {what} is not a TPM2_Certify")
    if not hmac.compare_digest(bytes(info.extraData), qualifying):
        raise AttestationError(
            check,
            f"the certification of the {what} does not carry this exchange's qualifying data"
            " (it was made for another request)",
        )
    key = unmarshal_exact(TPM2B_PUBLIC, public, f"{what} public area", check)
    area = key.publicArea
    if int(area.nameAlg) != TPM2_ALG.SHA256:
        raise AttestationError(check, f"the {what}'s name algorithm is not SHA-256")
    name = int(TPM2_ALG.SHA256).to_bytes(2, "big") + hashlib.sha256(area.marshal()).digest()
    if bytes(info.attested.certify.name) != name:
        raise AttestationError(
            check, f"the certification names another key than the {what} sent with it"
        )
    return area
