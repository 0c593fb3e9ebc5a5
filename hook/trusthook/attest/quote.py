"""Verify a TPM2_Quote with no TPM: signature, nonce, PCR selection and digest, clock info.

Pure: marshaled TPM structures in (``TPMS_ATTEST`` and ``TPMT_SIGNATURE`` as the TPM produced
them), a ``VerifiedQuote`` out, or ``AttestationError`` naming the check that failed. The
signature is checked before the signed bytes are parsed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from trusthook.attest.identity import AttestationKey
from trusthook.attest.tpmwire import (
    TPM_ALG_SHA256,
    QuoteInfo,
    parse_quote_info,
    parse_rsassa_signature,
)
from trusthook.errors import AttestationError

PCR_SIZE = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockInfo:
    """``TPMS_CLOCK_INFO``: reset and restart counts, and whether the clock is trustworthy."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedQuote:
    """A quote whose signature, nonce and PCR digest checked out."""

    pcr_values: Mapping[int, bytes]
    clock: ClockInfo


def _selected(info: QuoteInfo) -> tuple[int, ...]:
    if len(info.selection) != 1 or info.selection[0][0] != TPM_ALG_SHA256:
        raise AttestationError("pcr_selection", "the quote must cover exactly the SHA-256 bank")
    bitmap = info.selection[0][1]
    return tuple(i for i in range(8 * len(bitmap)) if bitmap[i // 8] >> (i % 8) & 1)


def verify_quote(
    *,
    key: AttestationKey,
    attest: bytes,
    signature: bytes,
    nonce: bytes,
    pcrs: Sequence[int],
    pcr_values: Mapping[int, bytes],
) -> VerifiedQuote:
    """Check that ``key`` signed ``attest``, a quote over ``pcrs`` with ``nonce`` as qualifying
    data whose PCR digest is that of ``pcr_values``; raise AttestationError otherwise."""
    sig = parse_rsassa_signature(signature)
    try:
        key.public_key().verify(
            sig,
            attest,
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except InvalidSignature:
        raise AttestationError(
            "signature", "the quote is not signed by this host's enrolled attestation key"
        ) from None
    parsed = parse_quote_info(attest)
    got_nonce = parsed.extra_data
    if got_nonce != nonce:
        raise AttestationError(
            "nonce",
            "the quote's qualifying data is not the nonce issued for this attestation",
            expected=hashlib.sha256(nonce).hexdigest()[:16],
            got=hashlib.sha256(got_nonce).hexdigest()[:16],
        )
    selected = _selected(parsed)
    wanted = tuple(sorted(pcrs))
    if selected != wanted:
        raise AttestationError(
            "pcr_selection",
            "the quote covers other PCRs than were asked for",
            expected=",".join(map(str, wanted)),
            got=",".join(map(str, selected)),
        )
    if sorted(pcr_values) != list(wanted):
        raise AttestationError(
            "pcr_values",
            "the PCR values sent are not those of the quoted PCRs",
            expected=",".join(map(str, wanted)),
            got=",".join(map(str, sorted(pcr_values))),
        )
    for index in wanted:
        if len(pcr_values[index]) != PCR_SIZE:
            raise AttestationError("pcr_values", f"PCR {index} value is not {PCR_SIZE} bytes")
    digest = hashlib.sha256(b"".join(pcr_values[i] for i in wanted)).digest()
    quoted = parsed.pcr_digest
    if digest != quoted:
        raise AttestationError(
            "pcr_digest",
            "the PCR values sent do not hash to the digest the TPM quoted",
            expected=quoted.hex(),
            got=digest.hex(),
        )
    return VerifiedQuote(
        pcr_values=dict(pcr_values),
        clock=ClockInfo(
            clock=parsed.clock,
            reset_count=parsed.reset_count,
            restart_count=parsed.restart_count,
            safe=bool(parsed.safe),
        ),
    )
