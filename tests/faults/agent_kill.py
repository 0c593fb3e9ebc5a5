"""Campaign ``agent-kill``: SIGKILL the agent at a random point while many containers start.

Each round starts ``starts`` containers at once under real runc, ``encrypted`` of them from the
encrypted image through trusthook-runtime (tmpfs root, release by the server, decryption), the
others from the busybox image with the hook entry or through trusthook-runtime. The point of
the kill is drawn from the agent's progress in the round, one of three ways (``MODES``):
after k records appended (each encrypted start appends two: its release record and its
launch), or after j launches from the encrypted image (they come last), then up to 20 ms
more; or the moment the k-th record is written, racing its fsync and its PCR extend. So the
agent dies before the first start, between an append and its extend, mid-attestation,
mid-decryption, while answering hooks.

After every container has finished, the agent is started again (its recovery runs first) and
must attest as trusted; then the checks of ``checks.check_starts``: the log replays to the PCR
(``trusthook log verify`` too), every container that ran has its measurement, every start that
could not reach the agent failed, and no tmpfs root, root directory or container is left.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from tests.faults.checks import TpmObjects, check_starts, restart_agent
from tests.faults.containers import Launcher, Outcome, Start
from tests.faults.report import Report
from tests.faults.rig import Rig, open_rig

POLL = 0.001
FAST_POLL = 0.0001
MODES = ("records", "launches", "append")
MAX_EXTRA_DELAY = 0.02


def run_campaign(
    work: Path,
    *,
    rounds: int,
    seed: int,
    starts: int = 50,
    encrypted: int = 10,
    tpm_template: Path | None = None,
    ek_bundle: Path | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> Report:
    """``rounds`` rounds of ``starts`` concurrent container starts, one agent SIGKILL each."""
    rng = random.Random(seed)  # noqa: S311 - kill points, not secrets
    report = Report("agent-kill", seed)
    with open_rig(work, tpm_template=tpm_template, ek_bundle=ek_bundle) as rig:
        launcher = Launcher(rig)
        baseline(rig, launcher, report)
        objects = TpmObjects()
        for n in range(1, rounds + 1):
            began = time.monotonic()
            _round(rig, launcher, rng, report, n, starts, encrypted, objects)
            progress(
                f"agent-kill round {n}/{rounds}: {time.monotonic() - began:.1f}s,"
                f" {len(report.violations)} violations so far"
            )
    return report


def baseline(rig: Rig, launcher: Launcher, report: Report) -> None:
    """Round 0, without a fault: one container of each kind must start and be measured, or
    the campaign would prove nothing."""
    starts = [
        launcher.plain("fk000-plain", via_shim=False),
        launcher.plain("fk000-shim", via_shim=True),
        launcher.encrypted("fk000-encrypted"),
    ]
    outcomes = [launcher.run(s) for s in starts]
    for o in outcomes:
        if not o.ran or o.returncode != 0:
            report.violation(0, f"{o.start.cid} did not start without a fault: {o.stderr.strip()}")
    check_starts(rig, launcher, report, 0, outcomes, expected_failure="none")
    launcher.clean(starts)


class LogWatch:
    """What the agent has appended to its log since the round began: every complete record,
    and the launch records of the encrypted-image containers (the last to finish: each waits
    for its turn to attest and get its keys). The file is read again only when it grew."""

    def __init__(self, path: Path, encrypted: set[str]) -> None:
        self._path = path
        self._base = path.stat().st_size if path.exists() else 0
        self._size = self._base
        self._counts = (0, 0)
        self._encrypted = [cid.encode() for cid in encrypted]

    def counts(self) -> tuple[int, int]:
        """(records, encrypted launches) appended so far."""
        try:
            size = os.stat(self._path).st_size
        except FileNotFoundError:
            return self._counts
        if size == self._size:
            return self._counts
        with open(self._path, "rb") as f:
            f.seek(self._base)
            data = f.read()
        self._size = self._base + len(data)
        lines = data.split(b"\n")[:-1]
        launched = sum(
            1
            for line in lines
            if b'"createRuntime"' in line and any(cid in line for cid in self._encrypted)
        )
        self._counts = (len(lines), launched)
        return self._counts


def _round(
    rig: Rig,
    launcher: Launcher,
    rng: random.Random,
    report: Report,
    n: int,
    count: int,
    encrypted: int,
    objects: TpmObjects,
) -> None:
    kinds = ["encrypted"] * encrypted + ["plain"] * (count - encrypted)
    rng.shuffle(kinds)
    starts: list[Start] = []
    for i, kind in enumerate(kinds):
        cid = f"fk{n:03}-{i:02}-{rng.getrandbits(24):06x}"
        if kind == "encrypted":
            starts.append(launcher.encrypted(cid))
        else:
            starts.append(launcher.plain(cid, via_shim=rng.random() < 0.5))
    watch = LogWatch(rig.log_store.path, {s.cid for s in starts if s.encrypted})
    # The point of the kill: after a number of records, or after a number of encrypted-image
    # launches (they come last), then up to 20 ms more; or the moment a record is written,
    # racing its fsync and its extend.
    mode = rng.choice(MODES if encrypted else MODES[::2])
    by_encrypted = mode == "launches"
    target = rng.randrange(encrypted) if by_encrypted else rng.randrange(count + encrypted)
    if mode == "append":
        target += 1
    extra = 0.0 if mode == "append" else rng.uniform(0, MAX_EXTRA_DELAY)
    poll = FAST_POLL if mode == "append" else POLL
    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(launcher.run, s) for s in starts]
        while watch.counts()[by_encrypted] < target and not all(f.done() for f in futures):
            time.sleep(poll)
        time.sleep(extra)
        records, launched = watch.counts()
        in_flight = sum(not f.done() for f in futures)
        rig.kill_agent()
        report.faults += 1
        outcomes: list[Outcome] = [f.result() for f in futures]
    report.rounds += 1
    report.runs += len(outcomes)
    report.outcomes["kills with starts in flight"] += in_flight > 0
    report.outcomes[f"kill points: {mode}"] += 1
    report.note(
        n,
        f"agent killed after {records} records, {launched} encrypted launches (target"
        f" {target} {mode}, +{extra * 1000:.0f} ms),"
        f" {in_flight} of {count} starts in flight;"
        f" {sum(o.ran for o in outcomes)} ran",
    )
    objects.after_kill(rig, report, n)
    restart_agent(rig, report, n)
    check_starts(rig, launcher, report, n, outcomes, expected_failure="agent")
    launcher.clean(starts)
