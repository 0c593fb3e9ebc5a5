"""C2SP signed-note v1 with Ed25519 keys (signature type 0x01): verifier keys
``name+keyid+base64(0x01 || public key)``, signer keys ``PRIVATE+KEY+name+keyid+base64(0x01 ||
seed)`` (golang.org/x/mod/sumdb/note's encodings), signing, cosigning (one more signature line),
strict parsing and verification. Pure: no I/O.

A note is text ending in a newline, a blank line, and one or more lines
``— <key name> base64(key id || signature)``. Verification follows the spec: signatures by
unknown keys are ignored, a known key's signature that fails refuses the whole note, and a
note no known key signed is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from trusthook.errors import AuditLogError, AuditVerificationError

ED25519 = 0x01  # signature type byte
KEY_SIZE = 32
SIGNATURE_SIZE = 64
MAX_NOTE_BYTES = 1 << 16
MAX_SIGNATURES = 64  # the spec asks verifiers to accept at least 16
_DASH = "\u2014 "  # em dash, space: the start of a signature line
_PRIVATE = "PRIVATE+KEY+"


def strict_b64(text: str, what: str) -> bytes:
    """Standard base64 in its one canonical form (what note signatures and keys use)."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise AuditLogError(f"{what} is not valid base64") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise AuditLogError(f"{what} is not canonical base64")
    return data


def check_key_name(name: str, what: str = "key name") -> None:
    """Key names are non-empty UTF-8, without Unicode spaces, '+' or control characters."""
    bad = next(
        (c for c in name if c.isspace() or c == "+" or ord(c) < 0x20 or 0xD800 <= ord(c) < 0xE000),
        None,
    )
    if not name or bad is not None:
        got = "nothing" if not name else f"{name[:40]!r} (holding {bad!r})"
        raise AuditLogError(
            f"{what} got {got}, expected no spaces, '+', control characters or lone surrogates"
        )


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key id: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


@dataclass(frozen=True, slots=True, repr=False)
class VerifierKey:
    """An Ed25519 note verifier key: who signs (``name``) and with which public key."""

    name: str
    public_key: bytes
    key_id: bytes = field(init=False, compare=False)  # from name and key, at construction

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.public_key) != KEY_SIZE:
            raise AuditLogError(f"public key got {len(self.public_key)} bytes, expected 32")
        object.__setattr__(self, "key_id", key_id(self.name, self.public_key))

    @property
    def label(self) -> str:
        """``name+keyid``, how messages name the key."""
        return f"{self.name}+{self.key_id.hex()}"

    def encode(self) -> str:
        return f"{self.label}+{base64.b64encode(bytes([ED25519]) + self.public_key).decode()}"

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """A verifier key ``name+keyid+base64(0x01 || key)``, its key id checked."""
        name, sep1, rest = text.partition("+")
        hex_id, sep2, data = rest.partition("+")
        if not (sep1 and sep2):
            raise AuditLogError("verifier key got no '+' separators, expected name+keyid+key")
        check_key_name(name, "verifier key name")
        if len(hex_id) != 8 or not all(c in "0123456789abcdef" for c in hex_id):
            raise AuditLogError(f"verifier key id got {hex_id[:16]!r}, expected 8 hex digits")
        raw = strict_b64(data, "verifier key")
        if len(raw) != 1 + KEY_SIZE or raw[0] != ED25519:
            raise AuditLogError(
                "verifier key got a key of another type or size, expected Ed25519 (type 0x01)"
            )
        key = cls(name, raw[1:])
        if key.key_id.hex() != hex_id:
            raise AuditLogError(
                f"verifier key id got {hex_id}, expected {key.key_id.hex()} for its name and key"
            )
        return key

    def __repr__(self) -> str:
        return f"VerifierKey({self.encode()!r})"

    def verify(self, text: bytes, signature: bytes) -> None:
        """``signature`` (without the key id) is this key's over ``text``; else refused."""
        refused = AuditVerificationError(f"note signature by {self.label} does not verify")
        if len(signature) != SIGNATURE_SIZE:
            raise refused
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, text)
        except InvalidSignature:
            raise refused from None


@dataclass(frozen=True, slots=True)
class NoteSigner:
    """An Ed25519 note signer. Its repr shows the name only."""

    name: str
    private_key: Ed25519PrivateKey = field(repr=False, compare=False)
    # its public half, at construction: a checkpoint and every nonce answer name it
    verifier_key: VerifierKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        public = self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        object.__setattr__(self, "verifier_key", VerifierKey(self.name, public))

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.generate())

    def encode(self) -> str:
        """``PRIVATE+KEY+name+keyid+base64(0x01 || seed)``: secret, for the log's key file."""
        seed = bytes([ED25519]) + self.private_key.private_bytes_raw()
        return f"{_PRIVATE}{self.verifier_key.label}+{base64.b64encode(seed).decode()}"

    @classmethod
    def parse(cls, text: str) -> NoteSigner:
        """A signer key as ``encode`` writes it, its key id checked. Refusals never show it."""
        if not text.startswith(_PRIVATE):
            raise AuditLogError(f"signer key got no {_PRIVATE!r} prefix, expected one")
        name, _, rest = text.removeprefix(_PRIVATE).partition("+")
        hex_id, _, data = rest.partition("+")
        check_key_name(name, "signer key name")
        try:
            raw = base64.b64decode(data.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error):
            raise AuditLogError("signer key is not valid base64") from None
        if len(raw) != 1 + KEY_SIZE or raw[0] != ED25519:
            raise AuditLogError("signer key got another type or size, expected Ed25519 (0x01)")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.verifier_key.key_id.hex() != hex_id:
            raise AuditLogError("signer key id does not match its name and key")
        return signer

    def sign(self, text: bytes) -> bytes:
        """key id || Ed25519 signature of ``text``."""
        return self.verifier_key.key_id + self.private_key.sign(text)


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: the key name, the key id and the signature bytes after it."""

    name: str
    key_id: bytes
    signature: bytes

    @property
    def label(self) -> str:
        return f"{self.name}+{self.key_id.hex()}"


@dataclass(frozen=True, slots=True)
class Note:
    """A parsed, not yet verified, note."""

    text: str
    signatures: tuple[NoteSignature, ...]


@dataclass(frozen=True, slots=True)
class OpenedNote:
    """A verified note: its text, the known keys whose signatures verified (in line order), and
    the signature lines of unknown keys (ignored, as the spec says)."""

    text: str
    verified_by: tuple[VerifierKey, ...]
    unknown: tuple[NoteSignature, ...]


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise AuditLogError("note text got no final newline, expected one")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise AuditLogError("note text got a control character, expected newlines only")


def _signature_line(line: str, number: int) -> NoteSignature:
    where = f"note signature line {number}"
    if not line.startswith(_DASH):
        raise AuditLogError(f"{where} got {line[:40]!r}, expected '— name signature'")
    name, sep, encoded = line.removeprefix(_DASH).partition(" ")
    if not sep:
        raise AuditLogError(f"{where} got no space after the key name, expected one")
    check_key_name(name, f"{where}: key name")
    raw = strict_b64(encoded, f"{where}: signature")
    if len(raw) < 5:
        raise AuditLogError(f"{where}: signature got {len(raw)} bytes, expected key id and more")
    return NoteSignature(name, raw[:4], raw[4:])


def parse_note(raw: str | bytes) -> Note:
    """The text and signature lines of a signed note, refusing anything malformed."""
    if len(raw) > MAX_NOTE_BYTES:
        raise AuditLogError(f"note got {len(raw)} bytes, expected at most {MAX_NOTE_BYTES}")
    try:
        note = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise AuditLogError("note is not valid UTF-8") from None
    _check_text(note)
    cut = note.rfind("\n\n")
    if cut < 0:
        raise AuditLogError("note got no blank line before its signatures, expected one")
    text, lines = note[: cut + 1], note[cut + 2 :].split("\n")[:-1]
    if not lines:
        raise AuditLogError("note got no signature lines, expected at least one")
    if len(lines) > MAX_SIGNATURES:
        raise AuditLogError(f"note got {len(lines)} signatures, expected at most {MAX_SIGNATURES}")
    return Note(text, tuple(_signature_line(line, i + 1) for i, line in enumerate(lines)))


def _line(signer: NoteSigner, text: str) -> str:
    return f"{_DASH}{signer.name} {base64.b64encode(signer.sign(text.encode())).decode()}\n"


def sign_note(text: str, signers: Sequence[NoteSigner]) -> str:
    """The note of ``text`` (ending in a newline) signed by each of ``signers``."""
    _check_text(text)
    if not signers:
        raise AuditLogError("a note needs at least one signer")
    return text + "\n" + "".join(_line(s, text) for s in signers)


def open_note(raw: str | bytes, keys: Sequence[VerifierKey]) -> OpenedNote:
    """The verified note in ``raw``; AuditVerificationError unless a key in ``keys`` signed it
    and every signature by a key in ``keys`` verifies."""
    note = parse_note(raw)
    known = {(k.name, k.key_id): k for k in keys}
    if len(known) != len(keys):
        raise AuditVerificationError("two trusted note keys share a name and key id")
    text = note.text.encode()
    verified: list[VerifierKey] = []
    unknown: list[NoteSignature] = []
    for sig in note.signatures:
        key = known.get((sig.name, sig.key_id))
        if key is None:
            unknown.append(sig)
        elif key in verified:
            raise AuditVerificationError(f"note is signed twice by {key.label}")
        else:
            key.verify(text, sig.signature)
            verified.append(key)
    if not verified:
        got = ", ".join(s.label for s in unknown)
        wanted = ", ".join(k.label for k in keys) or "none"
        raise AuditVerificationError(
            f"note is signed by no trusted key: got {got}, expected {wanted}"
        )
    return OpenedNote(note.text, tuple(verified), tuple(unknown))
