"""Verification core: quotes appraised per second on one core (AK signature, nonce, PCR
digest, golden PCRs, clock, event-log replay), on evidence recorded from a real swtpm; side by
side with ``tpm2_checkquote`` (tpm2-tools), which checks signature, nonce and PCR digest of one
quote per process, as a user without trusthook would script it.

Usage (root): .venv/bin/python bench/attestation/verify_core.py [--quotes N] [--events E]
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from trusthook._devenv.swtpm import Swtpm
from trusthook.agent.tpm import Quote, Tpm
from trusthook.attest.appraise import Evidence, Expectations, HostState, appraise
from trusthook.attest.identity import check_ak_public
from trusthook.attest.tpmwire import parse_quote_info
from trusthook.common.eventlog import Identity, LaunchEvent, Record, extend

TARGET_PER_CORE = 2500
PCRS = (*range(8), 23)
GOLDEN = {i: frozenset({bytes(32)}) for i in range(8)}


@dataclass(frozen=True)
class Case:
    nonce: bytes
    quote: Quote
    state: HostState
    evidence: Evidence


def _event(n: int) -> LaunchEvent:
    return LaunchEvent(
        container_id=f"bench-{n}",
        bundle=f"/run/bench/{n}",
        image_reference="busybox:latest",
        image_digest="sha256:" + "ab" * 32,
        rootfs_digest="sha256:" + os.urandom(32).hex(),
        rootfs_entries=279,
        config_digest="sha256:" + os.urandom(32).hex(),
        launch_profile_digest="sha256:" + os.urandom(32).hex(),
        stage="createRuntime",
        time="2026-11-28T00:00:00.000000Z",
        boot_id="bench-boot",
        identity=Identity(workload=f"bench/w{n % 1000}"),
        encrypted=False,
    )


def record(tpm: Tpm, quotes: int, events: int) -> tuple[bytes, list[Case]]:
    """``quotes`` quotes, each after ``events`` new launch records extended into PCR 23."""
    cases, recnum, tip = [], 0, tpm.pcr_read(23)
    state = HostState(boot_id="bench-boot", verified_recnum=-1, verified_pcr=tip)
    first = None
    for _ in range(quotes):
        new = []
        for _ in range(events):
            rec = Record.for_event(recnum=recnum, pcr=23, event=_event(recnum))
            tpm.pcr_extend(23, rec.digest)
            tip, recnum = extend(tip, rec.digest), recnum + 1
            new.append(rec)
        nonce = secrets.token_bytes(32)
        quote = tpm.quote(PCRS, nonce)
        if first is None:
            first = quote
            state = HostState(
                reset_count=_clock(quote)[0],
                restart_count=_clock(quote)[1],
                boot_id="bench-boot",
                verified_recnum=-1,
                verified_pcr=state.verified_pcr,
            )
        evidence = Evidence(
            attest=quote.attest,
            signature=quote.signature,
            pcr_values=quote.pcr_values,
            boot_id="bench-boot",
            events=new,
        )
        cases.append(Case(nonce, quote, state, evidence))
        state = HostState(
            reset_count=state.reset_count,
            restart_count=state.restart_count,
            boot_id="bench-boot",
            verified_recnum=recnum - 1,
            verified_pcr=tip,
        )
    return tpm.ak_public(), cases


def _clock(quote: Quote) -> tuple[int, int]:
    info = parse_quote_info(quote.attest)
    return info.reset_count, info.restart_count


def bench_core(
    ak_public: bytes,
    cases: list[Case],
    rounds: int,
    after: Callable[[Case], object] | None = None,
) -> float:
    """Appraisals per second of CPU time on this process (one thread: one core); ``after``:
    more work per appraisal (policy_core.py appraises each launch with it)."""
    expect = Expectations(container_pcr=23, golden=GOLDEN)
    # the verifier keeps the checked AK per host; parsing it is included once per round
    start = time.process_time()
    done = 0
    for _ in range(rounds):
        key = check_ak_public(ak_public)
        for case in cases:
            result = appraise(
                key=key, nonce=case.nonce, evidence=case.evidence, expect=expect, state=case.state
            )
            assert result.trusted, result.reasons
            if after is not None:
                after(case)
            done += 1
    return done / (time.process_time() - start)


def bench_checkquote(ak_public: bytes, cases: list[Case], work: Path) -> float:
    """Quotes per second of wall time, one ``tpm2_checkquote`` process each, sequentially."""
    pem = (
        check_ak_public(ak_public)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (work / "ak.pem").write_bytes(pem)
    for i, case in enumerate(cases):
        (work / f"{i}.msg").write_bytes(case.quote.attest)
        (work / f"{i}.sig").write_bytes(case.quote.signature)
    start = time.perf_counter()
    for i, case in enumerate(cases):
        subprocess.run(
            [
                "tpm2_checkquote", "-u", str(work / "ak.pem"), "-m", str(work / f"{i}.msg"),
                "-s", str(work / f"{i}.sig"), "-g", "sha256", "-q", case.nonce.hex(),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return len(cases) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quotes", type=int, default=200)
    parser.add_argument("--events", type=int, default=3, help="new log records per quote")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    with tempfile.TemporaryDirectory(prefix="trusthook-bench-") as tmp:
        work = Path(tmp)
        with Swtpm(work / "tpm") as swtpm, Tpm(swtpm.tcti) as tpm:
            ak_public, cases = record(tpm, args.quotes, args.events)
        ours = bench_core(ak_public, cases, args.rounds)
        theirs = bench_checkquote(ak_public, cases[:50], work)
    print(f"evidence: {args.quotes} quotes over PCRs 0-7,23 from swtpm, {args.events} new"
          " log records each")  # fmt: skip
    print(f"trusthook appraise       {ours:8.0f} verifications/s per core"
          f" (target >= {TARGET_PER_CORE})")  # fmt: skip
    print(f"tpm2_checkquote          {theirs:8.0f} verifications/s (one process per quote;"
          " signature, nonce, PCR digest only)")  # fmt: skip
    print(f"ratio trusthook/tpm2_checkquote {ours / theirs:.1f}x")
    return 0 if ours >= TARGET_PER_CORE else 1


if __name__ == "__main__":
    raise SystemExit(main())
