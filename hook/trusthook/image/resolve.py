"""Directories inside an unpack root, reached without ever following a symlink.

A directory is opened one component at a time with ``O_NOFOLLOW | O_DIRECTORY`` relative to its
parent's descriptor, starting from the root's: a symlink anywhere on the way is refused, whoever
made it. The last directory reached stays open: a layer's entries come directory by directory,
so the next entry's parent is usually that one, one of its subdirectories or a sibling, and the
cursor moves there by name (down) and by ``..`` (up, checked against the device and inode it
saw on the way down) instead of starting again from the root. The caller only ever removes
entries below the current directory, never the current directory or its ancestors.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Literal, overload

from trusthook.errors import ImageError, UnsafeLayerError
from trusthook.image.layerstate import RelPath
from trusthook.image.tree import DIR_FLAGS


def show(path: RelPath) -> str:
    """How messages name ``path``."""
    return "/".join(path) or "."


class DirCursor:
    """One open directory inside the root, moved from path to path; missing directories are
    made on the way when asked (mode 0755)."""

    def __init__(self, root_fd: int) -> None:
        self._root = root_fd
        self._fd = root_fd
        self._path: RelPath = ()
        self._idents: list[tuple[int, int]] = []  # (st_dev, st_ino) of each directory on _path

    @overload
    def at(self, path: RelPath, what: str, *, create: Literal[True]) -> int: ...
    @overload
    def at(self, path: RelPath, what: str, *, create: Literal[False]) -> int | None: ...
    def at(self, path: RelPath, what: str, *, create: bool) -> int | None:
        """A descriptor of the directory ``path``, owned by the cursor (valid until the next
        call); ``None`` if a component is missing and not ``create``."""
        common = _common(self._path, path)
        if len(self._path) - common > common:  # climbing would cost more than starting over
            self.close()
            common = 0
        while len(self._path) > common:
            self._climb(what)
        for depth in range(common + 1, len(path) + 1):
            fd = self._open_child(path[:depth], what, create=create)
            if fd is None:
                return None
            try:
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            self._move(fd, path[:depth])
            self._idents.append((st.st_dev, st.st_ino))
        return self._fd

    def close(self) -> None:
        """Back at the root; the open directory is closed."""
        self._move(self._root, ())
        self._idents.clear()

    def _move(self, fd: int, path: RelPath) -> None:
        if self._fd != self._root:
            os.close(self._fd)
        self._fd, self._path = fd, path

    def _climb(self, what: str) -> None:
        expected = self._idents[-2]  # a climb never ends at the root (see ``at``)
        up = os.open("..", DIR_FLAGS, dir_fd=self._fd)
        try:
            st = os.fstat(up)
        except BaseException:
            os.close(up)
            raise
        if (st.st_dev, st.st_ino) != expected:
            os.close(up)
            raise ImageError(f"{what}: directory {show(self._path)!r} was moved during unpacking")
        self._idents.pop()
        self._move(up, self._path[:-1])

    def _open_child(self, path: RelPath, what: str, *, create: bool) -> int | None:
        name = path[-1]
        try:
            return os.open(name, DIR_FLAGS, dir_fd=self._fd)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(name, 0o755, dir_fd=self._fd)
            fd = os.open(name, DIR_FLAGS, dir_fd=self._fd)
            os.fchmod(fd, 0o755)  # whatever the umask
            return fd
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            if stat.S_ISLNK(os.stat(name, dir_fd=self._fd, follow_symlinks=False).st_mode):
                raise UnsafeLayerError(f"{what}: parent {show(path)!r} is a symlink") from e
            raise ImageError(f"{what}: parent {show(path)!r} is not a directory") from e


def _common(a: RelPath, b: RelPath) -> int:
    """The length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i
