"""A strict streaming reader of layer tars: headers in, checked entries out, bounded memory.

Python's ``tarfile`` keeps every member it has read (``TarFile.members``), reads pax and GNU
long-name headers of any size whole, ends the archive silently at a malformed or cut-short
header, expands sparse files densely and lets out-of-range numbers through to the extractor.
This reader keeps nothing but the current entry and refuses, with a one-line ``ImageError``
(``UnsafeLayerError`` for unsupported entry types), every one of those:

- a header cut short, a checksum that does not match, a number that is not octal or base-256,
  a negative size, a zero block followed by anything but a zero block or the end, file data or
  padding cut short, a pax or GNU long-name header not followed by an entry;
- pax records that are malformed, and pax and GNU long-name headers over ``MAX_META`` bytes;
- GNU sparse files in every format (type ``S``, pax ``GNU.sparse.*``) and entry types other
  than files, directories, links, devices and FIFOs;
- numbers Linux cannot represent: uid/gid outside 0..2**32-2, device numbers beyond major
  4095 / minor 2**20-1, an mtime that is not a finite decimal or does not fit 64 bits.

Formats read: ustar, pax (``x`` headers; ``g`` global headers are ignored, as containerd and
umoci do), GNU (long names and link names, base-256 numbers) and V7. The end of the archive is
two zero blocks, one zero block and the end of the stream, or the end of the stream between
entries (as Go's archive/tar reads it); what follows the end is left to the caller.
"""

from __future__ import annotations

import re
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import NamedTuple, Protocol

from trusthook.errors import ImageError, UnsafeLayerError

BLOCK = 512
MAX_META = 1 << 20
"""The largest pax or GNU long-name header read (Go's archive/tar has the same limit)."""
MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "unchanged" to chown
MAX_MAJOR = (1 << 12) - 1  # the kernel's 32-bit dev_t: 12 bits of major, 20 of minor
MAX_MINOR = (1 << 20) - 1
_NS = 1_000_000_000
_MAX_NS = (1 << 63) - 1
_READ = 1 << 20
_ZERO = bytes(BLOCK)
_TIME = re.compile(rb"(-?)([0-9]{1,20})(?:\.([0-9]+))?")
_NO_PAX: Mapping[str, bytes] = MappingProxyType({})
_SIGNED_SUM = struct.Struct("148b8x356b")
_XATTR = "SCHILY.xattr."
_SPARSE = "GNU.sparse."


class TarSource(Protocol):
    """What the reader reads: anything with ``read``; it need not seek."""

    def read(self, size: int, /) -> bytes: ...


class Kind(Enum):
    """What an entry is."""

    FILE = "file"
    HARDLINK = "hardlink"
    SYMLINK = "symlink"
    CHAR = "character device"
    BLOCK = "block device"
    DIR = "directory"
    FIFO = "fifo"


_KINDS = {
    b"0": Kind.FILE,
    b"\0": Kind.FILE,
    b"7": Kind.FILE,  # contiguous file: a regular file everywhere but on old Masscomp systems
    b"1": Kind.HARDLINK,
    b"2": Kind.SYMLINK,
    b"3": Kind.CHAR,
    b"4": Kind.BLOCK,
    b"5": Kind.DIR,
    b"6": Kind.FIFO,
}


class TarEntry(NamedTuple):
    """One entry, its numbers checked. A NamedTuple rather than a frozen dataclass: one is made
    per entry, on the hot path, and a tuple is built several times faster."""

    name: str
    kind: Kind
    size: int  # bytes of data that follow (files only; 0 for every other kind)
    mode: int  # the permission bits (stat.S_IMODE of the header's mode)
    uid: int
    gid: int
    mtime_ns: int
    linkname: str
    devmajor: int
    devminor: int
    xattrs: Mapping[str, bytes]  # every SCHILY.xattr.* record, raw


@dataclass
class _Pending:
    """What pax and GNU long-name headers said about the entry that follows them."""

    pax: dict[str, bytes] | None = None
    long_name: bytes | None = None
    long_link: bytes | None = None


_NOTHING = _Pending()


class TarReader:
    """Entries of a tar stream, one at a time: ``next()``, then ``read()`` a file's data."""

    def __init__(self, source: TarSource) -> None:
        self._source = source
        self._buf = b""
        self._pos = 0
        self.offset = 0  # bytes of the stream consumed
        self._left = 0  # data of the current entry not read yet
        self._padding = 0  # padding after it
        self._ended = False

    # --- the raw stream ---------------------------------------------------------------------

    def _take(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the stream)."""
        end = self._pos + n
        if end <= len(self._buf):  # the common case: a header block from the buffer
            out = self._buf[self._pos : end]
            self._pos = end
            self.offset += n
            return out
        parts = []
        need = n
        while need:
            if self._pos == len(self._buf):
                self._buf, self._pos = self._source.read(max(need, _READ)), 0
                if not self._buf:
                    break
            if self._pos == 0 and len(self._buf) <= need:
                part, self._buf = self._buf, b""
            else:
                part = self._buf[self._pos : self._pos + need]
                self._pos += len(part)
            parts.append(part)
            need -= len(part)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self.offset += len(out)
        return out

    def _exact(self, n: int, what: str) -> bytes:
        data = self._take(n)
        if len(data) != n:
            raise ImageError(f"layer tar is malformed: {what} at byte {self.offset} is cut short")
        return data

    def _skip(self, n: int, what: str) -> None:
        if self._pos + n <= len(self._buf):  # the common case: padding in the buffer
            self._pos += n
            self.offset += n
            return
        while n > 0:
            n -= len(self._exact(min(n, _READ), what))

    # --- entries ----------------------------------------------------------------------------

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the current file's data; ``b""`` once it is all read."""
        n = min(n, self._left)
        if n <= 0:
            return b""
        data = self._exact(n, "file data")
        self._left -= n
        return data

    def next(self) -> TarEntry | None:
        """The next entry, ``None`` at the end of the archive."""
        if self._ended:
            return None
        if self._left or self._padding:
            self._skip(self._left + self._padding, "file data")
            self._left = self._padding = 0
        pending = None
        while True:
            block = self._take(BLOCK)
            if len(block) < BLOCK or block == _ZERO:
                self._end(block, pending)
                return None
            start = self.offset - BLOCK
            _check_sum(block, start)
            flag = block[156:157]
            size = _number(block[124:136], "size", start)
            if flag not in _META_NAMES:
                return self._entry(block, flag, size, pending or _NOTHING, start)
            pending = pending or _Pending()
            self._meta(flag, size, pending, start)

    def _end(self, block: bytes, pending: _Pending | None) -> None:
        """The end of the archive: nothing, one zero block and nothing, or two zero blocks."""
        if block == _ZERO:
            block = self._take(BLOCK)
            if block not in (b"", _ZERO) and len(block) == BLOCK:
                raise ImageError(
                    f"layer tar is malformed: a header at byte {self.offset - BLOCK} "
                    "follows a zero block"
                )
        if block not in (b"", _ZERO):
            raise ImageError(
                f"layer tar is malformed: the header at byte {self.offset - len(block)} "
                f"is cut short ({len(block)} of {BLOCK} bytes)"
            )
        if pending is not None:
            raise ImageError("layer tar is malformed: a pax or GNU long-name header ends the tar")
        self._ended = True

    def _meta(self, flag: bytes, size: int, pending: _Pending, start: int) -> None:
        """Read a pax or GNU long-name header into ``pending``."""
        what = f"layer tar: the {_META_NAMES[flag]} at byte {start}"
        if size > MAX_META:
            raise ImageError(f"{what} is {size} bytes, more than {MAX_META}")
        data = self._exact(size, _META_NAMES[flag])
        self._skip(-size % BLOCK, "padding")
        if flag == b"g":
            return  # global pax headers are ignored (containerd, umoci)
        if flag == b"x":
            if pending.pax is not None:
                raise ImageError(f"{what} follows another pax header")
            pending.pax = _pax_records(data, what)
        elif flag == b"L":
            if pending.long_name is not None:
                raise ImageError(f"{what} follows another one")
            pending.long_name = _string(data)
        else:
            if pending.long_link is not None:
                raise ImageError(f"{what} follows another one")
            pending.long_link = _string(data)

    def _entry(
        self, block: bytes, flag: bytes, size: int, pending: _Pending, start: int
    ) -> TarEntry:
        pax = pending.pax or _NO_PAX
        name = _text(block, 0, pax.get("path"), pending.long_name, start)
        if pending.long_name is None and "path" not in pax and block[257:263] == b"ustar\0":
            prefix = _string(block[345:500])
            if prefix:
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        what = f"layer entry {name!r}"
        kind = _kind(flag, name, pax, what)
        uid = _number(block[108:116], "uid", start)
        gid = _number(block[116:124], "gid", start)
        mtime_ns = _number(block[136:148], "mtime", start, signed=True) * _NS
        xattrs = _NO_PAX
        if pax:
            size = _decimal(pax["size"], "size", what) if "size" in pax else size
            uid = _decimal(pax["uid"], "uid", what) if "uid" in pax else uid
            gid = _decimal(pax["gid"], "gid", what) if "gid" in pax else gid
            mtime_ns = _pax_time(pax["mtime"], what) if "mtime" in pax else mtime_ns
            xattrs = {k[len(_XATTR) :]: v for k, v in pax.items() if k.startswith(_XATTR)}
        if uid > MAX_ID or gid > MAX_ID:
            raise ImageError(f"{what}: uid {uid} or gid {gid} is out of range (0 to {MAX_ID})")
        if not -_MAX_NS <= mtime_ns <= _MAX_NS:
            raise ImageError(f"{what}: mtime {mtime_ns // _NS} s is out of range (64-bit ns)")
        major, minor = _device(block, kind, what, start)
        if kind is not Kind.FILE:
            size = 0
        link = _text(block, 157, pax.get("linkpath"), pending.long_link, start)
        self._left = size
        self._padding = -size % BLOCK
        raw_mode = _number(block[100:108], "mode", start)
        if raw_mode > _MAX_MODE:  # base-256 can say more than 7 octal digits
            raise ImageError(f"{what}: mode {raw_mode:o} is out of range (0 to {_MAX_MODE:o})")
        mode = stat.S_IMODE(raw_mode)
        return TarEntry(name, kind, size, mode, uid, gid, mtime_ns, link, major, minor, xattrs)


_MAX_MODE = 0o7777777  # what the 8-byte octal field holds

_META_NAMES = {
    b"x": "pax header",
    b"g": "global pax header",
    b"L": "GNU long name",
    b"K": "GNU long link name",
}


def _check_sum(block: bytes, start: int) -> None:
    try:
        expected = _number(block[148:156], "checksum", start)
    except ImageError:
        expected = -1  # not even a number: not a header
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    if expected != unsigned and expected != sum(_SIGNED_SUM.unpack(block)) + 8 * 32:
        raise ImageError(
            f"layer tar is malformed: the header at byte {start} fails its checksum "
            "(not a tar header)"
        )


def _number(field: bytes, what: str, start: int, *, signed: bool = False) -> int:
    """A numeric header field: octal digits (NUL or space padded) or GNU base-256 (two's
    complement after the marker bit). Negative only if ``signed``."""
    if field[0] & 0x80:
        bits = 8 * len(field) - 1
        value = int.from_bytes(field, "big") & ((1 << bits) - 1)
        if value >> (bits - 1):
            value -= 1 << bits
        if value < 0 and not signed:
            raise ImageError(
                f"layer tar is malformed: the header at byte {start} has {what} {value}"
            )
        return value
    digits = field.strip(b" \0")
    try:
        if digits.isdigit():
            return int(digits, 8)  # ValueError for an 8 or a 9
        if not digits:
            return 0
    except ValueError:
        pass
    raise ImageError(
        f"layer tar is malformed: the header at byte {start} has {what} {digits!r}, "
        "expected octal digits"
    )


def _kind(flag: bytes, name: str, pax: Mapping[str, bytes], what: str) -> Kind:
    kind = _KINDS.get(flag)
    if flag == b"S" or (pax and any(k.startswith(_SPARSE) for k in pax)):
        raise UnsafeLayerError(f"{what}: sparse files are not supported")
    if kind is None:
        raise UnsafeLayerError(f"{what}: unsupported entry type {flag.decode('latin-1')!r}")
    if flag == b"\0" and name.endswith("/"):
        return Kind.DIR  # V7: a directory is a file whose name ends in "/"
    return kind


def _device(block: bytes, kind: Kind, what: str, start: int) -> tuple[int, int]:
    """A device's major and minor numbers; (0, 0) for other kinds."""
    if kind is not Kind.CHAR and kind is not Kind.BLOCK:
        return 0, 0
    major = _number(block[329:337], "devmajor", start)
    minor = _number(block[337:345], "devminor", start)
    if major > MAX_MAJOR or minor > MAX_MINOR:
        raise ImageError(
            f"{what}: device number {major}:{minor} is out of range "
            f"(major 0 to {MAX_MAJOR}, minor 0 to {MAX_MINOR})"
        )
    return major, minor


def _decimal(value: bytes, name: str, what: str) -> int:
    if not (value.isdigit() and len(value) <= 20):
        raise ImageError(f"{what}: pax {name} is {value[:40]!r}, expected a decimal number")
    return int(value)


def _pax_time(value: bytes, what: str) -> int:
    """Decimal seconds, optionally negative and with a fraction, as nanoseconds."""
    match = _TIME.fullmatch(value)
    if match is None:
        raise ImageError(f"{what}: pax mtime is {value[:40]!r}, expected decimal seconds")
    sign, seconds, fraction = match.groups()
    ns = int(seconds) * _NS + int((fraction or b"0")[:9].ljust(9, b"0"))
    return -ns if sign else ns


def _text(block: bytes, at: int, pax: bytes | None, gnu: bytes | None, start: int) -> str:
    """A name (``at`` 0) or link name (157): from its pax record, its GNU long-name header or
    the header itself; both of the first two is ambiguous and refused."""
    if pax is not None and gnu is not None:
        raise ImageError(
            f"layer tar: the header at byte {start} has a pax and a GNU long name for one field"
        )
    raw = pax if pax is not None else gnu if gnu is not None else _string(block[at : at + 100])
    return raw.decode("utf-8", "surrogateescape")


def _string(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _pax_records(data: bytes, what: str) -> dict[str, bytes]:
    """``LENGTH KEY=VALUE\\n`` records (the length counts the whole record); later keys win."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        length = data[pos:space]
        end = pos + int(length) if space > pos and length.isdigit() else -1
        record = data[space + 1 : end]
        key, eq, value = record.partition(b"=")
        if not space < end <= len(data) or not record.endswith(b"\n") or not eq or not key:
            raise ImageError(f"{what}: malformed record at byte {pos} of the header")
        records[key.decode("utf-8", "surrogateescape")] = value[:-1]
        pos = end
    return records
