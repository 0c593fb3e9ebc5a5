"""Offline bundle verification: an exported range verifies; every attack on it (an altered,
dropped, inserted or reordered entry, another checkpoint, another key, a forked log) is refused
and the one-line message names the first bad entry."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from trusthook.audit.bundle import Bundle, export_bundle
from trusthook.audit.checkpoint import Checkpoint, sign_checkpoint
from trusthook.audit.entry import AuditEntry, EventType, Subject, SubjectKind
from trusthook.audit.merkle import EMPTY_ROOT
from trusthook.audit.note import NoteSigner
from trusthook.audit.tree import MemoryTree
from trusthook.audit.verify import KeyAnchor, verify_bundle
from trusthook.cli import main
from trusthook.common import b64
from trusthook.errors import AuditLogError, AuditVerificationError

ORIGIN = "audit.example.com/trusthook"
SIGNER = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
KEY = SIGNER.verifier_key
START = datetime(2026, 12, 1, tzinfo=UTC)


def entry(index: int, forked: bool = False) -> AuditEntry:
    """Entry ``index`` of the log, or of a log that forked from it before ``index``."""
    host = Subject(kind=SubjectKind.HOST, id=f"host-{index % 7}")
    subject = host
    detail: dict[str, Any] = {"forged": True} if forked else {}
    event = (EventType.ATTESTED, EventType.RELEASED, EventType.HOST_APPROVED)[index % 4 % 3]
    if index % 4 == 0:
        trusted = index % 3 == 0
        detail |= {"trusted": trusted, "reasons": [] if trusted else [{"check": "pcr"}]}
    elif index % 4 == 1:
        detail |= {"image": f"sha256:{index:064x}"}
    elif index % 4 == 3:
        event = EventType.OPERATOR_ACTION
        subject = Subject(kind=SubjectKind.OPERATOR, id="alice")
        detail |= {"action": "approve", "host": host.id}
    moment = START + timedelta(seconds=index)
    return AuditEntry.at(index=index, moment=moment, event=event, subject=subject, detail=detail)


@dataclass
class Log:
    """A log held in memory, as the server holds one in its database."""

    entries: list[AuditEntry] = field(default_factory=list)
    tree: MemoryTree = field(default_factory=MemoryTree)
    signer: NoteSigner = SIGNER

    def append(self, e: AuditEntry) -> None:
        assert self.tree.append(e.leaf_hash()) == e.index == len(self.entries)
        self.entries.append(e)

    def note(self, size: int) -> str:
        checkpoint = Checkpoint(origin=ORIGIN, size=size, root=self.tree.root(size))
        return sign_checkpoint(checkpoint, self.signer)

    def bundle(self, indices: Sequence[int], size: int, since: int | None = None) -> Bundle:
        return export_bundle(
            self.tree,
            key=self.signer.verifier_key,
            checkpoint=self.note(size),
            entries=[self.entries[i] for i in indices],
            since=since,
        )


def build(size: int, fork_at: int | None = None, signer: NoteSigner = SIGNER) -> Log:
    log = Log(signer=signer)
    for i in range(size):
        log.append(entry(i, forked=fork_at is not None and i >= fork_at))
    return log


LOG = build(1000)
FORK = build(1000, fork_at=500)  # the same key signs another history from entry 500 on
RANGE = range(200, 700)
BUNDLE = LOG.bundle(RANGE, 1000)


def tampered(bundle: Bundle, change: Callable[[dict[str, Any]], None]) -> Bundle:
    data = copy.deepcopy(bundle.to_json())
    change(data)
    return Bundle.from_json(data)


def refused(bundle: Bundle, message: str, **kw: Any) -> None:
    with pytest.raises((AuditVerificationError, AuditLogError)) as e:
        verify_bundle(bundle, **kw)
    assert "\n" not in str(e.value)
    assert re.match(re.escape(message), str(e.value)), str(e.value)


def position(index: int) -> int:
    return index - RANGE.start


def test_an_exported_range_verifies() -> None:
    result = verify_bundle(BUNDLE)
    assert result.entries == tuple(LOG.entries[200:700])
    assert result.checkpoint.size == 1000 and result.checkpoint.root == LOG.tree.root()
    assert result.anchor is KeyAnchor.BUNDLE and result.extends is None
    assert Bundle.from_bytes(BUNDLE.to_bytes()) == BUNDLE
    assert len(BUNDLE.proof) <= 2 * 10


def test_altered_entry_named() -> None:
    def alter(data: dict[str, Any]) -> None:
        data["entries"][position(317)]["detail"]["image"] = "sha256:" + "0" * 64

    refused(tampered(BUNDLE, alter), "audit entry 317: altered: it does not hash to its leaf")


def test_altered_entry_and_its_leaf_hash_refused_as_a_whole() -> None:
    """A bundle's hashes are one claim: whoever rewrites one can only be told the range."""
    forged = entry(317, forked=True)

    def alter(data: dict[str, Any]) -> None:
        data["entries"][position(317)] = forged.to_json()
        data["leaf_hashes"][position(317)] = b64.encode(forged.leaf_hash())

    refused(
        tampered(BUNDLE, alter),
        "audit entries 200..699: the bundle's leaf hashes and proof do not lead to the root",
    )


def test_dropped_entry_named() -> None:
    refused(
        tampered(BUNDLE, lambda d: d["entries"].pop(position(317))),
        "audit entry 317: missing or out of place: entry 318 stands in its place",
    )
    refused(
        tampered(BUNDLE, lambda d: d["entries"].pop()),
        "audit entry 699: missing: the bundle holds 499 entries, its selection 500",
    )


def test_dropped_entry_with_its_hash_and_selection_refused() -> None:
    def drop(data: dict[str, Any]) -> None:
        del data["entries"][position(317)], data["leaf_hashes"][position(317)]
        data["selection"] = [[200, 317], [318, 700]]

    refused(tampered(BUNDLE, drop), "audit entries 200..316, 318..699: the bundle's leaf hashes")


def test_inserted_entry_named() -> None:
    fake = entry(317, forked=True).to_json()
    refused(
        tampered(BUNDLE, lambda d: d["entries"].insert(position(317), fake)),
        "audit entry 317: altered",
    )
    late = entry(1000).to_json()
    refused(
        tampered(BUNDLE, lambda d: d["entries"].insert(position(317), late)),
        "audit entry 317: missing or out of place: entry 1000 stands in its place",
    )
    refused(
        tampered(BUNDLE, lambda d: d["entries"].append(entry(700).to_json())),
        "audit entry 700: inserted: not in the bundle's selection 200..699",
    )


def test_reordered_entries_named() -> None:
    def swap(data: dict[str, Any]) -> None:
        e = data["entries"]
        e[position(317)], e[position(318)] = e[position(318)], e[position(317)]

    refused(tampered(BUNDLE, swap), "audit entry 317: missing or out of place: entry 318")

    def swap_and_renumber(data: dict[str, Any]) -> None:
        swap(data)
        data["entries"][position(317)]["index"] = 317
        data["entries"][position(318)]["index"] = 318

    refused(tampered(BUNDLE, swap_and_renumber), "audit entry 317: altered")


def test_altered_checkpoint_refused() -> None:
    def alter(data: dict[str, Any]) -> None:
        data["checkpoint"] = data["checkpoint"].replace("\n1000\n", "\n999\n")

    refused(tampered(BUNDLE, alter), f"bundle checkpoint: note signature by {KEY.label}")


def test_another_checkpoint_of_the_same_log_refused() -> None:
    older = tampered(BUNDLE, lambda d: d.update(checkpoint=LOG.note(600)))
    refused(older, "audit entry 600: beyond the checkpoint's tree size 600")
    made_at_800 = LOG.bundle(RANGE, 800)
    newer = tampered(made_at_800, lambda d: d.update(checkpoint=LOG.note(1000)))
    refused(newer, "audit entries 200..699: the bundle's leaf hashes and proof do not lead")


def test_a_log_resigned_by_another_key() -> None:
    impostor = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(32)))
    forged = build(1000, fork_at=500, signer=impostor).bundle(RANGE, 1000)
    result = verify_bundle(forged)  # self-consistent: only an anchor outside it can tell
    assert result.anchor is KeyAnchor.BUNDLE
    refused(forged, f"audit bundle key got {impostor.verifier_key.label}", key=KEY)
    refused(
        forged,
        "trusted checkpoint: note is signed by no trusted key",
        trusted_checkpoint=LOG.note(800),
    )


def test_a_trusted_checkpoint_that_the_bundle_extends() -> None:
    bundle = LOG.bundle(RANGE, 1000, since=800)
    result = verify_bundle(bundle, LOG.note(800))
    assert result.extends is not None and result.extends.size == 800
    assert result.anchor is KeyAnchor.TRUSTED_CHECKPOINT
    assert verify_bundle(bundle, LOG.note(800), key=KEY).anchor is KeyAnchor.PINNED
    assert verify_bundle(BUNDLE, LOG.note(1000)).extends is not None
    assert verify_bundle(bundle).unchecked_consistency_from == 800


def test_a_trusted_checkpoint_needs_a_consistency_proof_from_its_size() -> None:
    refused(
        BUNDLE,
        "audit bundle consistency proof got none, expected one from the trusted checkpoint's"
        " tree size 800",
        trusted_checkpoint=LOG.note(800),
    )
    refused(
        LOG.bundle(RANGE, 1000, since=700),
        "audit bundle consistency proof got one from tree size 700",
        trusted_checkpoint=LOG.note(800),
    )
    refused(
        LOG.bundle(RANGE, 800),
        "bundle checkpoint: tree size 800 is older than the trusted checkpoint's 1000",
        trusted_checkpoint=LOG.note(1000),
    )


def test_a_fork_of_the_same_size_refused() -> None:
    whole = LOG.bundle(range(1000), 1000)
    refused(
        whole,
        "audit entries 0..999: the log was forked or rewritten: the trusted checkpoint has"
        " another root",
        trusted_checkpoint=FORK.note(1000),
    )
    refused(
        whole,
        "audit entry 500: differs from the trusted bundle's entry 500",
        trusted_bundle=FORK.bundle(range(1000), 1000),
    )


def test_a_larger_log_that_does_not_extend_the_trusted_one_refused() -> None:
    bundle = LOG.bundle(range(1000), 1000, since=800)
    refused(
        bundle,
        "audit entries 0..799: the log was forked or rewritten: tree size 1000 does not extend"
        " the trusted checkpoint's 800",
        trusted_checkpoint=FORK.note(800),
    )
    refused(
        bundle,
        "audit entry 500: differs from the trusted bundle's entry 500",
        trusted_bundle=FORK.bundle(range(400, 800), 800),
    )
    refused(  # no entry in common: only the range can be named
        LOG.bundle(range(900, 1000), 1000, since=800),
        "audit entries 0..799: the log was forked or rewritten",
        trusted_bundle=FORK.bundle(range(400, 800), 800),
    )


def test_a_trusted_bundle_that_was_tampered_refused() -> None:
    earlier = tampered(LOG.bundle(range(800), 800), lambda d: d["entries"].pop(5))
    refused(
        LOG.bundle(range(1000), 1000, since=800),
        "trusted bundle: audit entry 5: missing or out of place",
        trusted_bundle=earlier,
    )


def test_altered_consistency_proof_refused() -> None:
    def alter(data: dict[str, Any]) -> None:
        data["consistency"]["proof"][0] = b64.encode(bytes(32))

    refused(
        tampered(LOG.bundle(RANGE, 1000, since=800), alter),
        "audit entries 0..799: the log was forked or rewritten",
        trusted_checkpoint=LOG.note(800),
    )


def test_a_selection_verifies_and_names_its_bad_entry() -> None:
    picked = [3, 17, 18, 19, 512, 999]
    bundle = LOG.bundle(picked, 1000)
    assert verify_bundle(bundle).selection.describe() == "3, 17..19, 512, 999"

    def alter(data: dict[str, Any]) -> None:
        data["entries"][4]["time"] = "2027-01-01T00:00:00.000000Z"

    refused(tampered(bundle, alter), "audit entry 512: altered")


def test_an_empty_log_and_an_empty_selection() -> None:
    empty = Log()
    assert verify_bundle(empty.bundle([], 0)).checkpoint.root == EMPTY_ROOT
    assert verify_bundle(LOG.bundle([], 1000, since=0)).entries == ()


def test_the_example_in_the_format_document_verifies() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "audit.md").read_text()
    block = doc.split("<!-- example-bundle -->\n```json\n", 1)[1].split("```", 1)[0]
    result = verify_bundle(Bundle.from_bytes(block.encode()), key=KEY)
    assert result.checkpoint.root.hex() == (
        "117684ed7af061a42e8472a3852f00ecf5d9af8de7973b66adafa899bea52b8a"
    )
    assert [e.event for e in result.entries] == [EventType.ATTESTED]
    assert result.anchor is KeyAnchor.PINNED


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "audit bundle is not valid JSON"),
        (b'{"format": 1, "format": 2}', "audit bundle is not valid JSON: member 'format' appears"),
        (b"[NaN]", "audit bundle is not valid JSON: NaN is not JSON"),
        (b"[]", "audit bundle got no object"),
        (b"{}", "audit bundle got no member 'checkpoint'"),
    ],
)
def test_malformed_bundles_refused(raw: bytes, message: str) -> None:
    with pytest.raises(AuditLogError, match=re.escape(message)):
        Bundle.from_bytes(raw)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="v0"), "audit bundle format got 'v0'"),
        (lambda d: d.update(extra=1), "audit bundle got member 'extra'"),
        (lambda d: d["entries"][117].update(detail=[]), "audit entry 317: detail got an array"),
        (lambda d: d["entries"][117].pop("time"), "audit entry 317: time got nothing"),
        (
            lambda d: d["leaf_hashes"].__setitem__(117, "AA=="),
            "audit entry 317: leaf hash got 1 bytes",
        ),
        (
            lambda d: d["proof"].__setitem__(0, "!"),
            "audit bundle proof[0]: hash got no base64 string",
        ),
        (lambda d: d.update(selection=[[5, 3]]), "selection run got 5..2"),
        (lambda d: d.update(selection=[[0, True]]), "audit bundle selection[0][1] got True"),
        (lambda d: d.update(key="x+1+2"), "verifier key id got '1'"),
        (lambda d: d.update(consistency={"old_size": 1}), "audit bundle consistency got another"),
    ],
)
def test_malformed_members_refused(change: Callable[[dict[str, Any]], None], message: str) -> None:
    with pytest.raises(AuditLogError, match=re.escape(message)):
        tampered(BUNDLE, change)


def test_a_huge_claimed_selection_costs_nothing() -> None:
    bundle = tampered(BUNDLE, lambda d: d.update(selection=[[0, 10**15]]))
    refused(bundle, "audit entry 1000: beyond the checkpoint's tree size 1000")


def test_trusted_checkpoint_and_bundle_are_exclusive() -> None:
    with pytest.raises(AuditLogError, match="not both"):
        verify_bundle(BUNDLE, LOG.note(1000), trusted_bundle=BUNDLE)


SMALL = build(64)
SMALL_BUNDLE = SMALL.bundle(range(64), 64)


@given(st.integers(0, 63), st.sampled_from(["alter", "drop", "insert", "swap", "renumber"]))
def test_every_attack_names_the_first_bad_entry(index: int, attack: str) -> None:
    data = copy.deepcopy(SMALL_BUNDLE.to_json())
    entries = data["entries"]
    if attack == "alter":
        entries[index]["subject"]["id"] += "!"
    elif attack == "drop":
        entries.pop(index)
    elif attack == "insert":
        entries.insert(index, entry(index, forked=True).to_json() | {"time": entries[0]["time"]})
    elif index < 63:  # swap two neighbours, with or without their indices
        entries[index], entries[index + 1] = entries[index + 1], entries[index]
        if attack == "renumber":
            entries[index]["index"], entries[index + 1]["index"] = index, index + 1
    else:
        entries[index]["index"] = 64
    with pytest.raises(AuditVerificationError, match=f"audit entry {index}: "):
        verify_bundle(Bundle.from_json(data))


# the command line


def _files(tmp_path: Path, **contents: bytes | str) -> dict[str, str]:
    (tmp_path / "config.toml").write_text("")
    out = {"config": str(tmp_path / "config.toml")}
    for name, content in contents.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        out[name] = str(path)
    return out


def test_cli_verifies_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = _files(tmp_path, bundle=LOG.bundle(RANGE, 1000, since=800).to_bytes(),
                   trusted=LOG.note(800))  # fmt: skip
    argv = ["--trusthook-config", files["config"], "audit", "verify", files["bundle"]]
    assert main([*argv, "--trusted-checkpoint", files["trusted"], "--key", KEY.encode()]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK: 500 audit entries (200..699) are in the log {ORIGIN} at tree size")
    assert KEY.encode() in out and "given by the caller" in out
    assert "extends  the trusted checkpoint at tree size 800" in out
    assert main(argv) == 0
    assert "warning  nothing outside the bundle vouches for its key" in capsys.readouterr().out


def test_cli_names_the_first_bad_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = BUNDLE.to_json()
    data["entries"][position(317)]["detail"]["image"] = "sha256:" + "1" * 64
    files = _files(tmp_path, bundle=json.dumps(data))
    assert main(["--trusthook-config", files["config"], "audit", "verify", files["bundle"]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("trusthook: audit entry 317: altered") and err.count("\n") == 1
    missing = str(tmp_path / "absent.json")
    assert main(["--trusthook-config", files["config"], "audit", "verify", missing]) == 1
    assert "cannot read the bundle" in capsys.readouterr().err
