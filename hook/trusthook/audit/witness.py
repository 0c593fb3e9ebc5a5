"""A witness of the audit log: C2SP tlog-cosignature ``cosignature/v1`` (Ed25519, signature
type 0x04) and the witness's decision to cosign (docs/audit.md, "Witness"). Pure: no I/O;
"now" is passed in.

A cosignature is one more note signature line, ``— <witness name> base64(key id || timestamp
|| signature)``: the key id is ``SHA-256(name || 0x0A || 0x04 || public key)[:4]``, the
timestamp 8 bytes big-endian (POSIX seconds), the signature Ed25519 over ``"cosignature/v1\\n"
"time <timestamp>\\n"`` followed by the checkpoint's note text. It states that, at that time,
this is the largest tree the witness has seen the log grow consistently to.

Before cosigning, the witness compares the log's latest checkpoint with its basis: the last
checkpoint it cosigned, else a trusted checkpoint it was given, else nothing (trust on first
use, only when asked for). A smaller tree is a rollback, the same size with another root or a
consistency proof that fails a fork: ``WitnessRefusedError`` names which.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from trusthook.audit.checkpoint import Checkpoint, OpenedCheckpoint
from trusthook.audit.merkle import verify_consistency
from trusthook.audit.note import (
    KEY_SIZE,
    SIGNATURE_SIZE,
    check_key_name,
    parse_note,
    strict_b64,
)
from trusthook.errors import AuditLogError, AuditVerificationError, WitnessRefusedError

COSIGNATURE_V1 = 0x04  # the signature type byte of Ed25519 cosignature/v1 keys
TIMESTAMP_SIZE = 8
MAX_TIMESTAMP = (1 << 63) - 1
_PAYLOAD_SIZE = TIMESTAMP_SIZE + SIGNATURE_SIZE
_DASH = "\u2014 "
_PRIVATE = "PRIVATE+KEY+"


def _key_material(data: str, what: str) -> bytes:
    """The 32 bytes after the type byte of a ``base64(0x04 || key)`` field."""
    raw = strict_b64(data, what)
    if len(raw) != 1 + KEY_SIZE or raw[0] != COSIGNATURE_V1:
        got = f"type 0x{raw[0]:02x}, {len(raw)} bytes" if raw else "nothing"
        raise AuditLogError(
            f"{what} got {got}, expected an Ed25519 cosignature/v1 key (type 0x04, 33 bytes)"
        )
    return raw[1:]


def cosignature_key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key id of a cosignature/v1 key: SHA-256(name || 0x0A || 0x04 || key)[:4]."""
    material = name.encode() + b"\n" + bytes([COSIGNATURE_V1]) + public_key
    return hashlib.sha256(material).digest()[:4]


def cosigned_message(text: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: the header line, the time line, the checkpoint's note text."""
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


@dataclass(frozen=True, slots=True, repr=False)
class WitnessKey:
    """A witness's verifier key: its name and Ed25519 public key (type 0x04)."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name, "witness key name")
        if len(self.public_key) != KEY_SIZE:
            raise AuditLogError(f"witness public key got {len(self.public_key)} bytes, expected 32")

    @property
    def key_id(self) -> bytes:
        return cosignature_key_id(self.name, self.public_key)

    @property
    def label(self) -> str:
        """``name+keyid``, how messages name the witness."""
        return f"{self.name}+{self.key_id.hex()}"

    def encode(self) -> str:
        material = base64.b64encode(bytes([COSIGNATURE_V1]) + self.public_key).decode()
        return f"{self.label}+{material}"

    @classmethod
    def parse(cls, text: str) -> WitnessKey:
        """A verifier key ``name+keyid+base64(0x04 || key)``, its key id checked."""
        name, sep1, rest = text.strip().partition("+")
        hex_id, sep2, data = rest.partition("+")
        if not (sep1 and sep2):
            raise AuditLogError("witness key got no '+' separators, expected name+keyid+key")
        check_key_name(name, "witness key name")
        key = cls(name, _key_material(data, "witness key"))
        if key.key_id.hex() != hex_id:
            raise AuditLogError(
                f"witness key id got {hex_id[:16]!r}, expected {key.key_id.hex()} for its name"
                " and key"
            )
        return key

    def __repr__(self) -> str:
        return f"WitnessKey({self.encode()!r})"


@dataclass(frozen=True, slots=True)
class WitnessSigner:
    """A witness's Ed25519 signing key. Its repr shows the name only."""

    name: str
    private_key: Ed25519PrivateKey = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        check_key_name(self.name, "witness name")

    @classmethod
    def generate(cls, name: str) -> WitnessSigner:
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def verifier_key(self) -> WitnessKey:
        public = self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return WitnessKey(self.name, public)

    def encode(self) -> str:
        """``PRIVATE+KEY+name+keyid+base64(0x04 || seed)``: secret, for the witness's key file."""
        seed = bytes([COSIGNATURE_V1]) + self.private_key.private_bytes_raw()
        return f"{_PRIVATE}{self.verifier_key.label}+{base64.b64encode(seed).decode()}"

    @classmethod
    def parse(cls, text: str) -> WitnessSigner:
        """A signer key as ``encode`` writes it, its key id checked. Refusals never show it."""
        if not text.startswith(_PRIVATE):
            raise AuditLogError(f"witness signer key got no {_PRIVATE!r} prefix, expected one")
        name, _, rest = text.removeprefix(_PRIVATE).strip().partition("+")
        hex_id, _, data = rest.partition("+")
        check_key_name(name, "witness signer key name")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(_key_material(data, "signer key")))
        if signer.verifier_key.key_id.hex() != hex_id:
            raise AuditLogError("witness signer key id does not match its name and key")
        return signer


def cosign_checkpoint(opened: OpenedCheckpoint, signer: WitnessSigner, *, now: float) -> str:
    """The verified checkpoint's note with ``signer``'s cosignature/v1 line appended, timed
    ``now`` (POSIX seconds, rounded down)."""
    timestamp = int(now)
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise AuditLogError(f"cosignature time got {timestamp}, expected 0..{MAX_TIMESTAMP}")
    note = parse_note(opened.note)
    key = signer.verifier_key
    if any(s.name == key.name and s.key_id == key.key_id for s in note.signatures):
        raise AuditLogError(f"checkpoint is already cosigned by {key.label}")
    signature = signer.private_key.sign(cosigned_message(note.text, timestamp))
    payload = key.key_id + timestamp.to_bytes(TIMESTAMP_SIZE, "big") + signature
    return f"{opened.note}{_DASH}{key.name} {base64.b64encode(payload).decode()}\n"


def verify_cosignature(note: str | bytes, key: WitnessKey) -> None:
    """``note`` carries exactly one cosignature/v1 line by ``key`` (its name and key id), and
    it verifies over the note's text; else AuditVerificationError (AuditLogError if the line is
    malformed). The note's other signatures are not checked here (``open_checkpoint`` does)."""
    parsed = parse_note(note)
    mine = [s for s in parsed.signatures if s.name == key.name and s.key_id == key.key_id]
    if not mine:
        got = ", ".join(s.label for s in parsed.signatures)
        raise AuditVerificationError(
            f"checkpoint cosignatures got {got}, expected one by the witness {key.label}"
        )
    if len(mine) > 1:
        raise AuditVerificationError(f"checkpoint is cosigned {len(mine)} times by {key.label}")
    payload = mine[0].signature
    if len(payload) != _PAYLOAD_SIZE:
        raise AuditLogError(
            f"cosignature by {key.label} got {len(payload)} bytes after its key id, expected"
            f" {_PAYLOAD_SIZE} (an 8-byte timestamp and a 64-byte Ed25519 signature)"
        )
    timestamp = int.from_bytes(payload[:TIMESTAMP_SIZE], "big")
    if timestamp > MAX_TIMESTAMP:
        raise AuditLogError(
            f"cosignature by {key.label} got timestamp {timestamp}, expected at most 2^63-1"
        )
    try:
        Ed25519PublicKey.from_public_bytes(key.public_key).verify(
            payload[TIMESTAMP_SIZE:], cosigned_message(parsed.text, timestamp)
        )
    except InvalidSignature:
        raise AuditVerificationError(
            f"cosignature by {key.label} (time {timestamp}) does not verify over this checkpoint"
        ) from None


# the witness's decision


class Basis(StrEnum):
    """What the witness compares the log's latest checkpoint with."""

    LAST_COSIGNED = "the checkpoint it last cosigned"
    TRUSTED = "the trusted checkpoint it was given"
    FIRST_USE = "nothing: trusted on first use"


class Refusal(StrEnum):
    """Why a witness refused a checkpoint."""

    OTHER_LOG = "other log"
    ROLLBACK = "rollback"
    FORK = "fork"
    INCONSISTENT = "inconsistent"


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    """The witness's basis, and the checkpoint it names (None on first use)."""

    basis: Basis
    checkpoint: Checkpoint | None


def start_from(
    last_cosigned: Checkpoint | None,
    trusted: Checkpoint | None,
    *,
    trust_on_first_use: bool,
) -> Start:
    """The last checkpoint cosigned, else the trusted one, else (only if asked for) nothing;
    AuditVerificationError if there is nothing to start from and first use is not trusted."""
    if last_cosigned is not None:
        return Start(basis=Basis.LAST_COSIGNED, checkpoint=last_cosigned)
    if trusted is not None:
        return Start(basis=Basis.TRUSTED, checkpoint=trusted)
    if not trust_on_first_use:
        raise AuditVerificationError(
            "witness got no checkpoint to start from, expected a trusted checkpoint, or trust"
            " on first use asked for explicitly"
        )
    return Start(basis=Basis.FIRST_USE, checkpoint=None)


def consistency_from(start: Start, latest: Checkpoint) -> int | None:
    """The tree size a consistency proof to ``latest`` must start from, None if none is
    needed (first use, an empty or the same or a larger basis: ``check_latest`` decides)."""
    old = start.checkpoint
    if old is None or not 0 < old.size < latest.size:
        return None
    return old.size


def check_latest(start: Start, latest: Checkpoint, proof: Sequence[bytes]) -> None:
    """``latest`` (its log signature verified) extends the basis: the same log, a tree at
    least as large, the same root at the same size, and ``proof`` (from the size
    ``consistency_from`` named) verifies; else WitnessRefusedError naming what was wrong."""
    old = start.checkpoint
    if old is None:
        return
    where = f"{start.basis.value}, tree size {old.size}"
    if latest.origin != old.origin:
        raise WitnessRefusedError(
            Refusal.OTHER_LOG,
            f"checkpoint origin got {latest.origin[:64]!r}, expected {old.origin!r} ({where})",
        )
    if latest.size < old.size:
        raise WitnessRefusedError(
            Refusal.ROLLBACK,
            f"tree size got {latest.size}, expected at least {old.size} ({where})",
        )
    if latest.size == old.size and latest.root != old.root:
        raise WitnessRefusedError(
            Refusal.FORK,
            f"tree size {old.size} got another root than {where}",
        )
    try:
        verify_consistency(
            old_size=old.size,
            new_size=latest.size,
            old_root=old.root,
            new_root=latest.root,
            proof=proof,
        )
    except AuditVerificationError as e:
        raise WitnessRefusedError(
            Refusal.INCONSISTENT,
            f"tree size {latest.size} does not extend {where}: {e}",
        ) from e
