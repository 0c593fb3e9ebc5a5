"""Offline verification of an audit bundle: no server, no database (docs/audit.md,
"Verifying a bundle"). Pure: takes parsed bundles and note texts, returns what it verified or
raises one ``AuditVerificationError`` (``AuditLogError`` for a malformed part) whose message
names the first bad entry, ``audit entry N: ...``, wherever an entry can be named.

The checks, in order: the key (pinned by the caller, else proven by the trusted checkpoint,
else taken from the bundle, and reported as such); the bundle's checkpoint signature; each
position's entry index; each entry's leaf hash; the leaf hashes and multi-proof against the
checkpoint's root; then, given a trusted bundle, the entries both hold; given a trusted
checkpoint (or bundle), consistency of the bundle's tree with it; given witness keys, each
witness's cosignature/v1 on the trusted checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

from trusthook.audit.bundle import Bundle
from trusthook.audit.checkpoint import Checkpoint, open_checkpoint
from trusthook.audit.entry import AuditEntry
from trusthook.audit.merkle import verify_consistency
from trusthook.audit.multiproof import Selection, selection_root
from trusthook.audit.note import VerifierKey
from trusthook.audit.witness import WitnessKey, verify_cosignature
from trusthook.errors import AuditLogError, AuditVerificationError


class KeyAnchor(StrEnum):
    """Why the log key was believed."""

    PINNED = "given by the caller"
    TRUSTED_CHECKPOINT = "it signed the trusted checkpoint"
    TRUSTED_BUNDLE = "it signed the trusted bundle"
    BUNDLE = "taken from the bundle itself: compare it with the log's published key"


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedBundle:
    """What ``verify_bundle`` proved: these entries are in the log ``key`` signs, at these
    indices of the tree ``checkpoint`` heads, and (if ``extends`` is set) that tree extends the
    trusted checkpoint ``extends``."""

    key: VerifierKey
    anchor: KeyAnchor
    checkpoint: Checkpoint
    selection: Selection
    entries: tuple[AuditEntry, ...]
    extends: Checkpoint | None
    unchecked_consistency_from: int | None  # the bundle's proof, when nothing to check it by
    witnessed_by: tuple[WitnessKey, ...] = ()  # whose cosignatures on ``extends`` verified


@contextmanager
def _context(what: str) -> Iterator[None]:
    """Prefix the audit errors raised inside with ``what``."""
    try:
        yield
    except (AuditLogError, AuditVerificationError) as e:
        raise type(e)(f"{what}: {e}") from e


def verify_bundle(
    bundle: Bundle,
    trusted_checkpoint: str | bytes | None = None,
    *,
    trusted_bundle: Bundle | None = None,
    key: VerifierKey | None = None,
    witnesses: Sequence[WitnessKey] = (),
) -> VerifiedBundle:
    """Verify ``bundle`` against its checkpoint, and against ``trusted_checkpoint`` (a signed
    note) or ``trusted_bundle`` (one verified before) if given; ``key`` pins the log's key;
    each of ``witnesses`` must have cosigned ``trusted_checkpoint``."""
    if trusted_checkpoint is not None and trusted_bundle is not None:
        raise AuditLogError("give a trusted checkpoint or a trusted bundle, not both")
    if witnesses and trusted_checkpoint is None:
        raise AuditLogError("witness keys check the trusted checkpoint: give one")
    log_key, anchor = bundle.key, KeyAnchor.BUNDLE
    if key is not None:
        if bundle.key != key:
            raise AuditVerificationError(
                f"audit bundle key got {bundle.key.label}, expected the trusted {key.label}"
            )
        anchor = KeyAnchor.PINNED
    with _context("bundle checkpoint"):
        checkpoint = open_checkpoint(bundle.checkpoint, log_key).checkpoint
    _check_entries(bundle, checkpoint)
    trusted: Checkpoint | None = None
    if trusted_bundle is not None:
        with _context("trusted bundle"):
            earlier = verify_bundle(trusted_bundle, key=log_key)
        _check_overlap(trusted_bundle, bundle)
        trusted = earlier.checkpoint
        anchor = KeyAnchor.PINNED if key is not None else KeyAnchor.TRUSTED_BUNDLE
    elif trusted_checkpoint is not None:
        with _context("trusted checkpoint"):
            trusted = open_checkpoint(trusted_checkpoint, log_key).checkpoint
            for witness in witnesses:
                verify_cosignature(trusted_checkpoint, witness)
        anchor = KeyAnchor.PINNED if key is not None else KeyAnchor.TRUSTED_CHECKPOINT
    if trusted is not None:
        _check_extends(trusted, checkpoint, bundle)
    unchecked = bundle.consistency.old_size if bundle.consistency and trusted is None else None
    return VerifiedBundle(
        key=log_key,
        anchor=anchor,
        checkpoint=checkpoint,
        selection=bundle.selection,
        entries=bundle.entries,
        extends=trusted,
        unchecked_consistency_from=unchecked,
        witnessed_by=tuple(witnesses),
    )


def _check_entries(bundle: Bundle, checkpoint: Checkpoint) -> None:
    """Every selected index has its entry, in place and unaltered, and the leaf hashes and
    proof lead to the checkpoint's root; else name the first entry that is not so."""
    selection, entries, leaves = bundle.selection, bundle.entries, bundle.leaf_hashes
    selection.check_within(checkpoint.size)
    try:
        root = selection_root(selection, checkpoint.size, leaves, bundle.proof)
    except AuditVerificationError as e:
        root, reason = None, str(e)
    else:
        reason = "they lead to another root"
    count = selection.count
    for position, index in enumerate(selection.indices()):
        if position >= len(entries):
            raise AuditVerificationError(
                f"audit entry {index}: missing: the bundle holds {len(entries)} entries,"
                f" its selection {count}"
            )
        entry = entries[position]
        if entry.index != index:
            raise AuditVerificationError(
                f"audit entry {index}: missing or out of place: entry {entry.index} stands in"
                " its place (an entry was dropped, inserted or moved)"
            )
        if position < len(leaves) and entry.leaf_hash() != leaves[position]:
            raise AuditVerificationError(
                f"audit entry {index}: altered: it does not hash to its leaf in the log"
            )
    if len(entries) > count:
        raise AuditVerificationError(
            f"audit entry {entries[count].index}: inserted: not in the bundle's selection"
            f" {selection.describe()}"
        )
    if root != checkpoint.root:
        raise AuditVerificationError(
            f"audit entries {selection.describe()}: the bundle's leaf hashes and proof do not"
            f" lead to the root of tree size {checkpoint.size} ({reason}): a hash in the bundle"
            " was altered"
        )


def _check_overlap(earlier: Bundle, bundle: Bundle) -> None:
    """The entries both (verified) bundles hold are the same; else name the first that
    differs."""
    now = dict(zip(bundle.selection.indices(), bundle.leaf_hashes, strict=True))
    for index, leaf in zip(earlier.selection.indices(), earlier.leaf_hashes, strict=True):
        current = now.get(index)
        if current is not None and current != leaf:
            raise AuditVerificationError(
                f"audit entry {index}: differs from the trusted bundle's entry {index}:"
                " the log was forked or rewritten"
            )


def _check_extends(trusted: Checkpoint, checkpoint: Checkpoint, bundle: Bundle) -> None:
    """The bundle's tree is the trusted one or extends it."""
    old, new = trusted.size, checkpoint.size
    forked = f"audit entries 0..{old - 1}: the log was forked or rewritten:"
    if old > new:
        raise AuditVerificationError(
            f"bundle checkpoint: tree size {new} is older than the trusted checkpoint's {old};"
            " export the bundle from a newer checkpoint"
        )
    if old == new:
        if trusted.root != checkpoint.root:
            raise AuditVerificationError(
                f"{forked} the trusted checkpoint has another root for tree size {old}"
            )
        return
    if old == 0:
        return
    proof = bundle.consistency
    if proof is None or proof.old_size != old:
        got = "none" if proof is None else f"one from tree size {proof.old_size}"
        raise AuditVerificationError(
            f"audit bundle consistency proof got {got}, expected one from the trusted"
            f" checkpoint's tree size {old}; export the bundle since that size"
        )
    try:
        verify_consistency(
            old_size=old,
            new_size=new,
            old_root=trusted.root,
            new_root=checkpoint.root,
            proof=proof.proof,
        )
    except AuditVerificationError as e:
        raise AuditVerificationError(
            f"{forked} tree size {new} does not extend the trusted checkpoint's {old} ({e})"
        ) from e
