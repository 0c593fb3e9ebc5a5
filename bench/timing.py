"""One way for the benchmarks to time a command and read its peak memory (GNU time)."""

from __future__ import annotations

import subprocess
import time


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
