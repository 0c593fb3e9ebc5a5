"""Attestation: the pure verification core shared by the server and the agent.

Public API (what a second implementation or an embedding tool calls): the names in ``__all__``.
Bytes in, typed objects or ``trusthook.errors`` out; no I/O, no TPM. Everything else in
trusthook is internal and may change.
"""

from trusthook.attest.appraise import Appraisal, Evidence, Expectations, HostState, appraise
from trusthook.attest.bindkey import verify_bind_key
from trusthook.attest.identity import (
    AttestationKey,
    check_ak_public,
    check_ek_public,
    load_ca_bundle,
    make_credential,
    verify_ek_certificate,
)
from trusthook.attest.quote import ClockInfo, VerifiedQuote, verify_quote
from trusthook.attest.tpmwire import QuoteInfo, parse_quote_info, parse_rsassa_signature
from trusthook.attest.verdict import Reason

__all__ = [
    "Appraisal",
    "AttestationKey",
    "ClockInfo",
    "Evidence",
    "Expectations",
    "HostState",
    "QuoteInfo",
    "Reason",
    "VerifiedQuote",
    "appraise",
    "check_ak_public",
    "check_ek_public",
    "load_ca_bundle",
    "make_credential",
    "parse_quote_info",
    "parse_rsassa_signature",
    "verify_bind_key",
    "verify_ek_certificate",
    "verify_quote",
]
