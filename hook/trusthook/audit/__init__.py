"""The tamper-evident audit log, its pure core: entries, RFC 9162 Merkle trees and proofs,
C2SP signed-note checkpoints, the offline bundle and its verifier (docs/audit.md).

A log appends ``AuditEntry.canonical()`` leaves, stores the full subtree hashes that
``Frontier.append`` returns, signs checkpoints with ``sign_checkpoint`` and answers
proofs through a ``SubtreeSource``; an auditor checks an exported ``Bundle`` with
``verify_bundle``. Nothing here does I/O.
"""

from trusthook.audit.bundle import Bundle, Consistency, export_bundle
from trusthook.audit.checkpoint import (
    Checkpoint,
    OpenedCheckpoint,
    open_checkpoint,
    sign_checkpoint,
)
from trusthook.audit.entry import (
    MAX_LAUNCHES,
    AuditEntry,
    EventType,
    Subject,
    SubjectKind,
    plain_json,
)
from trusthook.audit.merkle import (
    EMPTY_ROOT,
    Span,
    combine,
    consistency_spans,
    inclusion_spans,
    leaf_hash,
    needed_subtrees,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from trusthook.audit.multiproof import Selection, selection_root, selection_spans
from trusthook.audit.note import NoteSigner, OpenedNote, VerifierKey, open_note
from trusthook.audit.tree import (
    Frontier,
    MemoryTree,
    SubtreeSource,
    consistency_proof,
    inclusion_proof,
    span_hashes,
    tree_root,
)
from trusthook.audit.verify import KeyAnchor, VerifiedBundle, verify_bundle
from trusthook.audit.witness import (
    WitnessKey,
    WitnessSigner,
    cosign_checkpoint,
    verify_cosignature,
)

__all__ = [
    "EMPTY_ROOT",
    "MAX_LAUNCHES",
    "AuditEntry",
    "Bundle",
    "Checkpoint",
    "Consistency",
    "EventType",
    "Frontier",
    "KeyAnchor",
    "MemoryTree",
    "NoteSigner",
    "OpenedCheckpoint",
    "OpenedNote",
    "Selection",
    "Span",
    "Subject",
    "SubjectKind",
    "SubtreeSource",
    "VerifiedBundle",
    "VerifierKey",
    "WitnessKey",
    "WitnessSigner",
    "combine",
    "consistency_proof",
    "consistency_spans",
    "cosign_checkpoint",
    "export_bundle",
    "inclusion_proof",
    "inclusion_spans",
    "leaf_hash",
    "needed_subtrees",
    "node_hash",
    "open_checkpoint",
    "open_note",
    "plain_json",
    "selection_root",
    "selection_spans",
    "sign_checkpoint",
    "span_hashes",
    "tree_root",
    "verify_bundle",
    "verify_consistency",
    "verify_cosignature",
    "verify_inclusion",
]
