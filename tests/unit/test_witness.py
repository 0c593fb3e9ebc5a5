"""The witness, its pure core: C2SP tlog-cosignature ``cosignature/v1`` byte for byte, the
round trip, every forged or damaged cosignature refused, and the decision to cosign refusing
a rollback, a fork and a consistency proof that does not verify."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from trusthook.audit.bundle import export_bundle
from trusthook.audit.checkpoint import Checkpoint, OpenedCheckpoint, open_checkpoint
from trusthook.audit.checkpoint import sign_checkpoint as log_sign
from trusthook.audit.entry import AuditEntry, EventType, Subject, SubjectKind
from trusthook.audit.note import NoteSigner, VerifierKey, parse_note
from trusthook.audit.tree import MemoryTree, consistency_proof, tree_root
from trusthook.audit.verify import verify_bundle
from trusthook.audit.witness import (
    Basis,
    Refusal,
    Start,
    WitnessKey,
    WitnessSigner,
    check_latest,
    consistency_from,
    cosign_checkpoint,
    cosignature_key_id,
    start_from,
    verify_cosignature,
)
from trusthook.errors import AuditLogError, AuditVerificationError, WitnessRefusedError

ORIGIN = "audit.example.com/trusthook"
LOG = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
SEED = bytes(range(32, 64))
WITNESS = WitnessSigner("witness.example.com/w1", Ed25519PrivateKey.from_private_bytes(SEED))
NOW = 1_700_000_000
DASH = "\u2014 "


def tree(size: int, salt: bytes = b"") -> MemoryTree:
    t = MemoryTree()
    for i in range(size):
        t.append(hashlib.sha256(salt + i.to_bytes(8, "big")).digest())
    return t


def head(t: MemoryTree, size: int) -> Checkpoint:
    return Checkpoint(origin=ORIGIN, size=size, root=tree_root(t, size))


def opened(checkpoint: Checkpoint) -> OpenedCheckpoint:
    return open_checkpoint(log_sign(checkpoint, LOG), LOG.verifier_key)


def cosigned(size: int = 5) -> str:
    return cosign_checkpoint(opened(head(tree(size), size)), WITNESS, now=NOW)


def replace_cosignature(note: str, payload: bytes, name: str = WITNESS.name) -> str:
    """``note`` with its last line (the cosignature) replaced by ``payload``'s."""
    body = note[: note.rstrip("\n").rfind("\n") + 1]
    return f"{body}{DASH}{name} {base64.b64encode(payload).decode()}\n"


def payload_of(note: str) -> bytes:
    return parse_note(note).signatures[-1].key_id + parse_note(note).signatures[-1].signature


# the format


def test_the_key_id_and_encodings_follow_the_spec() -> None:
    key = WITNESS.verifier_key
    public = Ed25519PrivateKey.from_private_bytes(SEED).public_key().public_bytes_raw()
    expected_id = hashlib.sha256(WITNESS.name.encode() + b"\n\x04" + public).digest()[:4]
    assert key.key_id == expected_id == cosignature_key_id(WITNESS.name, public)
    material = base64.b64encode(bytes([4]) + public).decode()
    encoded = f"{WITNESS.name}+{expected_id.hex()}+{material}"
    assert key.encode() == encoded
    assert WitnessKey.parse(encoded) == key
    assert WitnessSigner.parse(WITNESS.encode()).verifier_key == key
    assert WITNESS.encode().startswith(f"PRIVATE+KEY+{WITNESS.name}+{expected_id.hex()}+")
    assert SEED.hex() not in repr(WITNESS) and "PRIVATE" not in repr(WITNESS)
    # the same name and key as a note key (0x01) has another id
    assert VerifierKey(WITNESS.name, public).key_id != key.key_id


def test_a_cosignature_is_the_timestamped_signature_over_the_v1_message() -> None:
    checkpoint = head(tree(5), 5)
    note = cosign_checkpoint(opened(checkpoint), WITNESS, now=NOW + 0.9)
    lines = note.split("\n")
    assert note.startswith(log_sign(checkpoint, LOG))
    assert lines[-2].startswith(f"{DASH}{WITNESS.name} ")
    payload = payload_of(note)
    assert len(payload) == 4 + 8 + 64
    assert payload[:4] == WITNESS.verifier_key.key_id
    assert payload[4:12] == NOW.to_bytes(8, "big")  # rounded down
    message = f"cosignature/v1\ntime {NOW}\n{checkpoint.text()}".encode()
    signer = Ed25519PrivateKey.from_private_bytes(SEED)
    assert payload[12:] == signer.sign(message)  # Ed25519 is deterministic
    verify_cosignature(note, WITNESS.verifier_key)
    assert open_checkpoint(note, LOG.verifier_key).checkpoint == checkpoint  # still the log's


@given(size=st.integers(0, 40), now=st.integers(0, (1 << 63) - 1))
def test_round_trip(size: int, now: int) -> None:
    note = cosign_checkpoint(opened(head(tree(size), size)), WITNESS, now=now)
    verify_cosignature(note, WITNESS.verifier_key)
    verify_cosignature(note.encode(), WitnessKey.parse(WITNESS.verifier_key.encode()))


def test_two_witnesses_cosign_one_checkpoint() -> None:
    other = WitnessSigner.generate("witness.example.org/w2")
    note = cosign_checkpoint(open_checkpoint(cosigned(), LOG.verifier_key), other, now=NOW)
    verify_cosignature(note, WITNESS.verifier_key)
    verify_cosignature(note, other.verifier_key)


def test_a_witness_cosigns_a_checkpoint_once() -> None:
    with pytest.raises(AuditLogError, match="already cosigned by witness.example.com/w1"):
        cosign_checkpoint(open_checkpoint(cosigned(), LOG.verifier_key), WITNESS, now=NOW)


@pytest.mark.parametrize("now", [-1, 1 << 63])
def test_a_time_outside_the_range_is_not_signed(now: int) -> None:
    with pytest.raises(AuditLogError, match="cosignature time got"):
        cosign_checkpoint(opened(head(tree(1), 1)), WITNESS, now=now)


# the attacks on a cosignature


def test_a_cosignature_over_an_altered_body_is_refused() -> None:
    note = cosigned(5)
    other = head(tree(6), 6)
    forged = log_sign(other, LOG) + note.split("\n")[-2] + "\n"  # the log signed size 6
    with pytest.raises(AuditVerificationError, match="does not verify over this checkpoint"):
        verify_cosignature(forged, WITNESS.verifier_key)


def test_a_cosignature_by_another_key_under_the_witness_name_is_refused() -> None:
    impostor = WitnessSigner(WITNESS.name, Ed25519PrivateKey.generate())
    note = cosign_checkpoint(opened(head(tree(5), 5)), impostor, now=NOW)
    with pytest.raises(AuditVerificationError, match="expected one by the witness"):
        verify_cosignature(note, WITNESS.verifier_key)  # its key id differs: not the witness's
    # and with the witness's key id put in front of it, the signature fails
    forged = replace_cosignature(note, WITNESS.verifier_key.key_id + payload_of(note)[4:])
    with pytest.raises(AuditVerificationError, match="does not verify"):
        verify_cosignature(forged, WITNESS.verifier_key)


def test_a_cosignature_checked_with_the_wrong_key_is_refused() -> None:
    with pytest.raises(AuditVerificationError, match="expected one by the witness"):
        verify_cosignature(cosigned(), WitnessSigner.generate("w2").verifier_key)


def test_a_cosignature_with_an_altered_timestamp_is_refused() -> None:
    note = cosigned()
    payload = payload_of(note)
    later = payload[:4] + (NOW + 1).to_bytes(8, "big") + payload[12:]
    with pytest.raises(AuditVerificationError, match=f"time {NOW + 1}.* does not verify"):
        verify_cosignature(replace_cosignature(note, later), WITNESS.verifier_key)
    huge = payload[:4] + (1 << 63).to_bytes(8, "big") + payload[12:]
    with pytest.raises(AuditLogError, match="expected at most 2"):
        verify_cosignature(replace_cosignature(note, huge), WITNESS.verifier_key)


def test_a_cosignature_with_a_wrong_key_id_is_refused() -> None:
    note = cosigned()
    payload = payload_of(note)
    for key_id in (bytes(4), VerifierKey(WITNESS.name, WITNESS.verifier_key.public_key).key_id):
        with pytest.raises(AuditVerificationError, match="expected one by the witness"):
            verify_cosignature(
                replace_cosignature(note, key_id + payload[4:]), WITNESS.verifier_key
            )


def test_a_cosignature_line_under_another_name_is_refused() -> None:
    note = cosigned()
    with pytest.raises(AuditVerificationError, match="expected one by the witness"):
        verify_cosignature(
            replace_cosignature(note, payload_of(note), "witness.example.com/w9"),
            WITNESS.verifier_key,
        )


@pytest.mark.parametrize("length", [5, 12, 4 + 8 + 63, 4 + 8 + 65, 4 + 64])
def test_a_truncated_or_padded_cosignature_is_refused(length: int) -> None:
    note = cosigned()
    payload = (payload_of(note) + b"\0")[:length]
    with pytest.raises(AuditLogError, match="expected 72"):
        verify_cosignature(replace_cosignature(note, payload), WITNESS.verifier_key)


def test_two_cosignatures_by_the_witness_are_refused() -> None:
    note = cosigned()
    twice = note + note.split("\n")[-2] + "\n"
    with pytest.raises(AuditVerificationError, match="cosigned 2 times"):
        verify_cosignature(twice, WITNESS.verifier_key)


def test_a_note_without_a_cosignature_is_refused() -> None:
    note = log_sign(head(tree(3), 3), LOG)
    with pytest.raises(AuditVerificationError, match=f"got {ORIGIN}\\+.*expected one by"):
        verify_cosignature(note, WITNESS.verifier_key)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("w1+00000000", "no '\\+' separators"),
        ("w 1+00000000+BA==", "witness key name"),
        (VerifierKey(WITNESS.name, WITNESS.verifier_key.public_key).encode(), "type 0x01"),
        (WITNESS.verifier_key.encode()[:-1], "not valid base64"),
        (WITNESS.verifier_key.encode()[:-4], "30 bytes"),
        (WITNESS.verifier_key.encode().replace(WITNESS.name, "w2", 1), "witness key id got"),
    ],
)
def test_a_malformed_witness_key_is_refused(text: str, match: str) -> None:
    with pytest.raises(AuditLogError, match=match):
        WitnessKey.parse(text)


def test_a_note_signer_key_is_not_a_witness_signer_key() -> None:
    with pytest.raises(AuditLogError, match="expected an Ed25519 cosignature/v1 key"):
        WitnessSigner.parse(LOG.encode())


# the decision to cosign


LOG_TREE = tree(20)
FORKED_TREE = tree(20, b"fork")


def from_state(size: int, t: MemoryTree = LOG_TREE) -> Start:
    return start_from(head(t, size), None, trust_on_first_use=False)


def proof(old: int, new: int, t: MemoryTree = LOG_TREE) -> tuple[bytes, ...]:
    return tuple(consistency_proof(t, old, new))


def test_the_basis_is_the_last_cosigned_else_the_trusted_else_first_use_if_asked() -> None:
    last, trusted = head(LOG_TREE, 9), head(LOG_TREE, 4)
    assert start_from(last, trusted, trust_on_first_use=True) == Start(
        basis=Basis.LAST_COSIGNED, checkpoint=last
    )
    assert start_from(None, trusted, trust_on_first_use=False) == Start(
        basis=Basis.TRUSTED, checkpoint=trusted
    )
    assert start_from(None, None, trust_on_first_use=True).checkpoint is None
    with pytest.raises(AuditVerificationError, match="no checkpoint to start from"):
        start_from(None, None, trust_on_first_use=False)


def test_a_log_that_grew_consistently_is_accepted() -> None:
    for old, new in ((1, 20), (4, 9), (7, 20), (13, 14)):
        start = from_state(old)
        assert consistency_from(start, head(LOG_TREE, new)) == old
        check_latest(start, head(LOG_TREE, new), proof(old, new))
    check_latest(from_state(9), head(LOG_TREE, 9), ())  # the same tree: no proof
    assert consistency_from(from_state(9), head(LOG_TREE, 9)) is None
    check_latest(from_state(0), head(LOG_TREE, 5), ())  # from the empty tree: none needed
    assert consistency_from(from_state(0), head(LOG_TREE, 5)) is None
    first = start_from(None, None, trust_on_first_use=True)
    assert consistency_from(first, head(LOG_TREE, 5)) is None
    check_latest(first, head(LOG_TREE, 5), ())


def refusal(start: Start, latest: Checkpoint, hashes: tuple[bytes, ...]) -> WitnessRefusedError:
    with pytest.raises(WitnessRefusedError) as caught:
        check_latest(start, latest, hashes)
    return caught.value


def test_a_smaller_tree_is_refused_as_a_rollback() -> None:
    start = from_state(9)
    assert consistency_from(start, head(LOG_TREE, 8)) is None  # nothing to ask the server
    e = refusal(start, head(LOG_TREE, 8), ())
    assert e.reason == Refusal.ROLLBACK
    assert str(e) == (
        "rollback: tree size got 8, expected at least 9 (the checkpoint it last cosigned,"
        " tree size 9)"
    )
    assert refusal(start, head(LOG_TREE, 0), ()).reason == Refusal.ROLLBACK


def test_the_same_size_with_another_root_is_refused_as_a_fork() -> None:
    e = refusal(from_state(9), head(FORKED_TREE, 9), ())
    assert e.reason == Refusal.FORK
    assert "tree size 9 got another root" in str(e)


def test_a_bad_consistency_proof_is_refused() -> None:
    start = from_state(7)
    good = proof(7, 20)
    attacks = {
        "the forked log's own proof": (head(FORKED_TREE, 20), proof(7, 20, FORKED_TREE)),
        "a hash altered": (head(LOG_TREE, 20), (good[0], bytes(32), *good[2:])),
        "a hash dropped": (head(LOG_TREE, 20), good[:-1]),
        "a hash added": (head(LOG_TREE, 20), (*good, bytes(32))),
        "no proof": (head(LOG_TREE, 20), ()),
        "a proof to another size": (head(LOG_TREE, 20), proof(7, 19)),
    }
    for what, (latest, hashes) in attacks.items():
        e = refusal(start, latest, hashes)
        assert e.reason == Refusal.INCONSISTENT, what
        assert "tree size 20 does not extend the checkpoint it last cosigned" in str(e), what


def test_a_checkpoint_of_another_log_is_refused() -> None:
    other = Checkpoint(origin="other.example/log", size=9, root=tree_root(LOG_TREE, 9))
    assert refusal(from_state(9), other, ()).reason == Refusal.OTHER_LOG


def test_the_trusted_checkpoint_is_held_to_the_same_checks() -> None:
    trusted = start_from(None, head(LOG_TREE, 9), trust_on_first_use=True)
    e = refusal(trusted, head(LOG_TREE, 5), ())
    assert "the trusted checkpoint it was given, tree size 9" in str(e)
    assert refusal(trusted, head(FORKED_TREE, 12), proof(9, 12, FORKED_TREE)).reason == (
        Refusal.INCONSISTENT
    )


# what an auditor checks: verify_bundle with witness keys


def test_verify_bundle_needs_each_witness_on_the_trusted_checkpoint() -> None:
    entries = [
        AuditEntry.at(
            index=i,
            moment=datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=i),
            event=EventType.ATTESTED,
            subject=Subject(kind=SubjectKind.HOST, id="host-1"),
            detail={"trusted": True, "reasons": []},
        )
        for i in range(8)
    ]
    log = MemoryTree([e.leaf_hash() for e in entries])
    bundle = export_bundle(
        log,
        key=LOG.verifier_key,
        checkpoint=log_sign(head(log, 8), LOG),
        entries=entries[5:],
        since=5,
    )
    trusted = cosign_checkpoint(opened(head(log, 5)), WITNESS, now=NOW)
    result = verify_bundle(bundle, trusted, witnesses=[WITNESS.verifier_key])
    assert result.witnessed_by == (WITNESS.verifier_key,)
    assert result.extends == head(log, 5)
    other = WitnessSigner.generate("w2").verifier_key
    with pytest.raises(AuditVerificationError, match="^trusted checkpoint: .*expected one by"):
        verify_bundle(bundle, trusted, witnesses=[WITNESS.verifier_key, other])
    with pytest.raises(AuditLogError, match="give one"):
        verify_bundle(bundle, witnesses=[WITNESS.verifier_key])


def test_the_example_in_docs_audit_md_is_what_cosigning_gives() -> None:
    """docs/audit.md, "Witness": the §5 checkpoint cosigned by the test-only witness key."""
    logged = (
        f"{ORIGIN}\n3\nEXaE7XrwYaQuhHKjhS8A7PXZr43nlztmra+omb6lK4o=\n\n{DASH}{ORIGIN} Tz/L+7bowZk"
        "T4EVZJms+04E22TsSnZCBsC31JL7EOAdeuYFAgWqB6pNt1b9eT4WPXv/aKwtjWV6EqXl4gXsdDXsOews=\n"
    )
    note = cosign_checkpoint(open_checkpoint(logged, LOG.verifier_key), WITNESS, now=NOW)
    assert WITNESS.verifier_key.encode() == (
        "witness.example.com/w1+969980cf+BCmsuuFBvMrwsi4alNNNC8c2HlJtC/4SyJeUvJMilm3X"
    )
    assert note == logged + (
        f"{DASH}witness.example.com/w1 lpmAzwAAAABlU/EAQH0A9y+kM9KxK5YogU44QqNt8hFJjCeiD/WYzSxB"
        "rR9KKVfFh1szA21Al+64Yxw3eQTQ36aUkdNbOsMMKkvUBA==\n"
    )
