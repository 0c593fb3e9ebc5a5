"""Tree digests side by side, in one run: trusthook native (2 threads), the Python reference,
``find | xargs -P2 sha256sum`` and ``find | xargs -P2 b3sum --num-threads 1`` (BLAKE3), on a
big tree (a copy of parts of /usr) and a tree of 50,000 small files; warm cache, then cold.

Usage (root): .venv/bin/python bench/tree_digest.py [--workdir DIR] [--runs N] [--no-cold]
The trees are built once in the work directory and reused.

``--cache`` instead compares, in one run, a first and a second measurement with the agent's
digest cache against measuring without one (warm page cache, native, 2 threads), on a ~350 MB /
14k-file image, a busybox-sized one and the 50,000-file tree, and prints the ratios.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import stat
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from trusthook.measure.backend import PythonHasher
from trusthook.measure.native import DEFAULT_MIN_AGE_NS, DigestCache, NativeHasher

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
IMAGE_BYTES = 350_000_000  # issue 13's image: ~350 MB in ~14k files
IMAGE_FILES = 14_000
IMAGE_BIG_FILE = 256 * 1024
BUSYBOX_LINKS = 400  # busybox: one ~1 MB binary, its applet links, a few files in /etc


def _tree_size(root: Path) -> tuple[int, int]:
    """Regular file paths (hard links too) and the bytes of distinct inodes."""
    files = size = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                files += 1
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
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


def _source_files() -> list[tuple[Path, int]]:
    out = []
    for source in BIG_SOURCES:
        for dirpath, dirs, names in os.walk(source):
            dirs.sort()
            for name in sorted(names):
                p = Path(dirpath) / name
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode) and os.access(p, os.R_OK):
                    out.append((p, st.st_size))
    return out


def build_image(root: Path) -> None:
    """~IMAGE_BYTES in ~IMAGE_FILES files from /usr: large files first, then small ones."""
    if (root / ".complete").exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    files = _source_files()
    chosen, size = [], 0
    for p, n in files:
        if n >= IMAGE_BIG_FILE and size + n <= IMAGE_BYTES * 0.85:
            chosen.append(p)
            size += n
    picked = set(chosen)
    for p, n in files:
        if len(chosen) >= IMAGE_FILES - 1 and size >= IMAGE_BYTES:
            break
        if p not in picked and (n < IMAGE_BIG_FILE or size < IMAGE_BYTES):
            chosen.append(p)
            size += n
    for p in chosen:
        target = root / p.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
    (root / ".complete").write_text("")


def build_busybox(root: Path) -> None:
    if (root / ".complete").exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(2)
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "var/www", "home"):
        (root / d).mkdir(parents=True)
    binary = root / "bin" / "busybox"
    binary.write_bytes(rng.randbytes(1_130_000))
    binary.chmod(0o755)
    dirs = ["bin", "sbin", "usr/bin", "usr/sbin"]
    for i in range(BUSYBOX_LINKS):
        os.link(binary, root / dirs[i % 4] / f"applet{i:03d}")
    for name in ("passwd", "group", "shadow", "hosts", "resolv.conf", "hostname", "localtime"):
        (root / "etc" / name).write_bytes(rng.randbytes(rng.randrange(20, 600)))
    (root / ".complete").write_text("")


def _wait_until_admissible(roots: list[Path]) -> None:
    """The agent's cache admits a file only DEFAULT_MIN_AGE_NS after its last change."""
    newest = max(os.stat(r / ".complete").st_ctime_ns for r in roots)
    wait = (newest + DEFAULT_MIN_AGE_NS - time.time_ns()) / 1e9 + 0.1
    if wait > 0:
        time.sleep(wait)


def cache_comparison(roots: list[tuple[str, Path]], runs: int) -> None:
    """First vs second measurement with a digest cache, and without one; medians of runs."""
    _wait_until_admissible([root for _, root in roots])
    plain = NativeHasher(threads=2)
    results: dict[str, tuple[int, int, float, float, float, int]] = {}
    for title, root in roots:
        files, size = _tree_size(root)
        plain.measure_rootfs(root)  # warm the page cache
        none_t, first_t, second_t = [], [], []
        missed = 0  # files the second measurement hashed again (evicted: a full set)
        for _ in range(runs):
            none_t.append(timed(plain.measure_rootfs, root, cold=False))
            cached = NativeHasher(threads=2, cache=DigestCache())  # the agent's settings
            first_t.append(timed(cached.measure_rootfs, root, cold=False))
            after_first = cached.cache_stats()
            second_t.append(timed(cached.measure_rootfs, root, cold=False))
            after_second = cached.cache_stats()
            assert after_first is not None and after_second is not None
            missed = max(missed, after_second.misses - after_first.misses)
        results[title] = (
            files,
            size,
            statistics.median(none_t),
            statistics.median(first_t),
            statistics.median(second_t),
            missed,
        )
    print(f"native, 2 threads, warm page cache; each figure is the median of {runs} runs")
    for title, (files, size, none, first, second, missed) in results.items():
        print(f"\n{title}: {files} files, {size / 1e6:.1f} MB")
        print(
            f"  no cache                 {none * 1000:9.2f} ms   {none / files * 1e6:6.2f} us/file"
        )
        print(f"  cache, first measurement {first * 1000:9.2f} ms   {first / none:5.2f}x no cache")
        print(
            f"  cache, second            {second * 1000:9.2f} ms   {second / none:5.2f}x no cache"
            f"   {second / files * 1e6:6.2f} us/file   {missed} missed"
        )
    (_, _, big_none, _, big_second, _), (_, _, bb_none, _, bb_second, _) = (
        results["image"],
        results["busybox"],
    )
    print(
        f"\nimage / busybox: no cache {big_none / bb_none:.1f}x,"
        f" second with cache {big_second / bb_second:.1f}x"
        f" (+{(big_second - bb_second) * 1000:.1f} ms over busybox)"
    )


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
    parser.add_argument("--cache", action="store_true", help="the digest cache comparison only")
    args = parser.parse_args()
    if args.cache:
        trees = [
            ("image", args.workdir / "image"),
            ("busybox", args.workdir / "busybox"),
            ("small-file tree", args.workdir / "small"),
        ]
        build_image(trees[0][1])
        build_busybox(trees[1][1])
        build_small(trees[2][1])
        cache_comparison(trees, args.runs)
        return 0
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
