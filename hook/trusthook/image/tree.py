"""Remove directory trees of any depth without following symlinks.

``shutil.rmtree`` recurses (a tree about 1,000 directories deep raises ``RecursionError``) and
holds one descriptor per level. Here the walk is a loop over an explicit stack: only the
directory being emptied is open (besides the caller's), every directory is entered with
``O_NOFOLLOW | O_DIRECTORY`` relative to its parent's descriptor, and the way back up is
``..`` checked against the device and inode recorded on the way down. A symlink is removed,
never followed. Memory: the names still to visit in the directories on the current path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from trusthook.errors import ImageError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Spare = Callable[[str], bool]
"""Whether the entry with this key ("/"-joined path from the walk's top) stays."""


@dataclass(kw_only=True)
class _Frame:
    """A directory being walked: its name in its parent, identity, key and what is left."""

    name: str
    ident: tuple[int, int]
    key: str
    remove: bool  # the directory itself goes once empty (it was not spared)
    pending: list[tuple[str, bool]]  # (name, is a directory)


def remove_entry(parent: int, name: str) -> bool:
    """Remove ``name`` in the directory ``parent``, whatever it is, a directory with its whole
    tree; whether it was a directory (False as well if it did not exist)."""
    try:
        os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        prune(parent, [(name, True)], "", None)
        return True
    return False


def listing(fd: int) -> list[tuple[str, bool]]:
    """The entries of the open directory ``fd``: (name, is a directory)."""
    return _scan(fd, remove_files=False)


def prune(top: int, entries: list[tuple[str, bool]], prefix: str, spare: Spare | None) -> None:
    """Remove ``entries`` (name, is a directory) of the directory ``top`` unless ``spare``
    says their key (``prefix/name``) stays; a spared directory's entries are judged the same
    way, at any depth, and a removed directory goes with its whole tree. ``spare`` None: all go.
    ``top`` stays open and is not removed."""
    stack = [_Frame(name="", ident=(0, 0), key=prefix, remove=False, pending=list(entries))]
    fd = top
    try:
        while stack:
            frame = stack[-1]
            if not frame.pending:
                stack.pop()
                if stack:
                    fd = _climb(fd, top, stack, frame)
                continue
            name, is_dir = frame.pending.pop()
            key = f"{frame.key}/{name}" if frame.key else name
            remove = frame.remove or spare is None or not spare(key)
            if not is_dir:
                if remove:
                    _unlink(name, fd)
                continue
            child = _enter(fd, name, remove)
            if child is None:
                continue
            child_fd, ident, pending = child
            if fd != top:
                os.close(fd)
            fd = child_fd
            stack.append(_Frame(name=name, ident=ident, key=key, remove=remove, pending=pending))
    finally:
        if fd != top:
            os.close(fd)


def _enter(
    parent: int, name: str, remove: bool
) -> tuple[int, tuple[int, int], list[tuple[str, bool]]] | None:
    """Open the directory ``name`` and list it (removing its files at once if ``remove``);
    ``None`` if it is gone or, removed, turned out not to be a directory."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # it was swapped for something else: judge that instead
        if remove:
            _unlink(name, parent)
        return None
    try:
        st = os.fstat(fd)
        return fd, (st.st_dev, st.st_ino), _scan(fd, remove_files=remove)
    except BaseException:
        os.close(fd)
        raise


def _climb(fd: int, top: int, stack: list[_Frame], done: _Frame) -> int:
    """Leave the emptied directory ``done`` (open as ``fd``) for its parent, the new top of
    ``stack``, and remove ``done`` if it was not spared; the parent's descriptor."""
    if len(stack) == 1:
        parent = top
    else:
        parent = os.open("..", DIR_FLAGS, dir_fd=fd)
        st = os.fstat(parent)
        if (st.st_dev, st.st_ino) != stack[-1].ident:
            os.close(parent)
            raise ImageError(f"{done.key!r} was moved while its tree was being removed")
    if done.remove:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(done.name, dir_fd=parent)
        except BaseException:
            if parent != top:
                os.close(parent)
            raise
    os.close(fd)
    return parent


def _unlink(name: str, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=fd)


def _scan(fd: int, *, remove_files: bool) -> list[tuple[str, bool]]:
    """The entries of directory ``fd``; with ``remove_files``, non-directories are unlinked
    as they are listed and only directories are returned (listed again until a pass removes
    nothing: a directory changed while it is read may skip entries)."""
    while True:
        found = []
        removed = False
        with os.scandir(fd) as entries:
            for entry in entries:
                is_dir = entry.is_dir(follow_symlinks=False)
                if remove_files and not is_dir:
                    _unlink(entry.name, fd)
                    removed = True
                else:
                    found.append((entry.name, is_dir))
        if not removed:
            return found
