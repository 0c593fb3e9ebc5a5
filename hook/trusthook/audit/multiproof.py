"""One proof for many leaves: the hashes of the tree nodes that hold none of the selected
leaves, maximal and left to right, from which the selected leaves' hashes lead to the root.
For a contiguous range of a tree of size n it holds at most 2 * log2(n) hashes; for k leaves
spread out, at most k * log2(n). Pure, standard library only (docs/audit.md, "Multi-proof").

    MULTI(S, D[lo:hi]) = [MTH(D[lo:hi])]                      if S holds none of lo..hi-1
                       = []                                   if S holds all of them
                       = MULTI(S, D[lo:lo+k]) ++ MULTI(S, D[lo+k:hi])   otherwise,
    k the largest power of two smaller than hi - lo (RFC 9162's split).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from trusthook.audit.merkle import EMPTY_ROOT, HASH_SIZE, Span, node_hash, root, split_point
from trusthook.errors import AuditLogError, AuditVerificationError


@dataclass(frozen=True, slots=True)
class Selection:
    """Leaf indices as runs ``(start, end)`` (``end`` excluded): non-empty, ascending, neither
    overlapping nor touching, so that every set of indices has exactly one form."""

    runs: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        previous_end = -1
        for start, end in self.runs:
            if not previous_end < start < end:
                raise AuditLogError(
                    f"selection run got {start}..{end - 1}, expected a non-empty run after"
                    f" index {previous_end} and not touching it"
                )
            previous_end = end

    @classmethod
    def of_indices(cls, indices: Iterable[int]) -> Selection:
        """The selection of ``indices``, which must be ascending without repeats."""
        runs: list[tuple[int, int]] = []
        for i in indices:
            if runs and i == runs[-1][1]:
                runs[-1] = (runs[-1][0], i + 1)
            elif runs and i < runs[-1][1]:
                raise AuditLogError(f"index {i} follows index {runs[-1][1] - 1}: not ascending")
            else:
                runs.append((i, i + 1))
        return cls(tuple(runs))

    @property
    def count(self) -> int:
        return sum(end - start for start, end in self.runs)

    def indices(self) -> Iterator[int]:
        for start, end in self.runs:
            yield from range(start, end)

    def describe(self, most: int = 4) -> str:
        """For messages: ``0..999``, ``3, 7..9``, or the first ``most`` runs and a count."""
        parts = [f"{s}" if e == s + 1 else f"{s}..{e - 1}" for s, e in self.runs[:most]]
        if len(self.runs) > most:
            parts.append(f"and {len(self.runs) - most} more runs")
        return ", ".join(parts) or "none"

    def check_within(self, size: int) -> None:
        """Refuse indices the tree of ``size`` does not have, naming the first."""
        if self.runs and self.runs[-1][1] > size:
            first = max(size, self.runs[-1][0])
            raise AuditVerificationError(
                f"audit entry {first}: beyond the checkpoint's tree size {size}"
            )


class _Counter:
    """How many selected indices lie below a given index, in O(log runs)."""

    def __init__(self, selection: Selection) -> None:
        self._starts = [s for s, _ in selection.runs]
        self._ends = [e for _, e in selection.runs]
        self._before = [0]
        for s, e in selection.runs:
            self._before.append(self._before[-1] + e - s)

    def below(self, x: int) -> int:
        j = bisect.bisect_right(self._starts, x) - 1
        if j < 0:
            return 0
        return self._before[j] + min(x, self._ends[j]) - self._starts[j]


def selection_spans(selection: Selection, size: int) -> tuple[Span, ...]:
    """The spans whose hashes make the multi-proof of ``selection`` in the tree of ``size``."""
    selection.check_within(size)
    counter = _Counter(selection)
    out: list[Span] = []

    def walk(lo: int, hi: int) -> None:
        held = counter.below(hi) - counter.below(lo)
        if held == 0:
            out.append(Span(lo, hi))
        elif held < hi - lo:
            k = split_point(hi - lo)
            walk(lo, lo + k)
            walk(lo + k, hi)

    if size:
        walk(0, size)
    return tuple(out)


def selection_root(
    selection: Selection, size: int, leaf_hashes: Sequence[bytes], proof: Sequence[bytes]
) -> bytes:
    """The root that the selected leaves' hashes (in index order) and the multi-proof lead to,
    for the tree of ``size``; AuditVerificationError if the counts do not fit the selection."""
    selection.check_within(size)
    if len(leaf_hashes) != selection.count:
        raise AuditVerificationError(
            f"got {len(leaf_hashes)} leaf hashes, expected {selection.count} (the selection)"
        )
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise AuditVerificationError(f"proof hash {i} has {len(h)} bytes, expected 32")
    if not size:
        if proof:
            raise AuditVerificationError("the proof is too long: the empty tree has none")
        return EMPTY_ROOT
    counter = _Counter(selection)
    remaining = iter(proof)

    def walk(lo: int, hi: int) -> bytes:
        first, last = counter.below(lo), counter.below(hi)
        if first == last:
            taken = next(remaining, None)
            if taken is None:
                raise AuditVerificationError(f"the proof is too short (tree size {size})")
            return taken
        if last - first == hi - lo:
            return root(leaf_hashes[first:last])
        k = split_point(hi - lo)
        return node_hash(walk(lo, lo + k), walk(lo + k, hi))

    result = walk(0, size)
    if next(remaining, None) is not None:
        raise AuditVerificationError(f"the proof is too long (tree size {size})")
    return result
