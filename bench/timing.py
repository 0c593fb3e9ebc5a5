"""One way for the benchmarks to time a command and read its peak memory (GNU time), and to
let a new root filesystem age into the agent's digest cache."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from trusthook.measure.native import DEFAULT_MIN_AGE_NS


def run_timed(argv: list[str]) -> tuple[float, int]:
    """Run ``argv``; its wall seconds and peak RSS in MiB."""
    start = time.perf_counter()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {result.stderr.strip()}")
    return elapsed, int(result.stderr.split()[-1]) // 1024


def settle(root: Path, min_age_ns: int = DEFAULT_MIN_AGE_NS) -> float:
    """Wait until nothing under ``root`` changed less than ``min_age_ns`` ago; the seconds
    waited. The agent's digest cache admits no file younger than that (docs/measurement.md,
    ``min_age``): a rootfs the bench has just made would be hashed at every start until then,
    where a host's unchanged image, the case a second start measures, is long settled."""
    newest = os.lstat(root).st_ctime_ns
    for directory, names, files in os.walk(root):  # symlinks are not followed
        for name in (*names, *files):
            newest = max(newest, os.lstat(os.path.join(directory, name)).st_ctime_ns)
    wait = (newest + min_age_ns - time.time_ns()) / 1e9
    if wait > 0:
        time.sleep(wait)
    return max(wait, 0.0)
