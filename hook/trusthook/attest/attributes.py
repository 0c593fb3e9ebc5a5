"""Host attributes bound to the host's TPM (docs/attestation.md §12).

The operator assigns a host its group and attributes (location, tags) on the server. The server
turns them into a *tag*: ``b"THA1"`` ‖ the host id (the SHA-256 of its EK certificate, 32 bytes)
‖ SHA-256 of the canonical JSON ``{"attributes": {...}, "group": "..."}``, 68 bytes. The agent
writes the tag the server issued into an owner-authorized NV index of its TPM, and every piece
of evidence carries a TPM2_NV_Certify of that index by the AK with the server's nonce. The server
checks that the certified contents are the tag it issues now: an index rewritten on the host, or
one copied from another host's TPM, is a named ``attributes`` reason.

Pure: bytes in, ``None`` out or ``AttestationError("attributes", ...)``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from tpm2_pytss.constants import TPM2_ALG, TPMA_NV
from tpm2_pytss.types import TPMS_NV_PUBLIC

from trusthook.attest.identity import AttestationKey
from trusthook.attest.tpmwire import parse_nv_certify_info, parse_rsassa_signature
from trusthook.common.jcs import canonicalize
from trusthook.errors import AttestationError

CHECK = "attributes"
# In the TPM owner's range (0x01000000-0x013FFFFF) of TCG's registry of reserved handles.
NV_INDEX = 0x013F7468
TAG_MAGIC = b"THA1"
TAG_SIZE = len(TAG_MAGIC) + 32 + 32
# Only the owner (hierarchy auth) writes or reads it; no dictionary-attack lockout on a misread.
NV_ATTRIBUTES = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA


@dataclass(frozen=True, slots=True, kw_only=True)
class NvCertification:
    """A TPM2_NV_Certify as the TPM answered it: the signed TPMS_ATTEST and its signature."""

    attest: bytes
    signature: bytes


def attributes_tag(host_id: str, group: str, attributes: Mapping[str, str]) -> bytes:
    """The 68-byte tag the server issues for a host with this group and these attributes."""
    host = bytes.fromhex(host_id)
    if len(host) != 32:
        raise ValueError(f"a host id is 64 hexadecimal digits, got {len(host_id)} characters")
    assigned = canonicalize({"attributes": dict(attributes), "group": group})
    return TAG_MAGIC + host + hashlib.sha256(assigned).digest()


def nv_public(*, written: bool) -> TPMS_NV_PUBLIC:
    """The index's public area as trusthook defines it; ``written`` once it has been written
    (TPMA_NV_WRITTEN is part of its name)."""
    return TPMS_NV_PUBLIC(
        nvIndex=NV_INDEX,
        nameAlg=TPM2_ALG.SHA256,
        attributes=NV_ATTRIBUTES | (TPMA_NV.WRITTEN if written else 0),
        dataSize=TAG_SIZE,
    )


@functools.cache  # a constant: marshaling it through tpm2-pytss costs more than the check
def index_name() -> bytes:
    """The TPM name of the written index: nameAlg ‖ SHA-256(TPMS_NV_PUBLIC)."""
    area = nv_public(written=True).marshal()
    return int(TPM2_ALG.SHA256).to_bytes(2, "big") + hashlib.sha256(area).digest()


def verify_attributes(
    *,
    ak: AttestationKey,
    nonce: bytes,
    certification: NvCertification | None,
    expected: bytes,
) -> None:
    """Return if ``certification`` is the AK's TPM2_NV_Certify, made for ``nonce``, of the
    whole attribute index holding ``expected``; AttestationError("attributes") otherwise."""
    if certification is None:
        raise AttestationError(
            CHECK,
            "the evidence carries no certification of the host attribute index (the agent is"
            " older than the server?)",
        )
    try:
        ak.public_key().verify(
            parse_rsassa_signature(certification.signature),
            certification.attest,
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except InvalidSignature:
        raise AttestationError(
            CHECK, "the certification of the host attribute index is not signed by this host's AK"
        ) from None
    except AttestationError as e:
        raise AttestationError(CHECK, e.message, expected=e.expected, got=e.got) from None
    info = parse_nv_certify_info(certification.attest, CHECK)
    if not hmac.compare_digest(info.extra_data, nonce):
        raise AttestationError(
            CHECK,
            "the certification of the host attribute index was made for another nonce",
        )
    if info.index_name != index_name():
        raise AttestationError(
            CHECK,
            f"the certified NV index is not trusthook's attribute index {NV_INDEX:#010x} as"
            " trusthook defines it (another index, or redefined with other attributes)",
            expected=index_name().hex(),
            got=info.index_name.hex(),
        )
    contents = info.contents
    if info.offset != 0 or len(contents) != TAG_SIZE:
        raise AttestationError(
            CHECK,
            "the certification does not cover the whole attribute index",
            expected=f"offset 0, {TAG_SIZE} bytes",
            got=f"offset {info.offset}, {len(contents)} bytes",
        )
    if hmac.compare_digest(contents, expected):
        return
    raise AttestationError(
        CHECK, _mismatch(contents, expected), expected=expected.hex(), got=contents.hex()
    )


def _mismatch(contents: bytes, expected: bytes) -> str:
    """What differs between the certified tag and the one the server issues."""
    host = slice(len(TAG_MAGIC), len(TAG_MAGIC) + 32)
    if contents[: len(TAG_MAGIC)] != TAG_MAGIC:
        return "the host attribute index holds no trusthook tag: it was rewritten on the host"
    if contents[host] != expected[host]:
        return (
            f"the host attribute index was written for another host ({contents[host].hex()[:16]}…):"
            " its contents were copied from another host's TPM"
        )
    return (
        "the host attribute index holds other attributes than the operator assigned: it was"
        " rewritten on the host (once it is known good, an operator approves its"
        " re-enrollment, which writes it again)"
    )
