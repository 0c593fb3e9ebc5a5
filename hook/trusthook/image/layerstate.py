"""What applying one layer must remember, kept compact: the paths it made, for its whiteouts,
and its directories, whose metadata is set after its last entry.

Nothing else is kept per entry: a layer of a million files in a thousand directories costs
about 16 MB here (the path set), not the ~0.85 KB per entry that ``tarfile``'s member list
and sets of path tuples cost.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator, Mapping
from typing import NamedTuple

RelPath = tuple[str, ...]
"""A normalised path inside the root, one component per item; ``()`` is the root itself."""

_INITIAL_SLOTS = 1 << 10
_MASK = (1 << 64) - 1
_RECORD = struct.Struct("<IIIqI")  # mode, uid, gid, mtime_ns, length of the key


def key(path: RelPath) -> str:
    """The one string naming ``path`` in the structures here."""
    return "/".join(path)


class Meta(NamedTuple):
    """Ownership, permission bits, mtime and extended attributes to give an entry."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: Mapping[str, bytes]


class PathSet:
    """A set of path keys stored as their 64-bit hashes in one open-addressing table (an
    ``array('Q')`` kept at most two-thirds full): 12 to 24 bytes per path.

    A lookup can answer yes for a path never added when two keys share a hash: with Python's
    per-process keyed SipHash that is about ``len/2**64`` per lookup (5e-14 at a million
    paths). For whiteouts that means a lower-layer entry stays visible, never an escape, and
    whoever could aim a collision writes the layer's whiteouts anyway.
    """

    def __init__(self) -> None:
        self._slots = array("Q", bytes(8 * _INITIAL_SLOTS))
        self._used = 0

    def add(self, path_key: str) -> None:
        slots = self._slots
        mask = len(slots) - 1
        value = hash(path_key) & _MASK or 1  # 0 marks an empty slot
        i = value & mask
        while found := slots[i]:
            if found == value:
                return
            i = (i + 1) & mask
        slots[i] = value
        self._used += 1
        if 3 * self._used > 2 * len(slots):
            self._grow()

    def __contains__(self, path_key: object) -> bool:
        slots = self._slots
        mask = len(slots) - 1
        value = hash(path_key) & _MASK or 1
        i = value & mask
        while found := slots[i]:
            if found == value:
                return True
            i = (i + 1) & mask
        return False

    def _grow(self) -> None:
        old = self._slots
        slots = self._slots = array("Q", bytes(16 * len(old)))
        mask = len(slots) - 1
        for value in old:
            if value:
                i = value & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = value


class DirRecords:
    """The directory entries of a layer, to finish after its last entry: packed into one
    buffer (24 bytes and the path per directory, xattrs apart when there are any) and an
    index by depth (8 bytes per directory), so that they are finished deepest first.

    A directory removed while the layer is applied (a later entry replaced it) voids the
    records of it and below it made before the removal; its replacement brings its own.
    """

    def __init__(self) -> None:
        self._log = bytearray()
        self._by_depth: dict[int, array[int]] = {}
        self._xattrs: dict[int, Mapping[str, bytes]] = {}
        self._gone: dict[str, int] = {}  # removed directory -> the log's length then

    def add(self, path: RelPath, meta: Meta) -> None:
        offset = len(self._log)
        name = key(path).encode("utf-8", "surrogateescape")
        self._log += _RECORD.pack(meta.mode, meta.uid, meta.gid, meta.mtime_ns, len(name))
        self._log += name
        self._by_depth.setdefault(len(path), array("Q")).append(offset)
        if meta.xattrs:
            self._xattrs[offset] = meta.xattrs

    def removed(self, path: RelPath) -> None:
        """The directory ``path`` is gone with its tree."""
        self._gone[key(path)] = len(self._log)

    def deepest_first(self) -> Iterator[tuple[RelPath, Meta]]:
        """Every live record, deepest first; records of one depth in the order they came
        (so that a later entry for the same directory wins)."""
        for depth in sorted(self._by_depth, reverse=True):
            for offset in self._by_depth[depth]:
                mode, uid, gid, mtime_ns, size = _RECORD.unpack_from(self._log, offset)
                start = offset + _RECORD.size
                path = tuple(
                    self._log[start : start + size].decode("utf-8", "surrogateescape").split("/")
                )
                if not self._void(path, offset):
                    yield path, Meta(mode, uid, gid, mtime_ns, self._xattrs.get(offset, {}))

    def _void(self, path: RelPath, offset: int) -> bool:
        if not self._gone:
            return False
        return any(self._gone.get(key(path[:i]), -1) > offset for i in range(1, len(path) + 1))
