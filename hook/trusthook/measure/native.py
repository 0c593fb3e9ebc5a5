"""The native hasher: a thin, typed wrapper over ``trusthook._native`` (native/).

Every argument is checked and every buffer allocated here; C gets plain pointers and lengths and
returns a status code that becomes a typed error. cffi releases the GIL for each call.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

from trusthook.errors import BlobError, MeasurementError, NativeUnavailableError, ServiceError
from trusthook.measure.walk import RootfsMeasurement

EXPECTED_NATIVE_VERSION = 1
_ERRLEN = 2048
_TH_ERR_MEASURE, _TH_ERR_IO, _TH_ERR_NOMEM = 1, 2, 3


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


class NativeHasher:
    """Rootfs and blob digests in C; bit-identical to the Python reference."""

    backend = "native"

    def __init__(self, *, threads: int | None = None) -> None:
        self._ffi, self._lib = _load()
        self.threads = threads if threads is not None else default_threads()
        if not 1 <= self.threads <= 1024:
            raise ValueError(f"threads must be 1..1024, got {self.threads}")

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
        status = self._lib.th_tree_digest(
            raw, self.threads, digest, entries, hashed, errbuf, _ERRLEN
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
