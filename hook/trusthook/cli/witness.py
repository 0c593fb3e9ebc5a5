"""``trusthook audit witness``: the I/O of a witness of the server's audit log (docs/audit.md,
"Witness"). ``init`` makes the witness key; ``run`` fetches the log's latest checkpoint over
mutual TLS, checks it against the last one cosigned (``trusthook.audit.witness``, pure),
cosigns it into ``DIR/checkpoint``, or refuses it, keeps its state and saves the evidence."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from trusthook.agent.serverclient import ServerClient, tls_context
from trusthook.audit.checkpoint import Checkpoint, OpenedCheckpoint, open_checkpoint
from trusthook.audit.note import VerifierKey
from trusthook.audit.witness import (
    Start,
    WitnessSigner,
    check_latest,
    consistency_from,
    cosign_checkpoint,
    start_from,
    verify_cosignature,
)
from trusthook.common import b64
from trusthook.common.config import Config
from trusthook.common.files import write_atomic, write_new
from trusthook.common.messages import AuditCheckpointAnswer, AuditProofAnswer
from trusthook.errors import (
    AuditLogError,
    AuditVerificationError,
    ServiceError,
    UsageError,
    WitnessRefusedError,
)

KEY_FILE = "witness.key"
VERIFIER_FILE = "witness.vkey"
CHECKPOINT_FILE = "checkpoint"
REFUSED = 2  # the exit status of a refused history (other failures: 1)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise AuditLogError(f"cannot read the {what} {path}: {e.strerror}") from e


def init(args: argparse.Namespace, _config: Config) -> int:
    state = Path(args.state)
    signer = WitnessSigner.generate(args.name)
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_new(state / KEY_FILE, f"{signer.encode()}\n".encode(), 0o600)
    except FileExistsError:
        raise UsageError(
            f"{state / KEY_FILE} exists: this directory already holds a witness; name a new one"
        ) from None
    except OSError as e:
        raise UsageError(f"cannot write the witness key into {state}: {e.strerror}") from e
    write_atomic(state / VERIFIER_FILE, f"{signer.verifier_key.encode()}\n".encode(), 0o644)
    print(signer.verifier_key.encode())
    return 0


@dataclass(frozen=True, slots=True, kw_only=True)
class _Witness:
    """What every round uses: the state directory, the keys, the basis given on first use."""

    state: Path
    signer: WitnessSigner
    log_key: VerifierKey
    trusted: OpenedCheckpoint | None
    trust_on_first_use: bool


def run(args: argparse.Namespace, _config: Config) -> int:
    if args.interval is not None and not args.interval > 0:
        raise UsageError(f"--interval got {args.interval}, expected a positive number of seconds")
    state = Path(args.state)
    log_key = VerifierKey.parse(args.log_key)
    trusted = None
    if args.trusted_checkpoint:
        raw = _read(Path(args.trusted_checkpoint), "trusted checkpoint")
        try:
            trusted = open_checkpoint(raw, log_key)
        except (AuditLogError, AuditVerificationError) as e:
            raise type(e)(f"trusted checkpoint {args.trusted_checkpoint}: {e}") from e
    witness = _Witness(
        state=state,
        signer=WitnessSigner.parse(_read(state / KEY_FILE, "witness key").decode()),
        log_key=log_key,
        trusted=trusted,
        trust_on_first_use=args.trust_on_first_use,
    )
    context = tls_context(Path(args.server_ca), Path(args.client_cert), Path(args.client_key))
    with ServerClient(args.server, context) as client:
        if args.once:
            return _round(witness, client, now=time.time())
        while True:
            try:
                status = _round(witness, client, now=time.time())
            except ServiceError as e:  # the server is down: try again next round
                print(f"trusthook: audit witness: {e}", file=sys.stderr, flush=True)
            else:
                if status != 0:
                    return status
            time.sleep(args.interval)


def _last_cosigned(witness: _Witness) -> OpenedCheckpoint | None:
    """The witness's ``checkpoint`` file, its log signature and own cosignature checked."""
    path = witness.state / CHECKPOINT_FILE
    if not path.exists():
        return None
    raw = _read(path, "witness checkpoint")
    try:
        opened = open_checkpoint(raw, witness.log_key)
        verify_cosignature(raw, witness.signer.verifier_key)
    except (AuditLogError, AuditVerificationError) as e:
        raise type(e)(f"{path}: {e}") from e
    return opened


def _round(witness: _Witness, client: ServerClient, *, now: float) -> int:
    """Fetch, check, and cosign or refuse the log's latest checkpoint; print one line."""
    last = _last_cosigned(witness)
    given = witness.trusted
    start = start_from(
        last.checkpoint if last else None,
        given.checkpoint if given else None,
        trust_on_first_use=witness.trust_on_first_use,
    )
    basis_note = last.note if last else given.note if given else None
    note = AuditCheckpointAnswer.from_json(client.get("/v1/audit/checkpoint")).checkpoint
    try:
        latest = open_checkpoint(note, witness.log_key)
    except (AuditLogError, AuditVerificationError) as e:
        raise type(e)(f"the server's checkpoint: {e}") from e
    old_size = consistency_from(start, latest.checkpoint)
    proof: tuple[bytes, ...] = ()
    if old_size is not None:
        path = f"/v1/audit/consistency?old={old_size}&new={latest.checkpoint.size}"
        proof = AuditProofAnswer.from_json(client.get(path)).hashes
    try:
        check_latest(start, latest.checkpoint, proof)
    except WitnessRefusedError as e:
        evidence = _save_evidence(
            witness.state,
            e,
            basis_note=basis_note,
            latest_note=note,
            start=start,
            proof=proof,
            now=now,
        )
        print(
            f"trusthook: audit witness refused the log's checkpoint: {e}; its state is kept,"
            f" the evidence is in {evidence}",
            file=sys.stderr,
            flush=True,
        )
        return REFUSED
    cosigned = cosign_checkpoint(latest, witness.signer, now=now)
    write_atomic(witness.state / CHECKPOINT_FILE, cosigned.encode(), 0o644)
    print(_cosigned_line(start, latest.checkpoint, witness.state / CHECKPOINT_FILE), flush=True)
    return 0


def _cosigned_line(start: Start, latest: Checkpoint, path: Path) -> str:
    old = start.checkpoint
    if old is None:
        how = start.basis.value
    elif old.size == latest.size:
        how = f"the same tree as {start.basis.value}"
    else:
        how = f"extends {start.basis.value}, tree size {old.size}"
    return f"cosigned {latest.origin} at tree size {latest.size} ({how}) into {path}"


def _save_evidence(
    state: Path,
    refusal: WitnessRefusedError,
    *,
    basis_note: str | None,
    latest_note: str,
    start: Start,
    proof: tuple[bytes, ...],
    now: float,
) -> Path:
    """``state/evidence-<UTC time>/``: both checkpoints, the proof, the reason (new files)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    for attempt in range(100):
        directory = state / (f"evidence-{stamp}" + (f".{attempt}" if attempt else ""))
        try:
            directory.mkdir(mode=0o700)
            break
        except FileExistsError:
            continue
    else:
        raise UsageError(f"{state} holds 100 evidence directories of {stamp}; move some away")
    old = start.checkpoint
    record = {
        "reason": str(refusal.reason),
        "message": refusal.message,
        "basis": start.basis.name.lower(),
        "old_size": None if old is None else old.size,
        "consistency_proof": [b64.encode(h) for h in proof],
    }
    files = {"latest.note": latest_note, "refusal.json": json.dumps(record, indent=2) + "\n"}
    if basis_note is not None:
        files["previous.note"] = basis_note
    for name, text in files.items():
        write_new(directory / name, text.encode(), 0o644)
    return directory
