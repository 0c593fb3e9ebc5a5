"""A log's tree over stored subtree hashes: the ``SubtreeSource`` a log implements (the
server over its database, ``MemoryTree`` in memory), proofs and tree heads generated from one,
and the ``Frontier`` that appending keeps. Pure but for ``MemoryTree``'s own lists.

Appending leaf ``i`` completes the full subtrees that end at ``i + 1``: the leaf itself and one
more for each trailing one bit of ``i``. ``Frontier.append`` returns them; a log stores each
under its (level, position), never changes it, and answers any proof from them (see
``trusthook.audit.merkle``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from trusthook.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    Span,
    combine,
    consistency_spans,
    fold,
    full_subtrees,
    inclusion_spans,
    needed_subtrees,
    node_hash,
)
from trusthook.errors import AuditLogError


class SubtreeSource(Protocol):
    """Where a log keeps its full subtree hashes."""

    def subtree_hashes(self, spans: Sequence[Span]) -> Sequence[bytes]:
        """The stored hash of each full subtree in ``spans``, in the same order."""
        ...


def span_hashes(source: SubtreeSource, spans: Sequence[Span]) -> tuple[bytes, ...]:
    """The hash of each span (any tree node), with one look-up in ``source``."""
    needed = needed_subtrees(spans)
    return combine(spans, dict(zip(needed, source.subtree_hashes(needed), strict=True)))


def tree_root(source: SubtreeSource, size: int) -> bytes:
    """The tree head at ``size``, for any size up to the log's."""
    return span_hashes(source, (Span(0, size),))[0] if size else EMPTY_ROOT


def inclusion_proof(source: SubtreeSource, index: int, size: int) -> tuple[bytes, ...]:
    """RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size``."""
    return span_hashes(source, inclusion_spans(index, size))


def consistency_proof(source: SubtreeSource, old_size: int, new_size: int) -> tuple[bytes, ...]:
    """RFC 9162 consistency proof from the tree of ``old_size`` to the tree of ``new_size``."""
    return span_hashes(source, consistency_spans(old_size, new_size))


@dataclass(frozen=True, slots=True)
class Frontier:
    """The right edge of a log: the hashes of ``full_subtrees(Span(0, size))``, all a log needs
    in memory to append and to compute its current tree head."""

    size: int = 0
    hashes: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.hashes) != self.size.bit_count():
            raise AuditLogError(
                f"frontier of size {self.size} got {len(self.hashes)} hashes,"
                f" expected {abs(self.size).bit_count()}"
            )

    @staticmethod
    def spans(size: int) -> tuple[Span, ...]:
        """The full subtrees to fetch to rebuild the frontier of a log of ``size`` leaves."""
        return full_subtrees(Span(0, size)) if size else ()

    def append(self, leaf: bytes) -> tuple[Frontier, tuple[tuple[Span, bytes], ...]]:
        """The frontier with leaf hash ``leaf`` appended, and the full subtrees (span, hash)
        that it completes, leaf first: what the log stores."""
        frontier, nodes = self.extend([leaf])
        return frontier, tuple(
            (Span(position << level, (position + 1) << level), h) for level, position, h in nodes
        )

    def extend(self, leaves: Sequence[bytes]) -> tuple[Frontier, list[tuple[int, int, bytes]]]:
        """``append`` of each leaf hash in ``leaves`` in one pass: the frontier after the last,
        and every full subtree they complete as its storage key and hash (level, position,
        hash), in ``append``'s order. A server's append does this for every decision, so it
        builds no Span and no intermediate Frontier."""
        index = self.size
        hashes = list(self.hashes)
        nodes: list[tuple[int, int, bytes]] = []
        for leaf in leaves:
            if len(leaf) != HASH_SIZE:
                raise AuditLogError(f"leaf hash got {len(leaf)} bytes, expected 32")
            nodes.append((0, index, leaf))
            merged, level = leaf, 0
            while index >> level & 1:
                merged = node_hash(hashes.pop(), merged)
                level += 1
                nodes.append((level, index >> level, merged))
            hashes.append(merged)
            index += 1
        return Frontier(index, tuple(hashes)), nodes

    def root(self) -> bytes:
        """The tree head at ``size``."""
        return fold(self.hashes) if self.hashes else EMPTY_ROOT


class MemoryTree:
    """A log's full subtree hashes in memory, level by level: ``levels[l][p]`` is the hash of
    leaves ``p * 2**l`` to ``(p + 1) * 2**l - 1``. For the verifier's tests and benchmarks."""

    def __init__(self, leaf_hashes: Sequence[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [list(leaf_hashes)]
        below = self._levels[0]
        while len(below) > 1:
            above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            self._levels.append(above)
            below = above

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf: bytes) -> int:
        """Append leaf hash ``leaf``; its index."""
        index = self.size
        self._levels[0].append(leaf)
        level = 0
        while index >> level & 1:
            pair = self._levels[level][-2:]
            if len(self._levels) == level + 1:
                self._levels.append([])
            self._levels[level + 1].append(node_hash(pair[0], pair[1]))
            level += 1
        return index

    def root(self, size: int | None = None) -> bytes:
        """The tree head at ``size`` (default: all leaves)."""
        return tree_root(self, self.size if size is None else size)

    def subtree_hashes(self, spans: Sequence[Span]) -> Sequence[bytes]:
        out = []
        for span in spans:
            if not span.is_full or span.end > self.size:
                raise AuditLogError(
                    f"span {span.start}..{span.end} is not a full subtree of a log of"
                    f" {self.size} leaves"
                )
            out.append(self._levels[span.level][span.position])
        return out
