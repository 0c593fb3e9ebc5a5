"""Appraising launches against the policy manifest must not slow attestation: the verification
core (verify_core.py's appraisal of a swtpm quote and its log) plus the appraisal of each new
launch against the manifest (workload, image, rootfs, profile, group, placement), with a
manifest of 1,000 workloads, side by side with the same against an empty manifest, on quotes
recorded from a real swtpm with 10 new launch records each.

Target: the manifest of 1,000 workloads costs at most 20% of the core's throughput.

Usage (root): .venv/bin/python -m bench.attestation.policy_core [--quotes N] [--events E]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.attestation.verify_core import Case, bench_core, record
from trusthook._devenv.swtpm import Swtpm
from trusthook.agent.tpm import Tpm
from trusthook.policy.appraise import HostPlace, appraise_launch
from trusthook.policy.manifest import Manifest, parse_manifest

MAX_LOSS = 0.20
WORKLOADS = 1000
PLACE = HostPlace(group="lab", attributes={"region": "eu-1", "pci": "true"})


def manifest(workloads: int, rootfs: list[str]) -> Manifest:
    """``workloads`` workloads like a fleet's: each its identity, an image, root filesystems,
    a group and a placement; a few with patterns."""
    parts = ["format = 1\n"]
    for i in range(workloads):
        patterns = f'"bench/w{i}"' if i % 50 else f'"bench/w{i}-*", "bench/w{i}"'
        parts.append(
            f'[[workload]]\nname = "bench/w{i}"\nmatch = [{patterns}]\n'
            f'images = ["sha256:{"ab" * 32}", "sha256:{i:064x}"]\n'
            f'rootfs = ["{rootfs[i % len(rootfs)]}", "sha256:{i + 1:064x}"]\n'
            'groups = ["lab", "pci"]\nplacement = ["region in [eu-1, eu-2]", "pci = true"]\n'
        )
    return parse_manifest("".join(parts).encode(), "bench")


def launches(policy: Manifest) -> Callable[[Case], object]:
    """Each new launch of a case appraised against ``policy``, as the server does."""

    def appraise_all(case: Case) -> object:
        return [appraise_launch(policy, r.event, PLACE) for r in case.evidence.events]

    return appraise_all


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quotes", type=int, default=100)
    parser.add_argument("--events", type=int, default=10, help="new launch records per quote")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    with (
        tempfile.TemporaryDirectory(prefix="trusthook-bench-") as tmp,
        Swtpm(Path(tmp) / "tpm") as swtpm,
        Tpm(swtpm.tcti) as tpm,
    ):
        ak_public, cases = record(tpm, args.quotes, args.events)
    rootfs = [r.event.rootfs_digest for c in cases for r in c.evidence.events]
    empty, full = manifest(0, rootfs), manifest(WORKLOADS, rootfs)
    sample = cases[0].evidence.events[0].event
    assert appraise_launch(full, sample, PLACE).compliant  # the launches are its workloads'
    core = bench_core(ak_public, cases, args.rounds)
    with_empty = bench_core(ak_public, cases, args.rounds, launches(empty))
    with_full = bench_core(ak_public, cases, args.rounds, launches(full))
    loss = 1 - with_full / with_empty
    print(f"evidence: {args.quotes} quotes from swtpm, {args.events} new launch records each")
    print(f"core alone                       {core:8.0f} appraisals/s per core")
    print(f"core + launches, empty manifest  {with_empty:8.0f} appraisals/s per core")
    print(f"core + launches, {WORKLOADS} workloads   {with_full:8.0f} appraisals/s per core")
    print(
        f"ratio 1,000 workloads / empty manifest {with_full / with_empty:.2f}x:"
        f" {loss:.0%} lost (target <= {MAX_LOSS:.0%}); against the core alone"
        f" {with_full / core:.2f}x"
    )
    return 0 if loss <= MAX_LOSS else 1


if __name__ == "__main__":
    raise SystemExit(main())
