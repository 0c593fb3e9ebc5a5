"""C2SP tlog-checkpoint: a log's signed tree head, as a signed note (``trusthook.audit.note``)
whose text is the origin, the tree size in decimal, the base64 root hash and optional
extension lines. Pure: no I/O.

Our logs sign with a key named after the origin, and ``open_checkpoint`` insists on it, so a
checkpoint of one log is never taken for another's. Witnesses add cosignature lines
(``trusthook.audit.witness``), which ``open_checkpoint`` leaves alone.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from trusthook.audit.merkle import HASH_SIZE, MAX_SIZE
from trusthook.audit.note import NoteSigner, VerifierKey, open_note, sign_note
from trusthook.errors import AuditLogError, AuditVerificationError

_DECIMAL = re.compile(r"0|[1-9][0-9]*")


def _check_line(line: str, what: str) -> None:
    if not line or any(ord(c) < 0x20 for c in line):
        got = "an empty line" if not line else "a control character"
        raise AuditLogError(f"checkpoint {what} got {got}, expected a non-empty line")


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A tree head: the log (``origin``), its size and root hash, opaque extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if isinstance(self.size, bool) or not 0 <= self.size <= MAX_SIZE:
            raise AuditLogError(f"checkpoint tree size got {self.size}, expected 0..{MAX_SIZE}")
        if len(self.root) != HASH_SIZE:
            raise AuditLogError(f"checkpoint root hash got {len(self.root)} bytes, expected 32")
        for i, line in enumerate(self.extensions):
            _check_line(line, f"extension line {i + 1}")

    def text(self) -> str:
        """The note text: one line each, each ending in a newline."""
        lines = (
            self.origin,
            str(self.size),
            base64.b64encode(self.root).decode(),
            *self.extensions,
        )
        return "".join(f"{line}\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The checkpoint in a note text, refusing anything but the exact format."""
        if not text.endswith("\n"):
            raise AuditLogError("checkpoint got no final newline, expected one")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise AuditLogError(
                f"checkpoint got {len(lines)} lines, expected origin, tree size and root hash"
            )
        for i, line in enumerate(lines):
            _check_line(line, f"line {i + 1}")
        origin, size, root = lines[:3]
        if not _DECIMAL.fullmatch(size) or int(size) > MAX_SIZE:
            raise AuditLogError(
                f"checkpoint tree size got {size[:24]!r}, expected a decimal 0..{MAX_SIZE}"
                " without leading zeros"
            )
        try:
            digest = base64.b64decode(root.encode("ascii"), validate=True)
        except (UnicodeEncodeError, ValueError):
            raise AuditLogError(
                f"checkpoint root hash got {root[:48]!r}, expected base64"
            ) from None
        if len(digest) != HASH_SIZE or base64.b64encode(digest).decode() != root:
            raise AuditLogError(
                f"checkpoint root hash got {root[:48]!r}, expected the base64 of 32 bytes"
            )
        return cls(origin=origin, size=int(size), root=digest, extensions=tuple(lines[3:]))


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> str:
    """The signed note of ``checkpoint``, by the log's ``signer`` (named after the origin)."""
    if signer.name != checkpoint.origin:
        raise AuditLogError(
            f"checkpoint signer got key name {signer.name!r}, expected the origin"
            f" {checkpoint.origin!r}"
        )
    return sign_note(checkpoint.text(), [signer])


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenedCheckpoint:
    """A checkpoint whose log signature verified."""

    checkpoint: Checkpoint
    note: str  # the signed note, verbatim (with any other signature lines: witnesses')


def open_checkpoint(note: str | bytes, log_key: VerifierKey) -> OpenedCheckpoint:
    """The checkpoint in signed note ``note``, refused unless ``log_key`` signed it and its
    origin is the key's name; other keys' lines (a witness's cosignature, docs/audit.md
    "Witness") are left to whoever knows those keys."""
    opened = open_note(note, [log_key])
    if log_key not in opened.verified_by:
        signed = ", ".join(k.label for k in opened.verified_by)
        raise AuditVerificationError(
            f"checkpoint is signed by {signed} only, expected the log key {log_key.label}"
        )
    checkpoint = Checkpoint.parse(opened.text)
    if checkpoint.origin != log_key.name:
        raise AuditVerificationError(
            f"checkpoint origin got {checkpoint.origin[:64]!r}, expected the log key's name"
            f" {log_key.name!r}"
        )
    raw = note.decode() if isinstance(note, bytes) else note  # open_note checked the UTF-8
    return OpenedCheckpoint(checkpoint=checkpoint, note=raw)
