"""RFC 9162 Merkle trees: the reference vectors, generation against verification, every
corruption refused, the stored-subtree model (Frontier, MemoryTree) and the multi-proof."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusthook.audit.merkle import (
    EMPTY_ROOT,
    Span,
    consistency_spans,
    full_subtrees,
    inclusion_spans,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from trusthook.audit.multiproof import Selection, selection_root, selection_spans
from trusthook.audit.tree import (
    Frontier,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    span_hashes,
)
from trusthook.errors import AuditLogError, AuditVerificationError


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# The RFC 6962 reference inputs and hashes, as published with transparency-dev/merkle's
# tests (proof/verify_test.go); the leaf numbers there count from 1, indices here from 0.
LEAVES = [h(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                          "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
ROOTS = [
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]
INCLUSION = [  # (index, size, proof)
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")
VECTOR_TREE = MemoryTree([leaf_hash(d) for d in LEAVES])


def test_empty_tree_head_is_the_hash_of_nothing() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert root([]) == EMPTY_ROOT == Frontier().root() == MemoryTree().root()


@pytest.mark.parametrize("size", range(1, 9))
def test_reference_roots(size: int) -> None:
    hashes = [leaf_hash(d) for d in LEAVES[:size]]
    assert root(hashes) == VECTOR_TREE.root(size) == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_reference_inclusion_proofs(index: int, size: int, proof: list[str]) -> None:
    expected = tuple(h(p) for p in proof)
    assert inclusion_proof(VECTOR_TREE, index, size) == expected
    leaf = leaf_hash(LEAVES[index])
    verify_inclusion(leaf=leaf, index=index, size=size, proof=expected, root=ROOTS[size - 1])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_reference_consistency_proofs(old: int, new: int, proof: list[str]) -> None:
    expected = tuple(h(p) for p in proof)
    assert consistency_proof(VECTOR_TREE, old, new) == expected
    verify_consistency(
        old_size=old, new_size=new, old_root=ROOTS[old - 1], new_root=ROOTS[new - 1], proof=expected
    )


def _refused(**probe: object) -> bool:
    try:
        verify_inclusion(**probe)  # type: ignore[arg-type]
    except AuditVerificationError:
        return True
    return False


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION[1:])
def test_reference_inclusion_corruptions_refused(index: int, size: int, proof: list[str]) -> None:
    """The corruptions transparency-dev/merkle probes its verifier with."""
    good = [h(p) for p in proof]
    leaf, top = leaf_hash(LEAVES[index]), ROOTS[size - 1]
    probes: list[dict[str, object]] = [
        {"index": index - 1}, {"index": index + 1}, {"index": index ^ 2},
        {"size": size * 2}, {"size": size // 2},
        {"leaf": leaf_hash(b"WrongLeaf")}, {"root": EMPTY_ROOT}, {"root": SOME_HASH},
        {"proof": [*good, top]}, {"proof": [top, *good]}, {"proof": [*good, b""]},
        {"proof": good[:-1]}, {"proof": [good[0], SOME_HASH, *good[1:]]},
    ]  # fmt: skip
    for i in range(len(good)):
        flipped = list(good)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        probes.append({"proof": flipped})
    for change in probes:
        probe = {"leaf": leaf, "index": index, "size": size, "proof": good, "root": top, **change}
        assert _refused(**probe), change


@pytest.mark.parametrize(
    ("old", "new", "old_root", "new_root", "proof"),
    [
        (0, 0, EMPTY_ROOT, SOME_HASH, []),  # same size, different roots
        (1, 1, ROOTS[0], ROOTS[1], []),
        (1, 0, ROOTS[0], EMPTY_ROOT, []),  # time travel
        (2, 1, ROOTS[1], ROOTS[0], []),
        (1, 2, ROOTS[0], ROOTS[1], []),  # an empty proof between different sizes
        (0, 1, EMPTY_ROOT, ROOTS[0], [EMPTY_ROOT]),  # nothing to prove, yet a proof
        (1, 1, ROOTS[0], ROOTS[0], [EMPTY_ROOT]),
    ],
)
def test_consistency_edge_cases_refused(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> None:
    with pytest.raises(AuditVerificationError):
        verify_consistency(
            old_size=old, new_size=new, old_root=old_root, new_root=new_root, proof=proof
        )


def test_consistency_from_the_empty_tree_needs_no_proof() -> None:
    verify_consistency(old_size=0, new_size=5, old_root=EMPTY_ROOT, new_root=ROOTS[4], proof=[])


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def _flips(hashes: Sequence[bytes]) -> list[list[bytes]]:
    """Every proof with one bit of one hash changed (one bit per byte, rotating)."""
    out = []
    for i, item in enumerate(hashes):
        for byte in range(len(item)):
            changed = bytearray(item)
            changed[byte] ^= 1 << ((i + byte) % 8)
            out.append([*hashes[:i], bytes(changed), *hashes[i + 1 :]])
    return out


def _flip(value: bytes, bit: int) -> bytes:
    changed = bytearray(value)
    changed[bit // 8 % len(value)] ^= 1 << (bit % 8)
    return bytes(changed)


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[MemoryTree, int, int]:
    size = draw(st.integers(1, 300))
    tree = MemoryTree(_leaves(draw(st.integers(size, size + 40))))
    return tree, draw(st.integers(0, size - 1)), size


@given(tree_and_index(), st.integers(0, 255))
def test_inclusion_proofs_verify_and_no_change_does(
    case: tuple[MemoryTree, int, int], bit: int
) -> None:
    tree, index, size = case
    proof = inclusion_proof(tree, index, size)
    leaf, top = tree.subtree_hashes([Span(index, index + 1)])[0], tree.root(size)
    verify_inclusion(leaf=leaf, index=index, size=size, proof=proof, root=top)
    assert len(proof) == len(inclusion_spans(index, size)) <= math.ceil(math.log2(size))
    good = {"leaf": leaf, "index": index, "size": size, "proof": proof, "root": top}
    for flipped in _flips(proof):
        assert _refused(**{**good, "proof": flipped})
    assert _refused(**{**good, "leaf": _flip(leaf, bit)})
    assert _refused(**{**good, "root": _flip(top, bit)})
    for other in {index ^ (1 << b) for b in range(size.bit_length())} - {index}:
        assert _refused(**{**good, "index": other})
    # a size comes with its root (both from one signed checkpoint): each other size refused
    for other in {size ^ (1 << b) for b in range(size.bit_length() + 1)} - {size, 0}:
        if other <= tree.size:
            assert _refused(**{**good, "size": other, "root": tree.root(other)})


@given(st.integers(1, 300), st.data())
def test_consistency_proofs_verify_and_no_change_does(new: int, data: st.DataObject) -> None:
    old = data.draw(st.integers(1, new))
    tree = MemoryTree(_leaves(new + 3))
    proof = consistency_proof(tree, old, new)
    good = {"old_size": old, "new_size": new, "old_root": tree.root(old),
            "new_root": tree.root(new), "proof": proof}  # fmt: skip
    verify_consistency(**good)  # type: ignore[arg-type]
    bit = data.draw(st.integers(0, 255))
    probes: list[dict[str, object]] = [{"proof": flipped} for flipped in _flips(proof)]
    probes += [{"old_root": _flip(tree.root(old), bit)}, {"new_root": _flip(tree.root(new), bit)}]
    for o in {old ^ (1 << b) for b in range(old.bit_length())} - {old, 0}:
        if o <= new:
            probes.append({"old_size": o, "old_root": tree.root(o)})
    for n in {new ^ (1 << b) for b in range(new.bit_length() + 1)} - {new}:
        if old <= n <= tree.size:
            probes.append({"new_size": n, "new_root": tree.root(n)})
    for change in probes:
        with pytest.raises(AuditVerificationError):
            verify_consistency(**{**good, **change})  # type: ignore[arg-type]


@given(st.integers(0, 200), st.integers(0, 60))
def test_a_prefix_is_a_consistent_tree(old: int, grown: int) -> None:
    leaves = _leaves(old + grown)
    small, big = MemoryTree(leaves[:old]), MemoryTree(leaves)
    assert small.root() == big.root(old) == root(leaves[:old])
    verify_consistency(
        old_size=old, new_size=old + grown, old_root=small.root(), new_root=big.root(),
        proof=consistency_proof(big, old, old + grown),
    )  # fmt: skip


@given(st.integers(0, 130))
def test_frontier_appends_store_exactly_the_full_subtrees(size: int) -> None:
    tree = MemoryTree()
    frontier, stored = Frontier(), dict[Span, bytes]()
    for leaf in _leaves(size):
        tree.append(leaf)
        frontier, completed = frontier.append(leaf)
        assert completed[0][1] == leaf and all(span.is_full for span, _ in completed)
        stored.update(completed)
        assert frontier.root() == tree.root()
    assert frontier.root() == root(_leaves(size))
    expected = [Span(p << lv, (p + 1) << lv) for lv in range(9) for p in range(size >> lv)]
    assert sorted(stored) == sorted(expected)
    assert all(stored[s] == tree.subtree_hashes([s])[0] for s in expected)
    rebuilt = Frontier(size, tuple(tree.subtree_hashes(Frontier.spans(size))))
    assert rebuilt == frontier


@given(st.lists(st.integers(0, 40), max_size=8), st.integers(0, 70))
def test_extending_in_batches_equals_appending_one_by_one(batches: list[int], start: int) -> None:
    """``extend`` of a batch (a server's append) against one leaf at a time, whose subtrees
    the test above checks against MemoryTree."""
    leaves = _leaves(start + sum(batches))
    one_by_one, expected = Frontier(), list[tuple[Span, bytes]]()
    for leaf in leaves:
        one_by_one, completed = one_by_one.append(leaf)
        expected.extend(completed)
    extended, nodes = Frontier().extend(leaves[:start])
    at = start
    for count in batches:
        extended, more = extended.extend(leaves[at : at + count])
        nodes.extend(more)
        at += count
    assert extended == one_by_one
    assert [(Span(p << lv, (p + 1) << lv), h) for lv, p, h in nodes] == expected


def test_memory_tree_built_at_once_equals_appended() -> None:
    leaves = _leaves(77)
    appended = MemoryTree()
    for leaf in leaves:
        appended.append(leaf)
    for size in range(78):
        assert MemoryTree(leaves).root(size) == appended.root(size) == root(leaves[:size])


def test_spans_are_tree_nodes_and_decompose_into_full_subtrees() -> None:
    assert full_subtrees(Span(8, 15)) == (Span(8, 12), Span(12, 14), Span(14, 15))
    assert full_subtrees(Span(0, 8)) == (Span(0, 8),)
    with pytest.raises(AuditLogError, match="not a node"):
        full_subtrees(Span(2, 6))
    with pytest.raises(AuditLogError, match="empty"):
        Span(3, 3)
    assert inclusion_spans(5, 7) == (Span(4, 5), Span(6, 7), Span(0, 4))
    assert consistency_spans(3, 7) == (Span(2, 3), Span(3, 4), Span(0, 2), Span(4, 7))
    with pytest.raises(AuditLogError, match="leaf index got 7"):
        inclusion_spans(7, 7)
    with pytest.raises(AuditLogError, match="old tree size got 8"):
        consistency_spans(8, 7)
    with pytest.raises(AuditLogError, match="not a full subtree"):
        VECTOR_TREE.subtree_hashes([Span(0, 9)])
    assert span_hashes(VECTOR_TREE, [Span(4, 7)]) == (root(VECTOR_TREE.subtree_hashes(
        [Span(4, 5), Span(5, 6), Span(6, 7)])),)  # fmt: skip


@st.composite
def selection_in_tree(draw: st.DrawFn) -> tuple[int, Selection]:
    size = draw(st.integers(0, 300))
    indices = draw(st.sets(st.integers(0, size - 1), max_size=size)) if size else set()
    return size, Selection.of_indices(sorted(indices))


@given(selection_in_tree(), st.integers(0, 255))
def test_multiproofs_lead_to_the_root_and_no_change_does(
    case: tuple[int, Selection], bit: int
) -> None:
    size, selection = case
    tree = MemoryTree(_leaves(size))
    leaves = list(tree.subtree_hashes([Span(i, i + 1) for i in selection.indices()]))
    proof = span_hashes(tree, selection_spans(selection, size))
    assert selection_root(selection, size, leaves, proof) == tree.root()
    for i in range(len(proof)):
        changed = [*proof[:i], _flip(proof[i], bit), *proof[i + 1 :]]
        assert selection_root(selection, size, leaves, changed) != tree.root()
    for i in range(len(leaves)):
        changed = [*leaves[:i], _flip(leaves[i], bit), *leaves[i + 1 :]]
        assert selection_root(selection, size, changed, proof) != tree.root()
    wrong = [[*proof, SOME_HASH], [SOME_HASH, *proof]] + ([list(proof[:-1])] if proof else [])
    for changed in wrong:
        with pytest.raises(AuditVerificationError, match="too"):
            selection_root(selection, size, leaves, changed)


@given(st.integers(1, 5000), st.data())
def test_a_range_multiproof_is_at_most_two_paths(size: int, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, size - 1))
    end = data.draw(st.integers(start + 1, size))
    spans = selection_spans(Selection(((start, end),)), size)
    assert len(spans) <= 2 * math.ceil(math.log2(size)) if size > 1 else not spans


def test_selection_forms_are_unique() -> None:
    assert Selection.of_indices([1, 2, 3, 7, 9, 10]).runs == ((1, 4), (7, 8), (9, 11))
    assert Selection.of_indices([1, 2, 3, 7, 9, 10]).describe() == "1..3, 7, 9..10"
    for runs in (((3, 3),), ((1, 4), (4, 6)), ((5, 6), (1, 2)), ((1, 4), (2, 6))):
        with pytest.raises(AuditLogError):
            Selection(runs)
    with pytest.raises(AuditLogError, match="not ascending"):
        Selection.of_indices([4, 2])
    with pytest.raises(AuditVerificationError, match="audit entry 8: beyond"):
        selection_spans(Selection(((5, 10),)), 8)
