"""The native hasher: a thin, typed wrapper over ``trusthook._native`` (native/).

Every argument is checked and every buffer allocated here; C gets plain pointers and lengths and
returns a status code that becomes a typed error. cffi releases the GIL for each call.

``DigestCache`` is the native digest cache (docs/measurement.md, 1.11): whoever makes the hasher
makes the cache and hands it in; the Python reference never caches.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trusthook.errors import BlobError, MeasurementError, NativeUnavailableError, ServiceError
from trusthook.measure.walk import RootfsMeasurement

EXPECTED_NATIVE_VERSION = 2
_ERRLEN = 2048
_TH_ERR_MEASURE, _TH_ERR_IO, _TH_ERR_NOMEM, _TH_ERR_ARG = 1, 2, 3, 5
# the agent's cache: 2^18 entries of 88 bytes, 22 MiB at most, resident only as it fills
DEFAULT_CACHE_ENTRIES = 1 << 18
MAX_CACHE_ENTRIES = 1 << 30
# a file changed less than this before a measurement starts is hashed but not cached, so that a
# change right after the measurement moves ctime even on filesystems with 1-second timestamps
DEFAULT_MIN_AGE_NS = 2_000_000_000


def _load() -> tuple[Any, Any]:
    try:
        native = importlib.import_module("trusthook._native")
    except ImportError as e:
        raise NativeUnavailableError(
            f"trusthook._native is not built ({e}); reinstall trusthook with a C compiler,"
            " libssl-dev and cffi present"
        ) from e
    version = native.lib.th_version()
    if version != EXPECTED_NATIVE_VERSION:
        raise NativeUnavailableError(
            f"trusthook._native has version {version}, expected {EXPECTED_NATIVE_VERSION};"
            " rebuild it (pip install -e .)"
        )
    return native.ffi, native.lib


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A digest cache's counts: lookups answered and not since it was made, entries held now,
    and the most it holds (``max_entries`` rounded down to a multiple of 16)."""

    hits: int
    misses: int
    entries: int
    capacity: int


class DigestCache:
    """A bounded, thread-safe cache of regular files' content digests for ``NativeHasher``,
    keyed by (st_dev, st_ino, st_size, st_mtime, st_ctime). Memory is fixed when it is made
    (88 bytes per entry) and freed when the object is collected.

    A file whose ctime is less than ``min_age_ns`` before the start of a measurement is hashed
    but not admitted (tests pass 0)."""

    def __init__(
        self, *, max_entries: int = DEFAULT_CACHE_ENTRIES, min_age_ns: int = DEFAULT_MIN_AGE_NS
    ) -> None:
        if not 1 <= max_entries <= MAX_CACHE_ENTRIES:
            raise ValueError(f"max_entries must be 1..{MAX_CACHE_ENTRIES}, got {max_entries}")
        if not 0 <= min_age_ns < 1 << 62:
            raise ValueError(f"min_age_ns must be 0..2^62, got {min_age_ns}")
        self._ffi, self._lib = _load()
        out = self._ffi.new("th_cache **")
        errbuf = self._ffi.new("char[]", _ERRLEN)
        status = self._lib.th_cache_new(max_entries, min_age_ns, out, errbuf, _ERRLEN)
        if status:
            message = self._ffi.string(errbuf).decode("utf-8", "backslashreplace")
            if status == _TH_ERR_NOMEM:
                raise MemoryError(message)
            raise ServiceError(f"cannot make the digest cache: {message}")
        self.pointer = self._ffi.gc(out[0], self._lib.th_cache_free)
        self.max_entries = max_entries
        self.min_age_ns = min_age_ns

    def stats(self) -> CacheStats:
        counts = self._ffi.new("unsigned long long[4]")
        self._lib.th_cache_stats(self.pointer, counts, counts + 1, counts + 2, counts + 3)
        return CacheStats(hits=counts[0], misses=counts[1], entries=counts[2], capacity=counts[3])


class NativeHasher:
    """Rootfs and blob digests in C; bit-identical to the Python reference."""

    backend = "native"

    def __init__(self, *, threads: int | None = None, cache: DigestCache | None = None) -> None:
        self._ffi, self._lib = _load()
        self.threads = threads if threads is not None else default_threads()
        if not 1 <= self.threads <= 1024:
            raise ValueError(f"threads must be 1..1024, got {self.threads}")
        self.cache = cache

    def cache_stats(self) -> CacheStats | None:
        """The digest cache's counts; None without a cache."""
        return self.cache.stats() if self.cache is not None else None

    def _raise(self, status: int, errbuf: Any, kind: type[Exception]) -> None:
        message = self._ffi.string(errbuf).decode("utf-8", "backslashreplace")
        if status in (_TH_ERR_MEASURE, _TH_ERR_IO):
            raise kind(message)
        if status == _TH_ERR_NOMEM:
            raise MemoryError(message)
        raise ServiceError(f"native hasher failed: {message}")

    def measure_rootfs(self, path: str | os.PathLike[str]) -> RootfsMeasurement:
        raw = os.fsencode(path)
        if b"\0" in raw:
            raise MeasurementError(f"rootfs path {raw!r} contains a NUL byte")
        digest = self._ffi.new("unsigned char[32]")
        entries = self._ffi.new("unsigned long long *")
        hashed = self._ffi.new("unsigned long long *")
        errbuf = self._ffi.new("char[]", _ERRLEN)
        cache = self.cache  # alive for the whole call
        pointer = cache.pointer if cache is not None else self._ffi.NULL
        status = self._lib.th_tree_digest(
            raw, self.threads, pointer, digest, entries, hashed, errbuf, _ERRLEN
        )
        if status:
            self._raise(status, errbuf, MeasurementError)
        return RootfsMeasurement(
            digest=bytes(self._ffi.buffer(digest, 32)), entries=entries[0], bytes_hashed=hashed[0]
        )

    def blob_digest_fd(self, fd: int) -> bytes:
        if fd < 0:
            raise ValueError(f"fd must be >= 0, got {fd}")
        digest = self._ffi.new("unsigned char[32]")
        errbuf = self._ffi.new("char[]", _ERRLEN)
        status = self._lib.th_blob_digest_fd(fd, digest, errbuf, _ERRLEN)
        if status:
            self._raise(status, errbuf, BlobError)
        return bytes(self._ffi.buffer(digest, 32))

    def blob_digests(self, paths: Sequence[str | os.PathLike[str]]) -> list[bytes]:
        raw = [os.fsencode(p) for p in paths]
        if any(b"\0" in p for p in raw):
            raise BlobError("a blob path contains a NUL byte")
        if not raw:
            return []
        keep = [self._ffi.new("char[]", p) for p in raw]  # alive for the whole call
        array = self._ffi.new("const char *[]", keep)
        out = self._ffi.new("unsigned char[]", 32 * len(raw))
        errbuf = self._ffi.new("char[]", _ERRLEN)
        status = self._lib.th_blob_digests(array, len(raw), self.threads, out, errbuf, _ERRLEN)
        if status:
            self._raise(status, errbuf, BlobError)
        data = bytes(self._ffi.buffer(out, 32 * len(raw)))
        return [data[i : i + 32] for i in range(0, len(data), 32)]
