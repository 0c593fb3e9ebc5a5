"""Choosing the hasher, in one place: ``Config.hasher`` (``[agent] hasher`` or
``TRUSTHOOK_HASHER=auto|native|python``).

``auto`` (the default) takes the native hasher and falls back to the Python reference with a
warning; ``native`` fails loudly when the native hasher is missing. The chosen object's
``backend`` attribute says which one is active. ``cache_entries`` gives the native hasher a
digest cache of that bound (docs/measurement.md, 1.11); the Python reference never caches.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Protocol

from trusthook.common.config import HASHER_ENV, HASHERS
from trusthook.errors import BlobError, ConfigError, NativeUnavailableError
from trusthook.measure.native import CacheStats, DigestCache, NativeHasher
from trusthook.measure.walk import RootfsMeasurement, measure_rootfs

log = logging.getLogger(__name__)


class Hasher(Protocol):
    backend: str

    def measure_rootfs(self, path: str | os.PathLike[str]) -> RootfsMeasurement: ...

    def blob_digest_fd(self, fd: int) -> bytes: ...

    def blob_digests(self, paths: Sequence[str | os.PathLike[str]]) -> list[bytes]: ...

    def cache_stats(self) -> CacheStats | None: ...


class PythonHasher:
    """The pure-Python reference implementation."""

    backend = "python"

    def measure_rootfs(self, path: str | os.PathLike[str]) -> RootfsMeasurement:
        return measure_rootfs(path)

    def cache_stats(self) -> CacheStats | None:
        return None  # the reference hashes everything, every time

    def blob_digest_fd(self, fd: int) -> bytes:
        h = hashlib.sha256()
        try:
            while chunk := os.read(fd, 1 << 16):
                h.update(chunk)
        except OSError as e:
            raise BlobError(f"cannot read fd {fd}: {e.strerror}") from None
        return h.digest()

    def blob_digests(self, paths: Sequence[str | os.PathLike[str]]) -> list[bytes]:
        out = []
        for path in paths:
            try:
                with open(path, "rb") as f:
                    out.append(hashlib.file_digest(f, "sha256").digest())
            except OSError as e:
                raise BlobError(f"cannot read blob {os.fsdecode(path)}: {e.strerror}") from None
        return out


def select_hasher(wanted: str, *, threads: int | None = None, cache_entries: int = 0) -> Hasher:
    """The hasher ``wanted`` (``Config.hasher``: auto, native or python) names; a native one
    with a digest cache of ``cache_entries`` entries when that is > 0."""
    if wanted not in HASHERS:
        raise ConfigError(f"hasher {wanted!r}; expected one of {', '.join(HASHERS)}")
    if wanted == "python":
        return PythonHasher()
    try:
        cache = DigestCache(max_entries=cache_entries) if cache_entries > 0 else None
        return NativeHasher(threads=threads, cache=cache)
    except NativeUnavailableError as e:
        if wanted == "native":
            raise NativeUnavailableError(
                f"hasher 'native' is required ([agent] hasher or {HASHER_ENV}), but {e}"
            ) from e
        log.warning("native hasher unavailable, using the Python reference: %s", e)
        return PythonHasher()
