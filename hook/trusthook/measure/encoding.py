"""The canonical rootfs encoding: pure data in, bytes out (docs/measurement.md).

The digest of a rootfs is SHA-256 over ``MAGIC`` followed by one record per entry, records in
ascending order of their raw path bytes. A second implementation (the native hasher) must
produce the same bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

MAGIC = b"trusthook-rootfs-v1\n"


class Kind(Enum):
    """Entry type, encoded as one ASCII byte."""

    REGULAR = b"f"
    DIRECTORY = b"d"
    SYMLINK = b"l"
    HARDLINK = b"h"
    CHAR_DEVICE = b"c"
    BLOCK_DEVICE = b"b"
    FIFO = b"p"
    SOCKET = b"s"


# Extended attributes that are part of the measurement. Everything else is left out because
# the host, not the image, decides it (SELinux labels, IMA/EVM signatures, overlayfs internals).
MEASURED_XATTR_PREFIXES = (b"user.", b"trusted.", b"security.capability")
EXCLUDED_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
MEASURED_XATTR_NAMES = (b"system.posix_acl_access", b"system.posix_acl_default")


def xattr_is_measured(name: bytes) -> bool:
    """True when an extended attribute of this name is part of the rootfs measurement."""
    if name.startswith(EXCLUDED_XATTR_PREFIXES):
        return False
    if name in MEASURED_XATTR_NAMES:
        return True
    if name.startswith(b"security."):
        return name == b"security.capability"
    return name.startswith(MEASURED_XATTR_PREFIXES)


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One filesystem object of the rootfs, as measured.

    ``path`` is relative to the root, components joined by ``/``, with no leading slash; the root
    itself is ``b""``. ``target`` is the symlink target (verbatim) or, for a hard link, the path of
    the first entry in sort order that shares its inode. ``content_sha256`` is set for regular
    files only.
    """

    path: bytes
    kind: Kind
    mode: int
    uid: int
    gid: int
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    size: int = 0
    content_sha256: bytes = b""
    target: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0


def _blob(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def encode_entry(entry: Entry) -> bytes:
    """The record bytes of one entry."""
    parts = [
        _blob(entry.path),
        entry.kind.value,
        struct.pack(">III", entry.mode & 0o7777, entry.uid, entry.gid),
        struct.pack(">I", len(entry.xattrs)),
    ]
    for name, value in sorted(entry.xattrs):
        parts += [_blob(name), _blob(value)]
    if entry.kind is Kind.REGULAR:
        if len(entry.content_sha256) != 32:
            raise ValueError(f"regular file {entry.path!r} has no SHA-256 content digest")
        parts += [struct.pack(">Q", entry.size), entry.content_sha256]
    elif entry.kind in (Kind.SYMLINK, Kind.HARDLINK):
        parts.append(_blob(entry.target))
    elif entry.kind in (Kind.CHAR_DEVICE, Kind.BLOCK_DEVICE):
        parts.append(struct.pack(">II", entry.rdev_major, entry.rdev_minor))
    return b"".join(parts)


def rootfs_digest(entries: Iterable[Entry]) -> bytes:
    """SHA-256 over MAGIC and the records of ``entries`` in ascending raw-path order."""
    h = hashlib.sha256(MAGIC)
    for entry in sorted(entries, key=lambda e: e.path):
        h.update(encode_entry(entry))
    return h.digest()
