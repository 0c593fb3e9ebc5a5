"""Tree digests side by side, in one run: trusthook native (2 threads), the Python reference,
``find | xargs -P2 sha256sum`` and ``find | xargs -P2 b3sum --num-threads 1`` (BLAKE3), on a
big tree (a copy of parts of /usr) and a tree of 50,000 small files; warm cache, then cold.

Usage (root): .venv/bin/python bench/tree_digest.py [--workdir DIR] [--runs N] [--no-cold]
The trees are built once in the work directory and reused.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from trusthook.measure.backend import PythonHasher
from trusthook.measure.native import NativeHasher

BIG_MIN_BYTES = 1_100_000_000
BIG_MIN_FILES = 50_000
BIG_SOURCES = [
    "/usr/share",
    "/usr/include",
    "/usr/bin",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/python3",
]
SMALL_FILES = 50_000


def _tree_size(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                files += 1
                size += st.st_size
    return files, size


def build_big(root: Path) -> None:
    if (root / ".complete").exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for source in BIG_SOURCES:
        files, size = _tree_size(root)
        if files >= BIG_MIN_FILES and size >= BIG_MIN_BYTES:
            break
        subprocess.run(
            ["cp", "-a", source, str(root / source.strip("/").replace("/", "_"))], check=True
        )
    (root / ".complete").write_text("")


def build_small(root: Path) -> None:
    if (root / ".complete").exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(1)
    for i in range(SMALL_FILES):
        d = root / f"d{i // 200:03d}"
        if i % 200 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05d}").write_bytes(rng.randbytes(rng.randrange(16 * 1024)))
    (root / ".complete").write_text("")


def _xargs(tool: list[str]) -> Callable[[Path], object]:
    def run(root: Path) -> None:
        find = subprocess.Popen(
            ["find", str(root), "-type", "f", "-print0"], stdout=subprocess.PIPE
        )
        subprocess.run(
            ["xargs", "-0", "-P2", *tool], stdin=find.stdout, stdout=subprocess.DEVNULL, check=True
        )
        find.wait()

    return run


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(fn: Callable[[Path], object], root: Path, *, cold: bool) -> float:
    if cold:
        drop_caches()
    start = time.perf_counter()
    fn(root)
    return time.perf_counter() - start


def compare(
    root: Path, methods: dict[str, Callable[[Path], object]], runs: int, *, cold: bool
) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in methods}
    if not cold:
        for fn in methods.values():
            fn(root)  # warm the page cache
    for _ in range(runs):
        for name, fn in methods.items():
            times[name].append(timed(fn, root, cold=cold))
    return {name: statistics.median(t) for name, t in times.items()}


def report(title: str, files: int, size: int, medians: dict[str, float]) -> None:
    native = medians["native-2t"]
    print(f"\n{title}: {files} files, {size / 1e9:.2f} GB")
    for name, t in medians.items():
        ratio = t / native
        per_file = t / files * 1e6
        print(f"  {name:24} {t * 1000:9.1f} ms   {ratio:5.2f}x native   {per_file:6.2f} us/file")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/var/lib/trusthook-bench"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-cold", action="store_true")
    args = parser.parse_args()
    for tool in ("sha256sum", "b3sum", "xargs", "find"):
        if not shutil.which(tool):
            print(f"{tool} is missing: run scripts/setup", file=sys.stderr)
            return 1
    big, small = args.workdir / "big", args.workdir / "small"
    build_big(big)
    build_small(small)
    native, python = NativeHasher(threads=2), PythonHasher()
    warm: dict[str, Callable[[Path], object]] = {
        "native-2t": native.measure_rootfs,
        "python-reference": python.measure_rootfs,
        "xargs-P2 sha256sum": _xargs(["sha256sum"]),
        "xargs-P2 b3sum (BLAKE3)": _xargs(["b3sum", "--num-threads", "1"]),
    }
    print(f"{os.cpu_count()} cores; each figure is the median of {args.runs} runs")
    for title, root in (("big tree, warm cache", big), ("small-file tree, warm cache", small)):
        files, size = _tree_size(root)
        report(title, files, size, compare(root, warm, args.runs, cold=False))
    if not args.no_cold:
        cold: dict[str, Callable[[Path], object]] = {
            "native-2t": native.measure_rootfs,
            "native-16t": NativeHasher(threads=16).measure_rootfs,
            "xargs-P2 sha256sum": _xargs(["sha256sum"]),
            "xargs-P2 b3sum (BLAKE3)": _xargs(["b3sum", "--num-threads", "1"]),
        }
        files, size = _tree_size(big)
        report(
            "big tree, cold cache (drop_caches before each)",
            files,
            size,
            compare(big, cold, 1, cold=True),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
