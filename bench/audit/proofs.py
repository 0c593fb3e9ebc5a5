"""Audit log core, in memory: building a 1,000,000-entry tree, inclusion and consistency
proofs at that size from stored subtree hashes, checkpoint signing, exporting a 100,000-entry
bundle, and ``trusthook audit verify`` of it (in this process, and end to end as a command).

Targets: an inclusion proof at 1M entries in <= 5 ms; verification >= 50,000 entries/s.
Times are CPU seconds of this process (or of the command), which a busy machine disturbs less
than wall-clock time; the wall-clock figure of the command is printed too. Verification figures
are the best of three runs.

Usage: .venv/bin/python -m bench.audit.proofs [--size N] [--bundle K] [--proofs P]
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trusthook.audit import (
    AuditEntry,
    Bundle,
    Checkpoint,
    EventType,
    Frontier,
    MemoryTree,
    NoteSigner,
    Span,
    Subject,
    SubjectKind,
    consistency_proof,
    export_bundle,
    inclusion_proof,
    leaf_hash,
    open_checkpoint,
    sign_checkpoint,
    verify_bundle,
    verify_consistency,
    verify_inclusion,
)

PROOF_TARGET_MS = 5.0
VERIFY_TARGET = 50_000  # entries/s
RUNS = 3  # verification figures are the best of this many runs
ORIGIN = "audit.bench.example/trusthook"


def cpu(run: Callable[[], object]) -> float:
    start = time.process_time()
    run()
    return time.process_time() - start


def make_entries(start: int, count: int) -> list[AuditEntry]:
    """What the server logs most: attestation verdicts, releases, admission decisions."""
    base = datetime(2026, 12, 1, tzinfo=UTC)
    out = []
    for i in range(start, start + count):
        host = Subject(kind=SubjectKind.HOST, id=f"{i % 977:064x}")
        moment = base + timedelta(milliseconds=i)
        if i % 3 == 0:
            event, detail = EventType.ATTESTED, {"trusted": True, "reasons": []}
        elif i % 3 == 1:
            event, detail = EventType.RELEASED, {"image": f"sha256:{i:064x}", "layers": 3}
        else:
            event, detail = EventType.HOST_APPROVED, {"group": "default", "by": "alice"}
        out.append(AuditEntry.at(index=i, moment=moment, event=event, subject=host, detail=detail))
    return out


def bench_append(entries: list[AuditEntry]) -> float:
    """The server's append path per entry: canonical leaf, hash, frontier, nodes to store."""
    frontier = Frontier()

    def run() -> None:
        nonlocal frontier
        for e in entries:
            frontier, _nodes = frontier.append(leaf_hash(e.canonical()))

    return len(entries) / cpu(run)


@dataclass(frozen=True)
class Log:
    tree: MemoryTree
    entries: list[AuditEntry]  # the bundle's; the other leaves are synthetic
    first: int


def bench_tree(size: int, count: int) -> tuple[Log, dict[str, float]]:
    """The log: ``count`` real entries in the middle (the hardest place for a range), the
    rest synthetic leaves; built at once and appended one by one."""
    first = (size - count) // 2
    figures: dict[str, float] = {}
    made: list[list[AuditEntry]] = []
    figures["made"] = count / cpu(lambda: made.append(make_entries(first, count)))
    entries = made[0]
    figures["append"] = bench_append(entries)
    leaves = [leaf_hash(i.to_bytes(8, "big")) for i in range(size)]
    leaves[first : first + count] = [e.leaf_hash() for e in entries]
    trees: list[MemoryTree] = []
    figures["build"] = cpu(lambda: trees.append(MemoryTree(leaves)))
    frontiers = [Frontier()]

    def append_all() -> None:
        for leaf in leaves:
            frontiers[0] = frontiers[0].append(leaf)[0]

    figures["frontier"] = cpu(append_all)
    assert frontiers[0].root() == trees[0].root()
    return Log(tree=trees[0], entries=entries, first=first), figures


def bench_proofs(tree: MemoryTree, proofs: int) -> dict[str, float]:
    size, rng = tree.size, random.Random(1)
    root = tree.root()
    per_proof = []
    for i in (rng.randrange(size) for _ in range(proofs)):
        start = time.process_time()
        proof = inclusion_proof(tree, i, size)
        per_proof.append((time.process_time() - start) * 1000)
    leaf = tree.subtree_hashes([Span(i, i + 1)])[0]
    check = cpu(lambda: verify_inclusion(leaf=leaf, index=i, size=size, proof=proof, root=root))
    olds = [rng.randrange(1, size) for _ in range(200)]
    generate = cpu(lambda: [consistency_proof(tree, o, size) for o in olds]) / len(olds)
    old, cproof = olds[0], consistency_proof(tree, olds[0], size)
    old_root = tree.root(old)
    consistency = cpu(
        lambda: verify_consistency(
            old_size=old, new_size=size, old_root=old_root, new_root=root, proof=cproof
        )
    )
    return {
        "median": statistics.median(per_proof),
        "p99": sorted(per_proof)[int(0.99 * len(per_proof))],
        "check": check * 1000,
        "consistency": generate * 1000,
        "consistency_check": consistency * 1000,
    }


def bench_checkpoint(signer: NoteSigner, size: int, root: bytes) -> dict[str, float]:
    checkpoint, n = Checkpoint(origin=ORIGIN, size=size, root=root), 2000
    sign = cpu(lambda: [sign_checkpoint(checkpoint, signer) for _ in range(n)]) / n
    note = sign_checkpoint(checkpoint, signer)
    opened = cpu(lambda: [open_checkpoint(note, signer.verifier_key) for _ in range(n)]) / n
    return {"sign": sign * 1000, "open": opened * 1000}


def bench_export(log: Log, signer: NoteSigner) -> tuple[bytes, float]:
    checkpoint = Checkpoint(origin=ORIGIN, size=log.tree.size, root=log.tree.root())
    note = sign_checkpoint(checkpoint, signer)
    bundles: list[Bundle] = []
    seconds = cpu(
        lambda: bundles.append(
            export_bundle(log.tree, key=signer.verifier_key, checkpoint=note, entries=log.entries)
        )
    )
    return bundles[0].to_bytes(), seconds


def verify_once(raw: bytes) -> tuple[float, float]:
    """CPU seconds to parse ``raw`` and to verify the bundle, in this process."""
    start = time.process_time()
    bundle = Bundle.from_bytes(raw)
    parsed = time.process_time()
    verify_bundle(bundle)
    return parsed - start, time.process_time() - parsed


def bench_verify(raw: bytes, count: int) -> dict[str, float]:
    """The best of ``RUNS`` parses and verifications in this process (its collector on, as a
    library user's would be)."""
    parse, check = min((verify_once(raw) for _ in range(RUNS)), key=sum)
    return {"parse": parse, "check": check, "rate": count / (parse + check)}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="entries in the log")
    parser.add_argument("--bundle", type=int, default=100_000, help="entries in the bundle")
    parser.add_argument("--proofs", type=int, default=2000)
    args = parser.parse_args()
    size, count = args.size, args.bundle
    log, built = bench_tree(size, count)
    proofs = bench_proofs(log.tree, args.proofs)
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    signing = bench_checkpoint(signer, size, log.tree.root())
    raw, export = bench_export(log, signer)
    del log  # the verifier holds only the bundle
    checked = bench_verify(raw, count)
    command_cpu, command_wall = min(
        run_command(raw, signer.verifier_key.encode()) for _ in range(RUNS)
    )
    command = count / command_cpu
    p99, verified = proofs["p99"], checked["rate"]
    print(f"log of {size:,} entries; a bundle of {count:,} from its middle")
    print(f"entries made (AuditEntry.at)    {built['made']:10,.0f} entries/s")
    print(f"append (leaf, hash, frontier)   {built['append']:10,.0f} entries/s")
    print(f"tree of {size:,} leaf hashes   {built['build']:10.2f} s at once (MemoryTree),"
          f" {built['frontier']:.2f} s appended one by one (Frontier)")  # fmt: skip
    print(
        f"inclusion proof at {size:,}    {proofs['median']:10.3f} ms median, {p99:.3f} ms"
        f" p99 (target <= {PROOF_TARGET_MS} ms: {PROOF_TARGET_MS / p99:.0f}x headroom)"
    )
    print(f"inclusion proof verify          {proofs['check']:10.3f} ms")
    print(f"consistency proof at {size:,}  {proofs['consistency']:10.3f} ms generate,"
          f" {proofs['consistency_check']:.3f} ms verify")  # fmt: skip
    print(f"checkpoint sign (Ed25519 note)  {signing['sign']:10.3f} ms,"
          f" open and verify {signing['open']:.3f} ms")  # fmt: skip
    print(f"bundle export                   {export:10.2f} s, {len(raw) / 1e6:.1f} MB"
          f" ({len(raw) / count:.0f} bytes/entry)")  # fmt: skip
    print(f"verify in process               {verified:10,.0f} entries/s (parse"
          f" {checked['parse']:.2f} s, check {checked['check']:.2f} s;"
          f" {verified / VERIFY_TARGET:.2f}x the target {VERIFY_TARGET:,})")  # fmt: skip
    print(
        f"trusthook audit verify          {command:10,.0f} entries/s ({command_cpu:.2f} s CPU"
        f" with start-up, {command_wall:.2f} s wall; {command / VERIFY_TARGET:.2f}x target)"
    )
    return 0 if p99 <= PROOF_TARGET_MS and command >= VERIFY_TARGET else 1


def run_command(raw: bytes, key: str) -> tuple[float, float]:
    """CPU and wall seconds of ``trusthook audit verify`` on ``raw``, as a user runs it."""
    with tempfile.TemporaryDirectory(prefix="trusthook-bench-") as tmp:
        path = Path(tmp) / "bundle.json"
        path.write_bytes(raw)
        config = Path(tmp) / "config.toml"
        config.write_text("")
        argv = [sys.executable, "-m", "trusthook.cli", "--trusthook-config", str(config),
                "audit", "verify", str(path), "--key", key]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(argv, check=False, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"audit verify failed: {done.stderr.strip()}")
    used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return used, wall


if __name__ == "__main__":
    raise SystemExit(main())
