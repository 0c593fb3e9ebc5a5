"""The offline audit bundle: one JSON file holding entries of a log, its signed checkpoint, its
key, the entries' leaf hashes, one multi-proof that leads them to the checkpoint's root, and
optionally a consistency proof from an older tree size (docs/audit.md, "Bundle").

``Bundle.from_bytes`` refuses anything but that shape; it checks forms, not truths:
``trusthook.audit.verify`` does those. ``export_bundle`` makes one from a log's stored hashes.
Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from trusthook.audit.checkpoint import open_checkpoint
from trusthook.audit.entry import AuditEntry
from trusthook.audit.merkle import HASH_SIZE, MAX_SIZE, Span, combine, needed_subtrees
from trusthook.audit.multiproof import Selection, selection_spans
from trusthook.audit.note import VerifierKey
from trusthook.audit.tree import SubtreeSource, consistency_proof
from trusthook.common import b64
from trusthook.errors import AuditLogError

FORMAT = "trusthook-audit-bundle/v1"
_MEMBERS = frozenset(
    {"format", "key", "checkpoint", "selection", "entries", "leaf_hashes", "proof", "consistency"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Consistency:
    """An RFC 9162 consistency proof from the tree of ``old_size`` to the checkpoint's."""

    old_size: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle:
    """A parsed, not yet verified, bundle. ``leaf_hashes`` and ``entries`` follow the
    selection's indices in order (verification names the first that does not)."""

    key: VerifierKey
    checkpoint: str  # the signed note, verbatim
    selection: Selection
    entries: tuple[AuditEntry, ...]
    leaf_hashes: tuple[bytes, ...]
    proof: tuple[bytes, ...]
    consistency: Consistency | None = None

    def to_json(self) -> dict[str, Any]:
        consistency = self.consistency and {
            "old_size": self.consistency.old_size,
            "proof": [b64.encode(h) for h in self.consistency.proof],
        }
        return {
            "format": FORMAT,
            "key": self.key.encode(),
            "checkpoint": self.checkpoint,
            "selection": [list(run) for run in self.selection.runs],
            "entries": [e.to_json() for e in self.entries],
            "leaf_hashes": [b64.encode(h) for h in self.leaf_hashes],
            "proof": [b64.encode(h) for h in self.proof],
            "consistency": consistency,
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Bundle:
        """The bundle in a file's bytes: UTF-8 JSON without repeated keys or NaN."""
        try:
            data = json.loads(raw, object_pairs_hook=_no_repeats, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            raise AuditLogError(f"audit bundle is not valid JSON: {e}") from None
        return cls.from_json(data)

    @classmethod
    def from_json(cls, data: object) -> Bundle:
        if not isinstance(data, dict):
            raise AuditLogError("audit bundle got no object, expected a JSON object")
        missing = sorted(_MEMBERS - set(data))
        extra = sorted(set(data) - _MEMBERS)
        if missing or extra:
            what = f"no member {missing[0]!r}" if missing else f"member {extra[0]!r}"
            raise AuditLogError(f"audit bundle got {what}, expected {', '.join(sorted(_MEMBERS))}")
        if data["format"] != FORMAT:
            raise AuditLogError(
                f"audit bundle format got {data['format']!r:.48}, expected {FORMAT!r}"
            )
        selection = _selection(data["selection"])
        entries = _array(data["entries"], "entries")
        leaves = _array(data["leaf_hashes"], "leaf_hashes")
        # the indices the positions present stand for: no more (a selection may claim many)
        indices = list(islice(selection.indices(), max(len(entries), len(leaves))))
        return cls(
            key=VerifierKey.parse(_text(data["key"], "key")),
            checkpoint=_text(data["checkpoint"], "checkpoint"),
            selection=selection,
            entries=_entries(entries, indices),
            leaf_hashes=_hashes(leaves, "leaf_hashes", indices),
            proof=_hashes(data["proof"], "proof", None),
            consistency=_consistency(data["consistency"]),
        )


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        names = [k for k, _ in pairs]
        repeated = next(k for i, k in enumerate(names) if k in names[:i])
        raise ValueError(f"member {repeated[:40]!r} appears twice in one object")
    return out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise AuditLogError(f"audit bundle {what} got {type(value).__name__}, expected a string")
    return value


def _array(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise AuditLogError(f"audit bundle {what} got {type(value).__name__}, expected an array")
    return value


def _size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE:
        raise AuditLogError(f"audit bundle {what} got {value!r:.24}, expected 0..{MAX_SIZE}")
    return value


def _selection(value: object) -> Selection:
    runs = []
    for i, run in enumerate(_array(value, "selection")):
        if not isinstance(run, list) or len(run) != 2:
            raise AuditLogError(
                f"audit bundle selection[{i}] got {run!r:.24}, expected [start, end]"
            )
        runs.append((_size(run[0], f"selection[{i}][0]"), _size(run[1], f"selection[{i}][1]")))
    return Selection(tuple(runs))


def _where(position: int, indices: Sequence[int], what: str) -> str:
    if position < len(indices):
        return f"audit entry {indices[position]}"
    return f"audit bundle {what}[{position}] (beyond the selection)"


def _entries(items: list[Any], indices: Sequence[int]) -> tuple[AuditEntry, ...]:
    return tuple(
        AuditEntry.from_json(item, _where(p, indices, "entries")) for p, item in enumerate(items)
    )


def _hashes(value: object, what: str, indices: Sequence[int] | None) -> tuple[bytes, ...]:
    """Base64 hashes; ``indices`` (for leaf hashes) name the entry each belongs to."""
    out = []
    for p, item in enumerate(_array(value, what)):
        try:
            h = b64.decode(item, what, ValueError)
        except ValueError:
            h = b""
        if len(h) != HASH_SIZE:  # named only now: building the name costs more than decoding
            where = f"audit bundle {what}[{p}]" if indices is None else _where(p, indices, what)
            got = f"{len(h)} bytes" if h else "no base64 string"
            noun = "hash" if indices is None else "leaf hash"
            raise AuditLogError(f"{where}: {noun} got {got}, expected the base64 of 32 bytes")
        out.append(h)
    return tuple(out)


def _consistency(value: object) -> Consistency | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"old_size", "proof"}:
        raise AuditLogError(
            "audit bundle consistency got another shape, expected null or {old_size, proof}"
        )
    return Consistency(
        old_size=_size(value["old_size"], "consistency.old_size"),
        proof=_hashes(value["proof"], "consistency.proof", None),
    )


def export_bundle(
    source: SubtreeSource,
    *,
    key: VerifierKey,
    checkpoint: str,
    entries: Sequence[AuditEntry],
    since: int | None = None,
) -> Bundle:
    """The bundle of ``entries`` (ascending by index) under the log's signed ``checkpoint``,
    with their leaf hashes and multi-proof from ``source``, and a consistency proof from tree
    size ``since`` if given (the size of the auditor's last checkpoint)."""
    size = open_checkpoint(checkpoint, key).checkpoint.size
    selection = Selection.of_indices(e.index for e in entries)
    spans = selection_spans(selection, size)
    leaves = [Span(i, i + 1) for i in selection.indices()]
    wanted = [*leaves, *needed_subtrees(spans)]
    fetched = dict(zip(wanted, source.subtree_hashes(wanted), strict=True))
    return Bundle(
        key=key,
        checkpoint=checkpoint,
        selection=selection,
        entries=tuple(entries),
        leaf_hashes=tuple(fetched[leaf] for leaf in leaves),
        proof=combine(spans, fetched),
        consistency=None
        if since is None
        else Consistency(old_size=since, proof=consistency_proof(source, since, size)),
    )
