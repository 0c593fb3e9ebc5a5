"""Admission: which host group an EK belongs to, decided by an operator, never by the host.

The server keeps one admission record per EK, keyed by the EK's SHA-256 (the host id: SHA-256
of the DER SubjectPublicKeyInfo of the EK certificate's key). A host's request names no group;
the group it attests and receives keys under is the one in this record. States
(docs/attestation.md §3):

    (unknown) --hosts admit-------------------------------> admitted   operator pre-registers
    (unknown) --an enrollment attempt---------------------> pending    (auto_admit: admitted)
    pending   --hosts approve --group G-------------------> admitted
    pending   --hosts reject----------------------------> rejected
    admitted  --re-enrollment of a host a check refused---> pending
    admitted, pending --hosts revoke----------------------> revoked
    pending, rejected, revoked --hosts admit--------------> admitted

Only ``admitted`` enrolls, attests and receives keys. Pure: records and messages, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from trusthook.common.clock import iso_from_timestamp
from trusthook.errors import AdmissionError, UsageError

AUTO_ADMIT = "auto_admit"  # who decided an admission that [admission] auto_admit made
HOST = "host"  # who put a record in pending: the host's own enrollment attempt
_ATTRIBUTE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_TEXT = 500


class AdmissionState(StrEnum):
    ADMITTED = "admitted"
    PENDING = "pending"
    REVOKED = "revoked"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """One EK's admission record: its group and state, and who decided it, when and why."""

    ek_sha256: str
    state: AdmissionState
    group: str | None  # None until an operator (or auto_admit) first admits it
    attributes: Mapping[str, str]
    ek_cert_serial: str | None  # hex; recorded from the certificate the operator or host gave
    ek_cert_issuer: str | None  # RFC 4514
    hostname: str | None  # as the host named itself in its last enrollment attempt
    note: str | None  # the host's note to the operator with that attempt
    requested_at: float | None  # when that attempt was queued
    decided_by: str
    decided_at: float
    reason: str
    reenroll_grant: bool  # an operator let the next re-enrollment of this enrolled host through
    version: int

    def refusal(self, *, enrolled: bool) -> AdmissionError:
        """What a host is told when it is not admitted (``enrolled``: it has an enrollment)."""
        host = self.ek_sha256
        at = iso_from_timestamp(self.decided_at)
        if self.state is AdmissionState.PENDING:
            waiting = (
                f"re-enrollment of host {host} awaits operator approval: a check refused this"
                " host, and re-enrolling does not clear that"
                if enrolled
                else f"host {host} awaits operator approval: its EK is not admitted to a host group"
            )
            since = iso_from_timestamp(self.requested_at or self.decided_at)
            return AdmissionError(
                "pending",
                f"{waiting} (since {since}); an operator approves it with 'trusthook server hosts"
                f" approve {host} --group GROUP' (or rejects it), then enroll again",
            )
        if self.state is AdmissionState.REJECTED:
            return AdmissionError(
                "rejected",
                f"host {host} was refused admission at {at}: {self.reason}; only an operator can"
                " admit it ('trusthook server hosts admit')",
            )
        return AdmissionError(
            "revoked",
            f"host {host} was revoked at {at}: {self.reason}; its client certificate is no"
            " longer accepted and its status is untrusted; only an operator can admit it again",
        )


def ek_sha256_of(certificate: x509.Certificate) -> str:
    """An EK's name: SHA-256 of the DER SubjectPublicKeyInfo of the EK certificate's key.

    The key, not the marshaled TPM2B_PUBLIC the host sends: that encoding is not unique (an
    RSA exponent may be written as 0 or as 65537), and a second encoding of one TPM's EK must
    not be a second, unknown EK that waits for, or is auto-admitted to, a fresh admission."""
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def check_text(value: str, what: str, *, empty: bool = False) -> str:
    """A line an operator or a host wrote, once it is short, one line and has no control
    characters (it is printed on operators' terminals); UsageError otherwise."""
    if not value.strip() and not empty:
        raise UsageError(f"{what}: got an empty text, expected a few words")
    if len(value) > MAX_TEXT or _CONTROL.search(value):
        raise UsageError(
            f"{what}: got {len(value)} characters, expected one line of at most {MAX_TEXT}"
            " printable characters"
        )
    return value


def parse_attributes(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs (``--attribute``) as a map; UsageError for a malformed one."""
    attributes: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _ATTRIBUTE_KEY.fullmatch(key):
            raise UsageError(
                f"--attribute: got {pair[:80]!r}, expected KEY=VALUE with KEY matching"
                f" {_ATTRIBUTE_KEY.pattern}"
            )
        if key in attributes:
            raise UsageError(f"--attribute: {key!r} given twice")
        attributes[key] = check_text(value, f"--attribute {key}", empty=True)
    return attributes
