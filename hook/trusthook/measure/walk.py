"""The pure-Python reference walker: reads a rootfs into canonical entries.

Every lookup is relative to an open directory fd with ``O_NOFOLLOW``: a symlink is recorded,
never followed, and no path is ever resolved with host semantics. A file that changes while it
is hashed, vanishes, or cannot be read is an error naming the path, never a different digest.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from trusthook.errors import MeasurementError
from trusthook.measure.encoding import Entry, Kind, rootfs_digest, xattr_is_measured

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_CHUNK = 64 * 1024

_KINDS = {
    stat.S_IFREG: Kind.REGULAR,
    stat.S_IFDIR: Kind.DIRECTORY,
    stat.S_IFLNK: Kind.SYMLINK,
    stat.S_IFCHR: Kind.CHAR_DEVICE,
    stat.S_IFBLK: Kind.BLOCK_DEVICE,
    stat.S_IFIFO: Kind.FIFO,
    stat.S_IFSOCK: Kind.SOCKET,
}


@dataclass(frozen=True, slots=True)
class RootfsMeasurement:
    """The result of measuring one rootfs."""

    digest: bytes
    entries: int
    bytes_hashed: int


def open_rootfs(path: str | os.PathLike[str]) -> int:
    """Open a rootfs directory without following a symlink in its last component."""
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise MeasurementError(
                f"rootfs {os.fspath(path)} is a symlink; refusing to follow it out of the bundle"
            ) from None
        raise MeasurementError(f"cannot open rootfs {os.fspath(path)}: {e.strerror}") from None


def _show(path: bytes) -> str:
    return "/" + path.decode("utf-8", "backslashreplace")


def _xattrs(target: int | str, path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return ()
        raise MeasurementError(f"cannot list xattrs of {_show(path)}: {e.strerror}") from None
    out = []
    for name in names:
        raw = os.fsencode(name)
        if not xattr_is_measured(raw):
            continue
        try:
            value = os.getxattr(target, name, follow_symlinks=follow)
        except OSError as e:
            if e.errno == errno.ENODATA:
                raise MeasurementError(
                    f"xattr {name} of {_show(path)} vanished while measuring"
                ) from None
            raise MeasurementError(
                f"cannot read xattr {name} of {_show(path)}: {e.strerror}"
            ) from None
        out.append((raw, value))
    return tuple(sorted(out))


def _same_object(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, stat.S_IFMT(a.st_mode)) == (
        b.st_dev,
        b.st_ino,
        stat.S_IFMT(b.st_mode),
    )


def _hash_file(fd: int, path: bytes, before: os.stat_result) -> bytes:
    h = hashlib.sha256()
    try:
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
        after = os.fstat(fd)
    except OSError as e:
        raise MeasurementError(f"cannot read {_show(path)}: {e.strerror}") from None
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
        before.st_size,
        before.st_mtime_ns,
        before.st_ctime_ns,
    ):
        raise MeasurementError(f"{_show(path)} changed while it was being hashed")
    return h.digest()


@dataclass(slots=True)
class _Walker:
    root_fd: int
    bytes_hashed: int = 0

    def entry(self, parent_fd: int, name: str, path: bytes, st: os.stat_result) -> Entry:
        kind = _KINDS.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            raise MeasurementError(f"{_show(path)} has an unknown file type {st.st_mode:o}")
        base = Entry(
            path=path, kind=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid
        )
        if kind is Kind.REGULAR:
            return self.regular(parent_fd, name, base, st)
        xattrs = _xattrs(f"/proc/self/fd/{parent_fd}/{name}", path)
        if kind is Kind.SYMLINK:
            try:
                target = os.readlink(name, dir_fd=parent_fd)
            except OSError as e:
                raise MeasurementError(f"cannot read symlink {_show(path)}: {e.strerror}") from None
            return dataclasses.replace(base, xattrs=xattrs, target=os.fsencode(target))
        if kind in (Kind.CHAR_DEVICE, Kind.BLOCK_DEVICE):
            return dataclasses.replace(
                base,
                xattrs=xattrs,
                rdev_major=os.major(st.st_rdev),
                rdev_minor=os.minor(st.st_rdev),
            )
        return dataclasses.replace(base, xattrs=xattrs)

    def regular(self, parent_fd: int, name: str, base: Entry, st: os.stat_result) -> Entry:
        path = base.path
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            raise MeasurementError(f"{_show(path)} vanished while measuring") from None
        except OSError as e:
            raise MeasurementError(f"cannot open {_show(path)}: {e.strerror}") from None
        try:
            if not _same_object(os.fstat(fd), st):
                raise MeasurementError(f"{_show(path)} was replaced while measuring")
            xattrs = _xattrs(fd, path)
            digest = _hash_file(fd, path, st)
        finally:
            os.close(fd)
        self.bytes_hashed += st.st_size
        return dataclasses.replace(base, xattrs=xattrs, size=st.st_size, content_sha256=digest)

    def walk(self) -> Iterator[tuple[Entry, os.stat_result]]:
        root_st = os.fstat(self.root_fd)
        yield (
            Entry(
                path=b"",
                kind=Kind.DIRECTORY,
                mode=stat.S_IMODE(root_st.st_mode),
                uid=root_st.st_uid,
                gid=root_st.st_gid,
                xattrs=_xattrs(self.root_fd, b""),
            ),
            root_st,
        )
        stack: list[tuple[int, bytes]] = [(os.dup(self.root_fd), b"")]
        try:
            while stack:
                dir_fd, dir_path = stack.pop()
                try:
                    yield from self.directory(dir_fd, dir_path, stack)
                finally:
                    os.close(dir_fd)
        finally:
            for fd, _ in stack:
                os.close(fd)

    def directory(
        self, dir_fd: int, dir_path: bytes, stack: list[tuple[int, bytes]]
    ) -> Iterator[tuple[Entry, os.stat_result]]:
        prefix = dir_path + b"/" if dir_path else b""
        try:
            with os.scandir(dir_fd) as it:
                names = [d.name for d in it]
        except OSError as e:
            raise MeasurementError(f"cannot list {_show(dir_path)}: {e.strerror}") from None
        for name in names:
            path = prefix + os.fsencode(name)
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise MeasurementError(f"{_show(path)} vanished while measuring") from None
            except OSError as e:
                raise MeasurementError(f"cannot stat {_show(path)}: {e.strerror}") from None
            if stat.S_ISDIR(st.st_mode):
                child = self.open_dir(dir_fd, name, path, st)
                stack.append((child, path))
                yield (
                    Entry(
                        path=path,
                        kind=Kind.DIRECTORY,
                        mode=stat.S_IMODE(st.st_mode),
                        uid=st.st_uid,
                        gid=st.st_gid,
                        xattrs=_xattrs(child, path),
                    ),
                    st,
                )
            else:
                yield self.entry(dir_fd, name, path, st), st

    @staticmethod
    def open_dir(parent_fd: int, name: str, path: bytes, st: os.stat_result) -> int:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            raise MeasurementError(f"{_show(path)} vanished while measuring") from None
        except OSError as e:
            raise MeasurementError(f"cannot open directory {_show(path)}: {e.strerror}") from None
        if not _same_object(os.fstat(fd), st):
            os.close(fd)
            raise MeasurementError(f"{_show(path)} was replaced while measuring")
        return fd


def link_hardlinks(found: list[tuple[Entry, os.stat_result]]) -> list[Entry]:
    """Sort entries by path and turn every later path of a shared non-directory inode into a
    HARDLINK record naming the first path in sort order."""
    found.sort(key=lambda pair: pair[0].path)
    first: dict[tuple[int, int], bytes] = {}
    out = []
    for found_entry, st in found:
        entry = found_entry
        if entry.kind is not Kind.DIRECTORY and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in first:
                entry = dataclasses.replace(
                    entry,
                    kind=Kind.HARDLINK,
                    target=first[key],
                    size=0,
                    content_sha256=b"",
                    rdev_major=0,
                    rdev_minor=0,
                )
            else:
                first[key] = entry.path
        out.append(entry)
    return out


def read_entries(root_fd: int) -> tuple[list[Entry], int]:
    """All entries of the tree under ``root_fd`` in canonical order, and the bytes hashed."""
    walker = _Walker(root_fd)
    entries = link_hardlinks(list(walker.walk()))
    return entries, walker.bytes_hashed


def measure_rootfs(path: str | os.PathLike[str]) -> RootfsMeasurement:
    """Measure the rootfs at ``path`` with the pure-Python reference implementation."""
    root_fd = open_rootfs(path)
    try:
        entries, hashed = read_entries(root_fd)
    finally:
        os.close(root_fd)
    return RootfsMeasurement(
        digest=rootfs_digest(entries), entries=len(entries), bytes_hashed=hashed
    )
