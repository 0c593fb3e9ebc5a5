"""The native digest cache (docs/measurement.md, 1.11) never changes a digest: cache on, cache off
and the Python reference agree on random trees, also after random changes that keep a file's
size and mtime, and the cache stays within its bound."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.native.test_equivalence import TREE, _build
from trusthook.agent.metrics import AgentMetrics
from trusthook.errors import MeasurementError
from trusthook.measure.backend import PythonHasher, select_hasher
from trusthook.measure.native import CacheStats, DigestCache, NativeHasher

# Tests admit files at once (min_age_ns=0), so a change must move ctime by itself: it does on
# filesystems with fine-grained or multigrain timestamps, and after TICK on any kernel with
# HZ >= 100 (coarse timestamps advance once a jiffy).
TICK = 0.02

MUTATIONS = st.sampled_from(
    ["content", "rename", "chmod", "xattr", "hardlink", "replace", "truncate-restore"]
)


@pytest.fixture
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="th-cache-"))
    yield d
    shutil.rmtree(d)


def _regular_files(root: Path) -> list[Path]:
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in sorted(names):
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out.append(p)
    return sorted(out)


def _keep_size_and_mtime(path: Path, change: object) -> None:
    """Run ``change`` on path, then put size and mtime (to the nanosecond) back."""
    st = os.stat(path)
    change()  # type: ignore[operator]
    os.truncate(path, st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _flip_content(path: Path) -> None:
    def change() -> None:
        data = bytearray(path.read_bytes() or b"\0")
        data[len(data) // 2] ^= 0xFF
        with open(path, "r+b") as f:
            f.write(data)

    _keep_size_and_mtime(path, change)


def _fresh_name(path: Path, suffix: str) -> Path:
    n = 0
    while os.path.lexists(path.with_name(f"{path.name}.{suffix}{n}")):
        n += 1
    return path.with_name(f"{path.name}.{suffix}{n}")


def _mutate(root: Path, what: str, pick: int) -> None:
    files = _regular_files(root)
    if not files:
        _fresh_name(root / "new", "f").write_bytes(b"new")
        return
    victim = files[pick % len(files)]
    if what == "content":
        _flip_content(victim)
    elif what == "rename":
        victim.rename(_fresh_name(victim, "moved"))
    elif what == "chmod":
        os.chmod(victim, (os.stat(victim).st_mode ^ 0o100) & 0o7777)
    elif what == "xattr":
        os.setxattr(victim, "user.mutated", str(pick).encode())
    elif what == "hardlink":
        os.link(victim, _fresh_name(victim, "link"))
    elif what == "replace":  # another inode, same size and mtime, other bytes
        st = os.stat(victim)
        data = bytes(b ^ 0x55 for b in victim.read_bytes())
        fresh = _fresh_name(victim, "tmp")
        fresh.write_bytes(data)
        os.chmod(fresh, st.st_mode & 0o7777)
        os.utime(fresh, ns=(st.st_atime_ns, st.st_mtime_ns))
        fresh.rename(victim)
    elif what == "truncate-restore":  # zeroes in place of the content, size and mtime kept
        _keep_size_and_mtime(victim, lambda: os.truncate(victim, 0))


def _check_bound(cache: DigestCache) -> CacheStats:
    stats = cache.stats()
    assert stats.entries <= stats.capacity <= cache.max_entries
    return stats


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    spec=TREE,
    rounds=st.lists(st.lists(st.tuples(MUTATIONS, st.integers(0, 1000)), max_size=4), max_size=3),
    bound=st.sampled_from([1, 3, 16, 4096]),
)
def test_cache_never_changes_a_digest(
    scratch: Path,
    spec: dict[str | bytes, object],
    rounds: list[list[tuple[str, int]]],
    bound: int,
) -> None:
    root = scratch / "t"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    _build(os.fsencode(root), spec, [])
    cache = DigestCache(max_entries=bound, min_age_ns=0)
    cached, plain = NativeHasher(threads=2, cache=cache), NativeHasher(threads=2)
    for mutations in [[], *rounds]:
        for what, pick in mutations:
            _mutate(root, what, pick)
        expected = PythonHasher().measure_rootfs(root)
        assert plain.measure_rootfs(root) == expected
        assert cached.measure_rootfs(root) == expected
        assert cached.measure_rootfs(root) == expected  # now from the cache, where it fits
        _check_bound(cache)
        time.sleep(TICK)


def test_second_measurement_hits(scratch: Path) -> None:
    for i in range(50):
        (scratch / f"f{i}").write_bytes(os.urandom(i * 100))
    cache = DigestCache(min_age_ns=0)
    hasher = NativeHasher(threads=2, cache=cache)
    first = hasher.measure_rootfs(scratch)
    assert cache.stats() == CacheStats(hits=0, misses=50, entries=50, capacity=cache.max_entries)
    assert hasher.measure_rootfs(scratch) == first  # same entries and bytes_hashed too
    assert cache.stats().hits == 50


def test_content_change_with_size_and_mtime_restored_changes_the_digest(scratch: Path) -> None:
    victim = scratch / "bin" / "sh"
    victim.parent.mkdir()
    victim.write_bytes(b"#!/bin/true\n" * 1000)
    (scratch / "other").write_bytes(b"unchanged")
    cache = DigestCache(min_age_ns=0)
    hasher = NativeHasher(threads=2, cache=cache)
    before = hasher.measure_rootfs(scratch)
    assert hasher.measure_rootfs(scratch) == before
    assert cache.stats().hits == 2  # the digest would have come from the cache
    time.sleep(TICK)
    st = os.stat(victim)
    _flip_content(victim)
    after_st = os.stat(victim)
    assert (after_st.st_size, after_st.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert after_st.st_ctime_ns != st.st_ctime_ns
    after = hasher.measure_rootfs(scratch)
    assert after.digest != before.digest
    assert after == PythonHasher().measure_rootfs(scratch)
    assert cache.stats().hits == 3  # "other" only


def test_recently_changed_files_are_not_admitted(scratch: Path) -> None:
    (scratch / "fresh").write_bytes(b"just written")
    cache = DigestCache(min_age_ns=3_600 * 10**9)  # an hour: every file here is too young
    hasher = NativeHasher(threads=2, cache=cache)
    first = hasher.measure_rootfs(scratch)
    assert hasher.measure_rootfs(scratch) == first
    assert cache.stats() == CacheStats(hits=0, misses=2, entries=0, capacity=cache.max_entries)


def test_file_changing_while_hashed_is_not_cached(scratch: Path) -> None:
    """The second fstat after the read differs, so the measurement fails and nothing is
    admitted (the file is touched thousands of times during one 64 MiB read)."""
    big = scratch / "big"
    big.write_bytes(os.urandom(1 << 20) * 64)
    cache = DigestCache(min_age_ns=0)
    hasher = NativeHasher(threads=2, cache=cache)
    stop = threading.Event()

    def touch() -> None:
        st = os.stat(big)
        while not stop.is_set():  # ctime moves, size and mtime stay
            os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))

    thread = threading.Thread(target=touch, daemon=True)
    thread.start()
    try:
        for _ in range(3):
            with pytest.raises(MeasurementError, match="^/big changed while it was being hashed$"):
                hasher.measure_rootfs(scratch)
    finally:
        stop.set()
        thread.join()
    assert cache.stats().entries == 0
    assert hasher.measure_rootfs(scratch) == PythonHasher().measure_rootfs(scratch)


def test_entries_stay_within_the_bound(scratch: Path) -> None:
    for i in range(300):
        (scratch / f"f{i:03d}").write_bytes(b"%d" % i)
    expected = PythonHasher().measure_rootfs(scratch)
    for bound, capacity in ((5, 5), (20, 16), (256, 256), (4096, 4096)):
        cache = DigestCache(max_entries=bound, min_age_ns=0)
        hasher = NativeHasher(threads=2, cache=cache)
        for _ in range(3):
            assert hasher.measure_rootfs(scratch) == expected
            stats = _check_bound(cache)
            assert stats.capacity == capacity
            if bound <= 16:  # one set: full after 300 files
                assert stats.entries == capacity
        if bound == 4096:  # room for every file: all hits after the first
            assert (stats.hits, stats.misses, stats.entries) == (600, 300, 300)


def test_concurrent_measurements_share_one_cache(scratch: Path) -> None:
    roots = []
    for r in range(3):
        root = scratch / f"r{r}"
        root.mkdir()
        for i in range(400):
            (root / f"f{i}").write_bytes(b"%d-%d" % (r, i % 7))  # identical content across roots
        roots.append(root)
    expected = [PythonHasher().measure_rootfs(root) for root in roots]
    cache = DigestCache(max_entries=512, min_age_ns=0)
    hasher = NativeHasher(threads=3, cache=cache)
    results: dict[int, list[object]] = {}

    def measure(r: int) -> None:
        results[r] = [hasher.measure_rootfs(roots[r]) for _ in range(4)]

    threads = [threading.Thread(target=measure, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in range(3):
        assert results[r] == [expected[r]] * 4
    stats = _check_bound(cache)
    assert stats.hits + stats.misses == 3 * 4 * 400


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_entries": 0}, "max_entries must be 1..1073741824, got 0"),
        ({"max_entries": (1 << 30) + 1}, "max_entries must be"),
        ({"min_age_ns": -1}, "min_age_ns must be 0..2\\^62, got -1"),
    ],
)
def test_bad_bounds_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DigestCache(**kwargs)


def test_backends_and_metrics(scratch: Path) -> None:
    (scratch / "f").write_bytes(b"x")
    assert select_hasher("python", cache_entries=10).cache_stats() is None
    assert select_hasher("native").cache_stats() is None
    hasher = select_hasher("native", cache_entries=10)
    hasher.measure_rootfs(scratch)
    assert hasher.cache_stats() == CacheStats(hits=0, misses=1, entries=0, capacity=10)
    metrics = AgentMetrics(digest_cache=hasher.cache_stats)
    metrics.health()
    lines = metrics.registry.body().decode().splitlines()
    assert 'trusthook_agent_digest_cache_lookups_total{result="miss"} 1' in lines
    assert "trusthook_agent_digest_cache_entries 0" in lines
    plain = AgentMetrics()
    plain.health()
    assert not [
        line
        for line in plain.registry.body().decode().splitlines()
        if line.startswith("trusthook_agent_digest_cache")
    ]
