"""Apply OCI layer tars onto a root directory without ever leaving it.

Each layer is read once, as a stream, and every entry is applied by hand (never with tarfile's
extract): every path is resolved inside the root by opening one directory component at a time
with ``O_NOFOLLOW`` relative to its parent's descriptor, so no symlink, whether made by this
layer or a lower one, is ever followed. Names that are absolute, hold ``..``, are empty or hold
NUL are refused. Whiteouts follow the OCI image spec (layer.md): ``.wh.NAME`` hides ``NAME`` and
``.wh..wh..opq`` hides every other entry of its directory, in both cases only what lower layers
made: entries of the same layer stay, whatever their order in the tar. Ownership is numeric (no
name lookups) and nothing from the root is ever executed or loaded.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol, cast

from trusthook.errors import ImageError, UnsafeLayerError
from trusthook.image.choices import Devices, Setuid

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_XATTR_PREFIX = "SCHILY.xattr."
_CAPABILITY = "security.capability"
_SETID = stat.S_ISUID | stat.S_ISGID

RelPath = tuple[str, ...]
"""A normalised path inside the root, one component per item; ``()`` is the root itself."""


class TarSource(Protocol):
    """What ``apply_layer`` reads: anything with ``read``; it need not seek."""

    def read(self, size: int, /) -> bytes: ...


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


@dataclass(frozen=True, kw_only=True)
class _Meta:
    """Ownership, mode, mtime and extended attributes to give an entry."""

    uid: int
    gid: int
    mode: int
    mtime_ns: int
    xattrs: dict[str, bytes]


def apply_layer(
    root: Path, tar: TarSource, policy: ExtractPolicy, *, keep: frozenset[str] = frozenset()
) -> None:
    """Apply one uncompressed layer tar stream onto the directory ``root`` (OCI layer rules).

    ``tar`` (an ``IO[bytes]`` or any reader, seekable or not) is read sequentially, once.
    ``keep`` names (relative to ``root``) non-directory entries already in ``root`` that the
    runtime owns (mount points): entries for them are skipped, whiteouts never remove them.
    Raises ``UnsafeLayerError`` for an entry that would escape the root or that ``policy``
    forbids, ``ImageError`` for a malformed layer or a failed write.
    """
    try:
        root_fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError as e:
        raise ImageError(f"cannot open unpack root {root}: {e.strerror}") from e
    try:
        # Stream mode only ever calls read(); the cast satisfies tarfile's stub.
        with tarfile.open(fileobj=cast(IO[bytes], tar), mode="r|") as tf:
            layer = _Layer(root_fd=root_fd, tf=tf, policy=policy, keep=keep)
            layer.apply_all()
    except tarfile.TarError as e:
        raise ImageError(f"layer tar is malformed: {e}") from e
    finally:
        os.close(root_fd)


def _split_name(name: str, what: str) -> RelPath:
    """Normalise a layer name into components; refuse absolute, ``..``, empty and NUL names.

    ``what`` names the entry in error messages. ``.`` and ``./`` give the root, ``()``.
    """
    if not name:
        raise UnsafeLayerError(f"{what}: empty name")
    if "\0" in name:
        raise UnsafeLayerError(f"{what}: name holds a NUL byte")
    if name.startswith("/"):
        raise UnsafeLayerError(f"{what}: absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeLayerError(f"{what}: path escapes the root")
    return parts


def _show(path: RelPath) -> str:
    return "/".join(path) or "."


def _ancestors(path: RelPath) -> list[RelPath]:
    """``path`` and every directory above it, excluding the root."""
    return [path[:i] for i in range(1, len(path) + 1)]


@dataclass(kw_only=True)
class _Layer:
    """The state of one layer being applied: what it made and the directories to finish."""

    root_fd: int
    tf: tarfile.TarFile
    policy: ExtractPolicy
    keep: frozenset[str]
    kept: set[RelPath] = field(default_factory=set)
    touched: set[RelPath] = field(default_factory=set)
    dirs: dict[RelPath, _Meta] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Runtime entries, and the directories holding them, count as made by this layer."""
        for name in self.keep:
            path = _split_name(name, f"runtime entry {name!r}")
            self.kept.add(path)
            self.touched.update(_ancestors(path))

    def apply_all(self) -> None:
        """Apply every entry, then give directories their final mode, owner and mtime."""
        while (member := self.tf.next()) is not None:
            what = f"layer entry {member.name!r}"
            try:
                self._apply(member, what)
            except OSError as e:
                raise ImageError(f"{what}: {e.strerror or e}") from e
            except RecursionError as e:
                raise ImageError(f"{what}: directory tree nested too deeply") from e
        for path in sorted(self.dirs, key=len, reverse=True):
            what = f"layer directory {_show(path)!r}"
            try:
                self._finish_dir(path, self.dirs[path], what)
            except OSError as e:
                raise ImageError(f"{what}: {e.strerror or e}") from e

    def _apply(self, member: tarfile.TarInfo, what: str) -> None:
        path = _split_name(member.name, what)
        base = path[-1] if path else ""
        if base.startswith(_WHITEOUT):
            self._whiteout(path, what)
        elif not path:
            if not member.isdir():
                raise UnsafeLayerError(f"{what}: the root entry is not a directory")
        elif path in self.kept or (not member.isdir() and self._keeps(path)):
            log.debug("%s: skipped, the runtime owns this path", what)
        else:
            self._create(member, path, what)

    def _keeps(self, path: RelPath) -> bool:
        """Whether ``path`` is a runtime entry or holds one."""
        return any(k[: len(path)] == path for k in self.kept)

    def _create(self, member: tarfile.TarInfo, path: RelPath, what: str) -> None:
        if (member.ischr() or member.isblk()) and self.policy.devices is not Devices.ALLOW:
            if self.policy.devices is Devices.REFUSE:
                raise UnsafeLayerError(f"{what}: device nodes are refused by the policy")
            log.debug("%s: device node skipped by the policy", what)
            return
        parent = self._open_dir(path[:-1], what, create=True)
        try:
            self._create_in(parent, member, path, what)
        finally:
            os.close(parent)
        self.touched.update(_ancestors(path))

    def _create_in(self, parent: int, member: tarfile.TarInfo, path: RelPath, what: str) -> None:
        name = path[-1]
        meta = self._meta(member, what)
        if member.isdir():
            self._make_dir(parent, name, path)
            self.dirs[path] = meta
        elif member.islnk():
            self._hardlink(parent, member, path, what)
        elif member.isreg():
            self._remove(parent, name, path)
            self._write_file(parent, member, name, meta, what)
        elif member.issym():
            if not member.linkname or "\0" in member.linkname:
                raise UnsafeLayerError(f"{what}: symlink target is empty or holds a NUL byte")
            self._remove(parent, name, path)
            os.symlink(member.linkname, name, dir_fd=parent)
            self._set_node_meta(parent, name, meta, chmod=False)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._remove(parent, name, path)
            if member.isfifo():
                os.mkfifo(name, 0o600, dir_fd=parent)
            else:
                kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
                device = os.makedev(member.devmajor, member.devminor)
                os.mknod(name, kind | 0o600, device, dir_fd=parent)
            self._set_node_meta(parent, name, meta, chmod=True)
        else:
            raise UnsafeLayerError(f"{what}: unsupported entry type {member.type!r}")

    def _make_dir(self, parent: int, name: str, path: RelPath) -> None:
        """Keep an existing directory; replace anything else by a new private one."""
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                return
        except FileNotFoundError:
            pass
        else:
            self._remove(parent, name, path)
        os.mkdir(name, 0o700, dir_fd=parent)

    def _write_file(
        self, parent: int, member: tarfile.TarInfo, name: str, meta: _Meta, what: str
    ) -> None:
        src = self.tf.extractfile(member)
        if src is None:
            raise ImageError(f"{what}: the tar holds no data for this file")
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            with src, os.fdopen(fd, "wb", closefd=False) as out:
                shutil.copyfileobj(src, out, _CHUNK)
            self._set_fd_meta(fd, meta)
        finally:
            os.close(fd)

    def _hardlink(self, parent: int, member: tarfile.TarInfo, path: RelPath, what: str) -> None:
        """Link ``path`` to the layer-relative ``member.linkname``, itself never followed."""
        target = _split_name(member.linkname, f"{what}: hardlink target {member.linkname!r}")
        if not target:
            raise UnsafeLayerError(f"{what}: hardlink target is the root")
        if target == path:
            raise ImageError(f"{what}: hardlink to itself")
        src_dir = self._find_dir(target[:-1], what)
        if src_dir is None:
            raise ImageError(f"{what}: hardlink target {_show(target)!r} does not exist")
        try:
            try:
                st = os.stat(target[-1], dir_fd=src_dir, follow_symlinks=False)
            except FileNotFoundError:
                raise ImageError(
                    f"{what}: hardlink target {_show(target)!r} does not exist"
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeLayerError(f"{what}: hardlink target {_show(target)!r} is a directory")
            self._remove(parent, path[-1], path)
            os.link(
                target[-1],
                path[-1],
                src_dir_fd=src_dir,
                dst_dir_fd=parent,
                follow_symlinks=False,
            )
        finally:
            os.close(src_dir)

    def _meta(self, member: tarfile.TarInfo, what: str) -> _Meta:
        """The attributes ``member`` asks for, after the setuid policy (regular files only)."""
        mode = stat.S_IMODE(member.mode)
        xattrs = self._xattrs(member, what)
        if member.isreg() and (mode & _SETID or _CAPABILITY in xattrs):
            if self.policy.setuid is Setuid.REFUSE:
                raise UnsafeLayerError(f"{what}: setuid, setgid or capabilities refused by policy")
            if self.policy.setuid is Setuid.STRIP:
                mode &= ~_SETID
                xattrs.pop(_CAPABILITY, None)
        return _Meta(
            uid=member.uid,
            gid=member.gid,
            mode=mode,
            mtime_ns=int(member.mtime * 1_000_000_000),
            xattrs=xattrs if member.isreg() or member.isdir() else {},
        )

    @staticmethod
    def _xattrs(member: tarfile.TarInfo, what: str) -> dict[str, bytes]:
        """``security.capability`` and ``user.*`` from the pax headers; others are dropped."""
        found = {}
        for key, value in member.pax_headers.items():
            if not key.startswith(_XATTR_PREFIX):
                continue
            name = key.removeprefix(_XATTR_PREFIX)
            if name == _CAPABILITY or (name.startswith("user.") and len(name) > 5):
                if "\0" in name:
                    raise UnsafeLayerError(f"{what}: xattr name holds a NUL byte")
                found[name] = value.encode("utf-8", "surrogateescape")
            else:
                log.debug("%s: xattr %r not applied", what, name)
        return found

    def _set_fd_meta(self, fd: int, meta: _Meta) -> None:
        """Owner, mode, xattrs and mtime of an open file or directory."""
        if self.policy.preserve_owner:
            os.fchown(fd, meta.uid, meta.gid)  # before fchmod: chown clears setuid bits
        os.fchmod(fd, meta.mode)
        for key, value in meta.xattrs.items():
            os.setxattr(fd, key, value)
        os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))

    def _set_node_meta(self, parent: int, name: str, meta: _Meta, *, chmod: bool) -> None:
        """Owner, mode (unless a symlink) and mtime of a node we cannot open."""
        if self.policy.preserve_owner:
            os.chown(name, meta.uid, meta.gid, dir_fd=parent, follow_symlinks=False)
        if chmod:
            os.chmod(name, meta.mode, dir_fd=parent, follow_symlinks=False)
        os.utime(name, ns=(meta.mtime_ns, meta.mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _finish_dir(self, path: RelPath, meta: _Meta, what: str) -> None:
        fd = self._find_dir(path, what)
        if fd is None:
            return
        try:
            self._set_fd_meta(fd, meta)
        finally:
            os.close(fd)

    def _whiteout(self, path: RelPath, what: str) -> None:
        """Hide a lower entry (``.wh.NAME``) or every lower entry of a directory (opaque)."""
        base = path[-1]
        if base.startswith(_WHITEOUT + _WHITEOUT) and base != _OPAQUE:
            log.debug("%s: aufs metadata ignored", what)
            return
        hidden = None if base == _OPAQUE else base.removeprefix(_WHITEOUT)
        if hidden in ("", ".", ".."):
            raise UnsafeLayerError(
                f"{what}: whiteout target {hidden!r} is not a name in its directory"
            )
        parent = self._find_dir(path[:-1], what)
        if parent is None:
            return
        try:
            if hidden is None:
                for child in os.listdir(parent):
                    self._hide_lower(parent, (*path[:-1], child))
            else:
                self._hide_lower(parent, (*path[:-1], hidden))
        finally:
            os.close(parent)

    def _hide_lower(self, parent: int, path: RelPath) -> None:
        """Remove what lower layers made at ``path``; keep what this layer (or runtime) made.

        A directory this layer made or wrote into stays; its lower children are hidden in turn.
        """
        if path not in self.touched:
            self._remove(parent, path[-1], path)
            return
        try:
            fd = os.open(path[-1], _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return  # gone, or a file or symlink this layer made
            raise
        try:
            for child in os.listdir(fd):
                self._hide_lower(fd, (*path, child))
        finally:
            os.close(fd)

    def _remove(self, parent: int, name: str, path: RelPath) -> None:
        """Remove ``name`` in ``parent`` whatever it is, a directory with its whole tree."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)
            return
        shutil.rmtree(name, dir_fd=parent)
        for done in [d for d in self.dirs if d[: len(path)] == path]:
            del self.dirs[done]

    def _find_dir(self, path: RelPath, what: str) -> int | None:
        """Open directory ``path`` like ``_open_dir`` but make nothing: ``None`` if missing."""
        try:
            return self._open_dir(path, what, create=False)
        except FileNotFoundError:
            return None

    def _open_dir(self, path: RelPath, what: str, *, create: bool) -> int:
        """Open directory ``path`` one component at a time, never following a symlink.

        Missing components are made (mode 0755) when ``create``.
        """
        fd = os.dup(self.root_fd)
        for depth in range(1, len(path) + 1):
            try:
                fd_child = self._open_child(fd, path[:depth], what, create=create)
            finally:
                os.close(fd)
            fd = fd_child
        return fd

    def _open_child(self, parent: int, path: RelPath, what: str, *, create: bool) -> int:
        name = path[-1]
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(name, 0o755, dir_fd=parent)
            self.touched.add(path)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            os.fchmod(fd, 0o755)  # whatever the umask
            return fd
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            if stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                raise UnsafeLayerError(f"{what}: parent {_show(path)!r} is a symlink") from e
            raise ImageError(f"{what}: parent {_show(path)!r} is not a directory") from e
