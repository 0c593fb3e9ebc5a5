"""C2SP signed notes and tlog checkpoints: the Go reference vector byte for byte, round trips,
cosignatures, and every malformed or mis-signed note refused with a named reason."""

from __future__ import annotations

import base64
import contextlib
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from trusthook.audit.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from trusthook.audit.merkle import EMPTY_ROOT, leaf_hash
from trusthook.audit.note import (
    NoteSigner,
    VerifierKey,
    open_note,
    parse_note,
    sign_note,
)
from trusthook.errors import AuditLogError, AuditVerificationError

# golang.org/x/mod/sumdb/note's documented example (note.go, note_test.go): Ed25519 is
# deterministic, so signing its text with its key must give its note byte for byte.
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)

ORIGIN = "audit.example.com/trusthook"
LOG = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
WITNESS = NoteSigner.generate("witness.example.org/w1")
ROOT = leaf_hash(b"a root")


def _checkpoint(size: int = 1000, **kw: object) -> Checkpoint:
    return Checkpoint(origin=ORIGIN, size=size, root=kw.pop("root", ROOT), **kw)  # type: ignore[arg-type]


def _resigned(text: str) -> str:
    """``text`` signed by the log: a note whose only fault is its text."""
    return sign_note(text, [LOG])


def test_go_reference_note_byte_for_byte() -> None:
    signer = NoteSigner.parse(GO_SIGNER)
    assert signer.encode() == GO_SIGNER
    assert signer.verifier_key.encode() == GO_VERIFIER
    assert VerifierKey.parse(GO_VERIFIER) == signer.verifier_key
    assert sign_note(GO_TEXT, [signer]) == GO_NOTE
    opened = open_note(GO_NOTE, [VerifierKey.parse(GO_VERIFIER)])
    assert opened.text == GO_TEXT and opened.verified_by == (signer.verifier_key,)
    with pytest.raises(AuditVerificationError, match="PeterNeumann\\+c74f20a3 does not verify"):
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), [signer.verifier_key])


def test_signer_repr_hides_the_key() -> None:
    assert "AYEK" not in repr(LOG) and "private" not in repr(LOG)


def test_verifier_key_manglings_refused() -> None:
    for i in range(len(GO_VERIFIER)):
        changed = GO_VERIFIER[:i] + chr(ord(GO_VERIFIER[i]) + 1) + GO_VERIFIER[i + 1 :]
        with pytest.raises(AuditLogError, match="verifier key"):
            VerifierKey.parse(changed)
    for cut in (10, 20, 30, len(GO_VERIFIER) - 1):
        with pytest.raises(AuditLogError, match="verifier key"):
            VerifierKey.parse(GO_VERIFIER[:cut])


@pytest.mark.parametrize(
    "name", ["", "has space", "plus+sign", "tab\there", "nbsp\u00a0", "ctrl\x01"]
)
def test_bad_key_names_refused(name: str) -> None:
    with pytest.raises(AuditLogError, match="key name got"):
        NoteSigner.generate(name)


def test_checkpoint_round_trip() -> None:
    cp = _checkpoint(extensions=("an extension",))
    assert cp.text() == f"{ORIGIN}\n1000\n{base64.b64encode(ROOT).decode()}\nan extension\n"
    assert Checkpoint.parse(cp.text()) == cp
    note = sign_checkpoint(cp, LOG)
    opened = open_checkpoint(note, LOG.verifier_key)
    assert opened.checkpoint == cp and opened.note == note
    assert open_checkpoint(note.encode(), LOG.verifier_key).checkpoint == cp
    empty = Checkpoint(origin=ORIGIN, size=0, root=EMPTY_ROOT)
    assert open_checkpoint(sign_checkpoint(empty, LOG), LOG.verifier_key).checkpoint == empty


def test_wrong_key_refused() -> None:
    note = sign_checkpoint(_checkpoint(), LOG)
    impostor = NoteSigner.generate(ORIGIN).verifier_key  # same name, another key
    with pytest.raises(
        AuditVerificationError, match=re.escape(f"no trusted key: got {LOG.verifier_key.label}")
    ):
        open_checkpoint(note, impostor)


def test_signature_by_an_unknown_key_only_refused() -> None:
    stranger = NoteSigner.generate("stranger.example/log")
    note = sign_note(_checkpoint().text(), [stranger])
    with pytest.raises(
        AuditVerificationError,
        match=re.escape(
            f"signed by no trusted key: got {stranger.verifier_key.label}, expected"
            f" {LOG.verifier_key.label}"
        ),
    ):
        open_checkpoint(note, LOG.verifier_key)


@pytest.mark.parametrize(
    ("old", "new"),
    [("\n1000\n", "\n1001\n"), ("\n1000\n", "\n999\n"), ("trusthook\n", "trusthooK\n")],
)
def test_altered_text_refused(old: str, new: str) -> None:
    note = sign_checkpoint(_checkpoint(), LOG)
    assert old in note
    with pytest.raises(AuditVerificationError, match="signature by .* does not verify"):
        open_checkpoint(note.replace(old, new, 1), LOG.verifier_key)


def test_altered_root_refused() -> None:
    note = sign_checkpoint(_checkpoint(), LOG)
    other = base64.b64encode(leaf_hash(b"another root")).decode()
    altered = note.replace(base64.b64encode(ROOT).decode(), other)
    with pytest.raises(AuditVerificationError, match="does not verify"):
        open_checkpoint(altered, LOG.verifier_key)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"{ORIGIN}\n1000\n", "got 2 lines, expected origin, tree size and root"),
        (f"{ORIGIN}\n", "got 1 lines"),
        (f"{ORIGIN}\n1000\n{{root}}\n\nextra\n", "line 4 got an empty line"),
        ("\n1000\n{root}\n", "line 1 got an empty line"),
        (f"{ORIGIN}\n01000\n{{root}}\n", "tree size got '01000'"),
        (f"{ORIGIN}\n-1\n{{root}}\n", "tree size got '-1'"),
        (f"{ORIGIN}\n\u0661\n{{root}}\n", "tree size got"),
        (f"{ORIGIN}\n{2**63}\n{{root}}\n", "tree size got"),
        (f"{ORIGIN}\n1000\nnot base64!\n", "root hash got 'not base64!', expected base64"),
        (f"{ORIGIN}\n1000\n{base64.b64encode(b'short').decode()}\n", "the base64 of 32 bytes"),
        (f"{ORIGIN}\n1000\n{base64.b64encode(ROOT).decode()[:-2]}\n", "expected base64"),
    ],
)
def test_malformed_checkpoints_refused(text: str, reason: str) -> None:
    text = text.replace("{root}", base64.b64encode(ROOT).decode())
    with pytest.raises(AuditLogError, match=reason.replace("+", "\\+")):
        open_checkpoint(_resigned(text), LOG.verifier_key)


def test_extension_lines_kept_and_signed() -> None:
    cp = _checkpoint(extensions=("one", "two"))
    assert open_checkpoint(sign_checkpoint(cp, LOG), LOG.verifier_key).checkpoint == cp


def test_origin_must_be_the_log_keys_name() -> None:
    other = NoteSigner(
        "elsewhere.example/log", NoteSigner.parse(GO_SIGNER).private_key
    )  # same key, another name
    cp = Checkpoint(origin=ORIGIN, size=3, root=ROOT)
    with pytest.raises(AuditLogError, match="expected the origin"):
        sign_checkpoint(cp, other)
    renamed = sign_note(Checkpoint(origin="elsewhere.example/x", size=3, root=ROOT).text(), [LOG])
    with pytest.raises(AuditVerificationError, match="origin got 'elsewhere.example/x'"):
        open_checkpoint(renamed, LOG.verifier_key)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda n: n.rstrip("\n"), "no final newline"),
        (lambda n: n.replace("\n\n", "\n"), "no blank line"),
        (lambda n: n.replace("\u2014 ", "- "), "signature line 1 got"),
        (lambda n: n.replace("\u2014 audit.example.com/trusthook ", "\u2014 x"), "no space"),
        (lambda n: n[: n.rindex(" ") + 1] + "!!!!\n", "signature is not valid base64"),
        (lambda n: n[: n.rindex(" ") + 1] + "AAAA\n", "got 3 bytes"),
        (lambda n: n + "\n", "no signature lines"),
        (lambda n: n.replace("1000", "10\r00"), "control character"),
        (lambda n: n.replace("1000", "10\x0000"), "control character"),
        (lambda n: n + "\u2014 ", "no final newline"),
    ],
)
def test_malformed_notes_refused(mangle: object, reason: str) -> None:
    note = sign_checkpoint(_checkpoint(), LOG)
    with pytest.raises(AuditLogError, match=reason):
        open_checkpoint(mangle(note), LOG.verifier_key)  # type: ignore[operator]


def test_invalid_utf8_and_oversized_notes_refused() -> None:
    note = sign_checkpoint(_checkpoint(), LOG).encode()
    with pytest.raises(AuditLogError, match="not valid UTF-8"):
        open_checkpoint(note.replace(b"1000", b"10\xff0"), LOG.verifier_key)
    with pytest.raises(AuditLogError, match="expected at most 65536"):
        parse_note("x" * 70000 + "\n\n" + note.decode().split("\n\n")[1])
    many = sign_note(_checkpoint().text(), [NoteSigner.generate(f"k{i}") for i in range(65)])
    with pytest.raises(AuditLogError, match="got 65 signatures, expected at most 64"):
        parse_note(many)


def test_other_signature_lines_are_left_to_their_keys() -> None:
    """A witness's line (an unknown key here) is named, not checked, and does not replace the
    log key's signature; a bad signature by a key the caller trusts refuses the note."""
    note = sign_note(_checkpoint().text(), [LOG, WITNESS])
    assert [s.name for s in parse_note(note).signatures] == [ORIGIN, WITNESS.name]
    assert open_checkpoint(note, LOG.verifier_key).checkpoint == _checkpoint()
    assert open_note(note, [LOG.verifier_key]).unknown[0].label == WITNESS.verifier_key.label
    log_line, witness_line = note.split("\n\n")[1].splitlines()
    impostor = NoteSigner.generate(WITNESS.name).sign(_checkpoint().text().encode())
    forged_sig = base64.b64encode(WITNESS.verifier_key.key_id + impostor[4:]).decode()
    forged = note.replace(witness_line, f"\u2014 {WITNESS.name} {forged_sig}")
    with pytest.raises(
        AuditVerificationError, match=re.escape(f"{WITNESS.verifier_key.label} does not verify")
    ):
        open_note(forged, [LOG.verifier_key, WITNESS.verifier_key])
    assert open_checkpoint(forged, LOG.verifier_key).checkpoint == _checkpoint()
    assert log_line.startswith("\u2014 " + ORIGIN)
    with pytest.raises(AuditVerificationError, match="no trusted key|expected the log key"):
        open_checkpoint(sign_note(_checkpoint().text(), [WITNESS]), LOG.verifier_key)


def test_a_note_signed_twice_by_one_key_refused() -> None:
    note = sign_checkpoint(_checkpoint(), LOG)
    doubled = note + note.split("\n\n")[1]
    with pytest.raises(AuditVerificationError, match="signed twice"):
        open_checkpoint(doubled, LOG.verifier_key)


@given(st.binary(max_size=400) | st.text(max_size=400))
def test_arbitrary_notes_raise_only_our_errors(raw: bytes | str) -> None:
    with contextlib.suppress(AuditLogError, AuditVerificationError):
        open_checkpoint(raw, LOG.verifier_key)


@given(st.text(max_size=200))
def test_arbitrary_checkpoint_texts_raise_only_our_errors(text: str) -> None:
    with contextlib.suppress(AuditLogError, AuditVerificationError):
        open_checkpoint(sign_note(text, [LOG]), LOG.verifier_key)
