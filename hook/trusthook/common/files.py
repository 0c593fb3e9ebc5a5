"""Atomic file replacement, the one way trusthook writes a file that must never be seen half
written: a new file with an unpredictable name is created exclusively (``O_EXCL``, never
following a symlink) next to the target, written, fsync'd, renamed over the target, and the
directory fsync'd. A crash leaves the old file or the new one; a failure removes the temporary
file. Standard library only (the shim uses it)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_temp(directory: Path, prefix: str, mode: int | None = None) -> tuple[int, Path]:
    """A new, empty file in ``directory`` and its path: ``mode`` exactly, or without one
    0666 less the umask (as any new file)."""
    while True:
        tmp = directory / f".{prefix}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, _FLAGS, 0o600 if mode is not None else 0o666)
        except FileExistsError:
            continue
        break
    try:
        if mode is not None:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return fd, tmp


def commit(fd: int, tmp: Path, path: Path, *, durable: bool = True) -> None:
    """fsync and close ``fd`` (the file at ``tmp``), rename it to ``path``, fsync the directory
    (without ``durable``: no fsync, the rename alone); on failure ``tmp`` is removed."""
    try:
        try:
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """fsync a directory, so that a rename or a new entry in it survives a crash."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: Path, data: bytes, mode: int | None = None, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically; ``mode`` as for ``create_temp``. Without
    ``durable`` nothing is fsync'd: a reader sees the old file or the new one, but a crash may
    lose the new one (for files that do not outlive a crash's consequences anyway)."""
    fd, tmp = create_temp(path.parent, path.name, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    commit(fd, tmp, path, durable=durable)


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` atomically only if it does not exist (the temporary file is linked into
    place, which, unlike a rename, fails when ``path`` appeared meanwhile): FileExistsError."""
    fd, tmp = create_temp(path.parent, path.name, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.link(tmp, path)
    finally:
        os.close(fd)
        tmp.unlink(missing_ok=True)
    sync_directory(path.parent)
