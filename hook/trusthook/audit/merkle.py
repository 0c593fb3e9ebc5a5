"""RFC 9162 section 2.1 Merkle trees (RFC 6962's, SHA-256): hashes, tree heads, and the
inclusion and consistency proofs, generated as lists of spans and verified exactly as the RFC's
algorithms say. Pure, standard library only.

A log stores the hash of every *full subtree* it completes (``Span.is_full``: a power-of-two
run of leaves starting at a multiple of its size), once, when its last leaf is appended. Every
node of every tree head the log will ever have is either such a subtree or, on the right edge,
a fold of a few of them (``full_subtrees``). So a proof is generated in three steps: list its
spans (``inclusion_spans``, ``consistency_spans``), fetch the full subtrees they need in one
look-up (``needed_subtrees``), and fold them (``combine``). ``trusthook.audit.tree`` runs the
steps over a ``SubtreeSource``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from trusthook.errors import AuditLogError, AuditVerificationError

HASH_SIZE = 32
EMPTY_ROOT = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
MAX_SIZE = 2**63 - 1  # tree sizes are uint64 on the wire; int64 in the server's database


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(size: int) -> int:
    """k, the largest power of two smaller than ``size`` (at least 2): where MTH splits."""
    return 1 << ((size - 1).bit_length() - 1)


@dataclass(frozen=True, slots=True, order=True)
class Span:
    """The leaves ``start`` to ``end - 1``: a node of a tree, whose hash is MTH(D[start:end])."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise AuditLogError(f"span {self.start}..{self.end} is empty or negative")

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def is_full(self) -> bool:
        """A complete subtree: 2**level leaves starting at a multiple of 2**level."""
        size = self.size
        return size & (size - 1) == 0 and self.start % size == 0

    @property
    def level(self) -> int:
        """Height of a full subtree (0 for a leaf); its storage key is (level, position)."""
        return self.size.bit_length() - 1

    @property
    def position(self) -> int:
        """Index of a full subtree among those of its level."""
        return self.start >> self.level


def full_subtrees(span: Span) -> tuple[Span, ...]:
    """The full subtrees, left to right, whose right fold is the hash of ``span``: ``span``
    itself if full, else its right-edge decomposition. ``span`` must be a node of some tree:
    its start a multiple of the power of two at least its size (every span this module lists
    is). The pieces are the binary digits of its size, largest first."""
    size = span.size
    if span.start % (1 << (size - 1).bit_length()):
        raise AuditLogError(f"span {span.start}..{span.end} is not a node of any tree")
    pieces = []
    start = span.start
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            pieces.append(Span(start, start + (1 << level)))
            start += 1 << level
    return tuple(pieces)


def fold(hashes: Sequence[bytes]) -> bytes:
    """The hash of a node from its full subtrees' hashes (``full_subtrees`` order)."""
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def needed_subtrees(spans: Iterable[Span]) -> tuple[Span, ...]:
    """The full subtrees to fetch to hash every span in ``spans``, each once, in order."""
    return tuple(dict.fromkeys(piece for span in spans for piece in full_subtrees(span)))


def combine(spans: Iterable[Span], fetched: Mapping[Span, bytes]) -> tuple[bytes, ...]:
    """The hash of each span, from the ``fetched`` hashes of ``needed_subtrees(spans)``."""
    return tuple(fold([fetched[piece] for piece in full_subtrees(span)]) for span in spans)


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of the leaves whose hashes are given: pairs level by level, an odd last node rising
    unchanged, which is the RFC's split at the largest power of two."""
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _check_size(size: int, what: str) -> None:
    if not 0 <= size <= MAX_SIZE:
        raise AuditLogError(f"{what} got {size}, expected 0..{MAX_SIZE}")


def inclusion_spans(index: int, size: int) -> tuple[Span, ...]:
    """RFC 9162 2.1.3.1 PATH(index, D[size]) as spans, leaf's sibling first."""
    _check_size(size, "tree size")
    if not 0 <= index < size:
        raise AuditLogError(f"leaf index got {index}, expected 0..{size - 1} (tree size {size})")
    path = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            path.append(Span(lo + k, hi))
            hi = lo + k
        else:
            path.append(Span(lo, lo + k))
            lo += k
    return tuple(reversed(path))


def consistency_spans(old_size: int, new_size: int) -> tuple[Span, ...]:
    """RFC 9162 2.1.4.1 PROOF(old_size, D[new_size]) as spans; empty if the sizes are equal or
    the old tree is empty (nothing to prove)."""
    _check_size(new_size, "new tree size")
    if not 0 <= old_size <= new_size:
        raise AuditLogError(f"old tree size got {old_size}, expected 0..{new_size}")
    if old_size in (0, new_size):
        return ()
    appended = []
    lo, hi, whole = 0, new_size, True  # SUBPROOF(old_size - lo, D[lo:hi], whole)
    while old_size != hi:
        k = split_point(hi - lo)
        if old_size - lo <= k:
            appended.append(Span(lo + k, hi))
            hi = lo + k
        else:
            appended.append(Span(lo, lo + k))
            lo, whole = lo + k, False
    first = () if whole else (Span(lo, hi),)
    return first + tuple(reversed(appended))


def _check_hashes(proof: Sequence[bytes], *named: tuple[str, bytes]) -> None:
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise AuditVerificationError(f"proof hash {i} has {len(h)} bytes, expected 32")
    for what, h in named:
        if len(h) != HASH_SIZE:
            raise AuditVerificationError(f"{what} has {len(h)} bytes, expected 32")


def verify_inclusion(
    *, leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 2.1.3.2: ``leaf`` (a leaf hash) is at ``index`` in the tree of ``size`` whose
    head is ``root``; else AuditVerificationError."""
    _check_hashes(proof, ("leaf hash", leaf), ("root", root))
    if not 0 <= index < size:
        raise AuditVerificationError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise AuditVerificationError(f"inclusion proof of leaf {index} is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise AuditVerificationError(f"inclusion proof of leaf {index} is too short")
    if r != root:
        raise AuditVerificationError(
            f"inclusion proof of leaf {index} does not lead to the root of tree size {size}"
        )


def verify_consistency(
    *, old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2: the tree of ``new_size`` with head ``new_root`` extends the tree of
    ``old_size`` with head ``old_root``; else AuditVerificationError. An empty old tree is
    extended by every tree; equal sizes need equal roots; both with an empty proof."""
    _check_hashes(proof, ("old root", old_root), ("new root", new_root))
    if not 0 <= old_size <= new_size:
        raise AuditVerificationError(f"tree size {new_size} cannot extend tree size {old_size}")
    if old_size in (0, new_size):
        if proof:
            raise AuditVerificationError("consistency proof between these sizes must be empty")
        if old_size == new_size and old_root != new_root:
            raise AuditVerificationError(f"two different roots for tree size {old_size}")
        return
    if not proof:
        raise AuditVerificationError("consistency proof is empty")
    fr, sr = _consistency_roots(old_size, new_size, old_root, proof)
    if fr != old_root:
        raise AuditVerificationError(
            f"consistency proof does not lead to the root of tree size {old_size}"
        )
    if sr != new_root:
        raise AuditVerificationError(
            f"consistency proof does not lead to the root of tree size {new_size}"
        )


def _consistency_roots(
    old_size: int, new_size: int, old_root: bytes, proof: Sequence[bytes]
) -> tuple[bytes, bytes]:
    """Steps 2 to 6 of RFC 9162 2.1.4.2: the old and new roots that ``proof`` leads to."""
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise AuditVerificationError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise AuditVerificationError("consistency proof is too short")
    return fr, sr
