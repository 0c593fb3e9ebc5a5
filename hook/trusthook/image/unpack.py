"""Apply OCI layer tars onto a root directory without ever leaving it.

Each layer is read once, as a stream (``tarreader``), and every entry is applied by hand: every
path is resolved inside the root one directory component at a time with ``O_NOFOLLOW`` relative
to its parent's descriptor (``resolve``), so no symlink, whether made by this layer or a lower
one, is ever followed. Names that are absolute, hold ``..``, are empty or hold NUL are refused.
Whiteouts follow the OCI image spec (layer.md): ``.wh.NAME`` hides ``NAME`` and ``.wh..wh..opq``
hides every other entry of its directory, in both cases only what lower layers made: entries of
the same layer stay, whatever their order in the tar. Ownership is numeric (no name lookups)
and nothing from the root is ever executed or loaded.

Per entry, only what later entries need is kept (``layerstate``): the paths the layer made (for
its whiteouts) and its directories (finished after its last entry).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from trusthook.errors import ImageError, UnsafeLayerError
from trusthook.image.choices import Devices, Setuid
from trusthook.image.layerstate import DirRecords, Meta, PathSet, RelPath, key
from trusthook.image.resolve import DirCursor, show
from trusthook.image.tarreader import Kind, TarEntry, TarReader, TarSource
from trusthook.image.tree import DIR_FLAGS, listing, prune, remove_entry

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_CAPABILITY = "security.capability"
_SETID = stat.S_ISUID | stat.S_ISGID

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class ExtractPolicy:
    """What a layer may hold beyond plain files, directories and links.

    ``devices``: character and block devices are refused, skipped or created (FIFOs are always
    created). ``setuid``: setuid/setgid bits and ``security.capability`` on regular files are
    refused, stripped or kept. ``preserve_owner``: chown to the tar's numeric uid/gid.
    """

    devices: Devices = Devices.REFUSE
    setuid: Setuid = Setuid.STRIP
    preserve_owner: bool = True


def apply_layer(
    root: Path, tar: TarSource, policy: ExtractPolicy, *, keep: frozenset[str] = frozenset()
) -> None:
    """Apply one uncompressed layer tar stream onto the directory ``root`` (OCI layer rules).

    ``tar`` (an ``IO[bytes]`` or any reader, seekable or not) is read sequentially, once, up
    to the end of the archive. ``keep`` names (relative to ``root``) entries already in
    ``root`` that the runtime owns (mount points, directories or not): entries for them are
    skipped, and whiteouts never remove them or the directories that hold them. Raises
    ``UnsafeLayerError`` for an entry that would escape the root or that ``policy`` forbids,
    ``ImageError`` for a malformed layer or a failed write.
    """
    try:
        root_fd = os.open(root, DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError as e:
        raise ImageError(f"cannot open unpack root {root}: {e.strerror}") from e
    try:
        _Layer(root_fd=root_fd, reader=TarReader(tar), policy=policy, keep=keep).apply_all()
    except OSError as e:  # reading the stream itself failed
        raise ImageError(f"layer tar cannot be read: {e.strerror or e}") from e
    finally:
        os.close(root_fd)


def split_name(name: str, what: str) -> RelPath:
    """Normalise a layer name into components; refuse absolute, ``..``, empty and NUL names.

    ``what`` names the entry in error messages. ``.`` and ``./`` give the root, ``()``.
    """
    if not name:
        raise UnsafeLayerError(f"{what}: empty name")
    if "\0" in name:
        raise UnsafeLayerError(f"{what}: name holds a NUL byte")
    if name.startswith("/"):
        raise UnsafeLayerError(f"{what}: absolute path")
    parts = name.split("/")
    if "" in parts or "." in parts:
        parts = [p for p in parts if p and p != "."]
    if ".." in parts:
        raise UnsafeLayerError(f"{what}: path escapes the root")
    return tuple(parts)


def _ancestors(path: RelPath) -> list[RelPath]:
    """``path`` and every directory above it, excluding the root."""
    return [path[:i] for i in range(1, len(path) + 1)]


@dataclass(kw_only=True)
class _Layer:
    """The state of one layer being applied: what it made and the directories to finish."""

    root_fd: int
    reader: TarReader
    policy: ExtractPolicy
    keep: frozenset[str]
    made: PathSet = field(default_factory=PathSet)  # made or written into, and their parents
    dirs: DirRecords = field(default_factory=DirRecords)
    kept: set[RelPath] = field(default_factory=set)
    holds_kept: set[RelPath] = field(default_factory=set)  # runtime entries and their parents
    last_parent: RelPath = ()  # whose parents are all in ``made``
    cursor: DirCursor = field(init=False)

    def __post_init__(self) -> None:
        """Runtime entries, and the directories holding them, count as made by this layer."""
        for name in self.keep:
            path = split_name(name, f"runtime entry {name!r}")
            self.kept.add(path)
            for above in _ancestors(path):
                self.holds_kept.add(above)
                self.made.add(key(above))
        self.cursor = DirCursor(self.root_fd)

    def apply_all(self) -> None:
        """Apply every entry, then give directories their final mode, owner and mtime."""
        try:
            while (entry := self.reader.next()) is not None:
                what = f"layer entry {entry.name!r}"
                try:
                    self._apply(entry, what)
                except OSError as e:
                    raise ImageError(f"{what}: {e.strerror or e}") from e
            for path, meta in self.dirs.deepest_first():
                what = f"layer directory {show(path)!r}"
                try:
                    self._finish_dir(path, meta, what)
                except OSError as e:
                    raise ImageError(f"{what}: {e.strerror or e}") from e
        finally:
            self.cursor.close()

    def _apply(self, entry: TarEntry, what: str) -> None:
        path = split_name(entry.name, what)
        base = path[-1] if path else ""
        if base.startswith(_WHITEOUT):
            self._whiteout(path, what)
        elif not path:
            if entry.kind is not Kind.DIR:
                raise UnsafeLayerError(f"{what}: the root entry is not a directory")
        elif path in self.kept or (entry.kind is not Kind.DIR and path in self.holds_kept):
            log.debug("%s: skipped, the runtime owns this path", what)
        else:
            self._create(entry, path, what)

    def _create(self, entry: TarEntry, path: RelPath, what: str) -> None:
        if entry.kind in (Kind.CHAR, Kind.BLOCK) and self.policy.devices is not Devices.ALLOW:
            if self.policy.devices is Devices.REFUSE:
                raise UnsafeLayerError(f"{what}: device nodes are refused by the policy")
            log.debug("%s: device node skipped by the policy", what)
            return
        meta = self._meta(entry, what)
        parent = self.cursor.at(path[:-1], what, create=True)
        self._create_in(parent, entry, path, meta, what)
        self.made.add(key(path))
        if path[:-1] == self.last_parent:
            return
        for depth in range(len(path) - 1, 0, -1):  # its parents, up to one already there
            above = key(path[:depth])
            if above in self.made:
                break
            self.made.add(above)
        self.last_parent = path[:-1]

    def _create_in(
        self, parent: int, entry: TarEntry, path: RelPath, meta: Meta, what: str
    ) -> None:
        name = path[-1]
        if entry.kind is Kind.DIR:
            self._make_dir(parent, name, path)
            self.dirs.add(path, meta)
        elif entry.kind is Kind.FILE:
            self._write_file(parent, name, path, meta)
        elif entry.kind is Kind.HARDLINK:
            self._hardlink(parent, entry, path, what)
        elif entry.kind is Kind.SYMLINK:
            if not entry.linkname or "\0" in entry.linkname:
                raise UnsafeLayerError(f"{what}: symlink target is empty or holds a NUL byte")
            self._replace(parent, path, lambda: os.symlink(entry.linkname, name, dir_fd=parent))
            self._set_node_meta(parent, name, meta, chmod=False)
        elif entry.kind is Kind.FIFO:
            self._replace(parent, path, lambda: os.mkfifo(name, 0o600, dir_fd=parent))
            self._set_node_meta(parent, name, meta, chmod=True)
        else:
            kind = stat.S_IFCHR if entry.kind is Kind.CHAR else stat.S_IFBLK
            device = os.makedev(entry.devmajor, entry.devminor)
            self._replace(parent, path, lambda: os.mknod(name, kind | 0o600, device, dir_fd=parent))
            self._set_node_meta(parent, name, meta, chmod=True)

    def _replace(self, parent: int, path: RelPath, make: Callable[[], T]) -> T:
        """``make()`` the entry ``path`` (in ``parent``), first removing what is there."""
        try:
            return make()
        except FileExistsError:
            self._remove(parent, path)
            return make()

    def _make_dir(self, parent: int, name: str, path: RelPath) -> None:
        """Keep an existing directory; replace anything else by a new private one."""
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
            return
        except FileExistsError:
            if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                return
        self._remove(parent, path)
        os.mkdir(name, 0o700, dir_fd=parent)

    def _write_file(self, parent: int, name: str, path: RelPath, meta: Meta) -> None:
        fd = self._replace(parent, path, lambda: os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent))
        try:
            while data := self.reader.read(_CHUNK):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            self._set_fd_meta(fd, meta)
        finally:
            os.close(fd)

    def _hardlink(self, parent: int, entry: TarEntry, path: RelPath, what: str) -> None:
        """Link ``path`` to the layer-relative ``entry.linkname``, itself never followed."""
        target = split_name(entry.linkname, f"{what}: hardlink target {entry.linkname!r}")
        if not target:
            raise UnsafeLayerError(f"{what}: hardlink target is the root")
        if target[: len(path)] == path:
            raise ImageError(f"{what}: hardlink to itself or to an entry below it")
        parent = os.dup(parent)  # the cursor moves on to the target's directory
        try:
            src_dir = self.cursor.at(target[:-1], what, create=False)
            try:
                if src_dir is None:
                    raise FileNotFoundError
                st = os.stat(target[-1], dir_fd=src_dir, follow_symlinks=False)
            except FileNotFoundError:
                raise ImageError(
                    f"{what}: hardlink target {show(target)!r} does not exist"
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeLayerError(f"{what}: hardlink target {show(target)!r} is a directory")
            self._replace(
                parent,
                path,
                lambda: os.link(
                    target[-1],
                    path[-1],
                    src_dir_fd=src_dir,
                    dst_dir_fd=parent,
                    follow_symlinks=False,
                ),
            )
        finally:
            os.close(parent)

    def _meta(self, entry: TarEntry, what: str) -> Meta:
        """The attributes ``entry`` asks for, after the setuid policy (regular files only)."""
        mode = entry.mode
        xattrs = self._xattrs(entry, what) if entry.xattrs else {}
        if entry.kind is Kind.FILE and (mode & _SETID or _CAPABILITY in xattrs):
            if self.policy.setuid is Setuid.REFUSE:
                raise UnsafeLayerError(f"{what}: setuid, setgid or capabilities refused by policy")
            if self.policy.setuid is Setuid.STRIP:
                mode &= ~_SETID
                xattrs.pop(_CAPABILITY, None)
        return Meta(
            mode=mode,
            uid=entry.uid,
            gid=entry.gid,
            mtime_ns=entry.mtime_ns,
            xattrs=xattrs if entry.kind in (Kind.FILE, Kind.DIR) else {},
        )

    @staticmethod
    def _xattrs(entry: TarEntry, what: str) -> dict[str, bytes]:
        """``security.capability`` and ``user.*`` from the pax headers; others are dropped."""
        found = {}
        for name, value in entry.xattrs.items():
            if name == _CAPABILITY or (name.startswith("user.") and len(name) > 5):
                if "\0" in name:
                    raise UnsafeLayerError(f"{what}: xattr name holds a NUL byte")
                found[name] = value
            else:
                log.debug("%s: xattr %r not applied", what, name)
        return found

    def _set_fd_meta(self, fd: int, meta: Meta) -> None:
        """Owner, mode, xattrs and mtime of an open file or directory."""
        if self.policy.preserve_owner:
            os.fchown(fd, meta.uid, meta.gid)  # before fchmod: chown clears setuid bits
        os.fchmod(fd, meta.mode)
        for name, value in meta.xattrs.items():
            os.setxattr(fd, name, value)
        os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))

    def _set_node_meta(self, parent: int, name: str, meta: Meta, *, chmod: bool) -> None:
        """Owner, mode (unless a symlink) and mtime of a node we cannot open."""
        if self.policy.preserve_owner:
            os.chown(name, meta.uid, meta.gid, dir_fd=parent, follow_symlinks=False)
        if chmod:
            os.chmod(name, meta.mode, dir_fd=parent, follow_symlinks=False)
        os.utime(name, ns=(meta.mtime_ns, meta.mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _finish_dir(self, path: RelPath, meta: Meta, what: str) -> None:
        fd = self.cursor.at(path, what, create=False)
        if fd is not None:
            self._set_fd_meta(fd, meta)

    def _whiteout(self, path: RelPath, what: str) -> None:
        """Hide a lower entry (``.wh.NAME``) or every lower entry of a directory (opaque).

        A directory this layer made or wrote into stays; its lower entries are hidden in turn.
        """
        base = path[-1]
        if base.startswith(_WHITEOUT + _WHITEOUT) and base != _OPAQUE:
            log.debug("%s: aufs metadata ignored", what)
            return
        hidden = None if base == _OPAQUE else base.removeprefix(_WHITEOUT)
        if hidden in ("", ".", ".."):
            raise UnsafeLayerError(
                f"{what}: whiteout target {hidden!r} is not a name in its directory"
            )
        parent = self.cursor.at(path[:-1], what, create=False)
        if parent is None:
            return
        if hidden is None:
            entries = listing(parent)
        else:
            try:
                st = os.stat(hidden, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return
            entries = [(hidden, stat.S_ISDIR(st.st_mode))]
        prune(parent, entries, key(path[:-1]), self.made.__contains__)

    def _remove(self, parent: int, path: RelPath) -> None:
        """Remove ``path`` (in ``parent``) whatever it is, a directory with its whole tree."""
        if remove_entry(parent, path[-1]) and key(path) in self.made:
            self.dirs.removed(path)
