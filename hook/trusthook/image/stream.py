"""A layer blob as a stream of tar bytes: decrypt, hash, decompress, hash, with bounded memory.

Every stage reads at most ``CHUNK`` bytes at a time and never returns more than it was asked for
(a gzip or zstd bomb cannot make one read huge). ``LayerStream`` runs the stages in a producer
thread so decryption and decompression (which release the GIL) overlap with tar extraction; the
queue between them holds at most ``QUEUE_DEPTH`` chunks.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
import zlib
from types import TracebackType
from typing import IO, cast

import zstandard

from trusthook.common.digest import digest_string
from trusthook.errors import ImageError
from trusthook.image.cipher import LayerCipher
from trusthook.image.layout import CHUNK
from trusthook.image.tarreader import TarSource

QUEUE_DEPTH = 8


class DecryptingReader(io.RawIOBase):
    """Read a blob, decrypt it if a cipher is given, and hash the plaintext blob."""

    def __init__(self, raw: IO[bytes], cipher: LayerCipher | None) -> None:
        self._raw = raw
        self._cipher = cipher
        self.hasher = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1, /) -> bytes:
        data = self._raw.read(CHUNK if n < 0 else min(n, CHUNK))
        if self._cipher is not None:
            data = self._cipher.update(data)
        self.hasher.update(data)
        self.size += len(data)
        return data

    def digest(self) -> str:
        """The digest of the plaintext blob read so far."""
        return digest_string(self.hasher.digest())


class GzipReader(io.RawIOBase):
    """gzip (one or more members) decompressed in bounded reads; a truncated stream is refused."""

    def __init__(self, source: TarSource) -> None:
        self._source = source
        self._z = zlib.decompressobj(wbits=31)
        self._input = b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1, /) -> bytes:
        limit = CHUNK if n < 0 else n
        while True:
            if self._z.eof:  # a member ended: another may follow
                rest = self._z.unused_data or self._source.read(CHUNK)
                if not rest:
                    return b""
                self._z = zlib.decompressobj(wbits=31)
                self._input = rest
            if not self._input:
                self._input = self._source.read(CHUNK)
                if not self._input:
                    raise ImageError("layer: the gzip stream is truncated")
            try:
                out = self._z.decompress(self._input, limit)
            except zlib.error as e:
                raise ImageError(f"layer: the gzip stream is corrupt: {e}") from None
            self._input = self._z.unconsumed_tail
            if out:
                return out


class ZstdReader(io.RawIOBase):
    """zstd (one or more frames) decompressed in bounded reads; corrupt data is refused. A
    stream cut short ends silently (zstandard does not tell): the diff_id check refuses it."""

    def __init__(self, source: TarSource) -> None:
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], source), read_size=CHUNK, read_across_frames=True
        )

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1, /) -> bytes:
        try:
            return self._reader.read(CHUNK if n < 0 else n)
        except zstandard.ZstdError as e:
            raise ImageError(f"layer: the zstd stream is corrupt: {e}") from None


def decompressing(source: TarSource, compression: str) -> TarSource:
    """``source`` decompressed as ``compression`` (none, gzip or zstd)."""
    if compression == "gzip":
        return GzipReader(source)
    if compression == "zstd":
        return ZstdReader(source)
    return source


class LayerStream(io.RawIOBase):
    """The uncompressed tar of a layer, produced by a thread; hashes it for the diff_id.

    ``close`` (or leaving the ``with``) stops the producer and waits for it.
    """

    def __init__(self, source: TarSource) -> None:
        self._source = source
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(QUEUE_DEPTH)
        self._stop = threading.Event()
        self._buffer = memoryview(b"")
        self._eof = False
        self.hasher = hashlib.sha256()
        self._thread = threading.Thread(target=self._produce, name="layer-stream", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._source.read(CHUNK)
                if not data:
                    break
                self.hasher.update(data)
                self._put(data)
            self._put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(e)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1, /) -> bytes:
        if not self._buffer and not self._eof:
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if item is None:
                self._eof = True
            else:
                self._buffer = memoryview(item)
        if n < 0:
            n = len(self._buffer)
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return bytes(out)

    def drain(self) -> str:
        """Read to the end (tar padding after the last entry counts too); the diff_id."""
        while self.read(CHUNK):
            pass
        return digest_string(self.hasher.digest())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        super().close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
