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
from trusthook.audit.entry import AuditEntry, EventType, Subject, SubjectKind
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
from trusthook.audit.note import NoteSigner, OpenedNote, VerifierKey, cosign, open_note
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

__all__ = [
    "EMPTY_ROOT",
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
    "combine",
    "consistency_proof",
    "consistency_spans",
    "cosign",
    "export_bundle",
    "inclusion_proof",
    "inclusion_spans",
    "leaf_hash",
    "needed_subtrees",
    "node_hash",
    "open_checkpoint",
    "open_note",
    "selection_root",
    "selection_spans",
    "sign_checkpoint",
    "span_hashes",
    "tree_root",
    "verify_bundle",
    "verify_consistency",
    "verify_inclusion",
]
