"""The event log file: one per boot, JSON lines, append-only, fsync'd (docs/eventlog.md)."""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from trusthook.common.eventlog import Record, parse_line
from trusthook.errors import EventLogError


def read_boot_id() -> str:
    """The kernel's boot id: a fresh UUID at every boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError as e:
        raise EventLogError(f"cannot read the boot id: {e.strerror}") from e


@dataclass(frozen=True, slots=True)
class LogContents:
    """What is on disk: the complete records, where each starts, their total byte length, and a
    torn tail (a last line without its newline) if any."""

    records: list[Record]
    starts: list[int]
    length: int
    torn_tail: bytes


@dataclass(frozen=True, slots=True)
class LogStore:
    """The log file of one boot under ``directory``."""

    directory: Path
    boot_id: str

    @property
    def path(self) -> Path:
        return self.directory / f"{self.boot_id}.cel.jsonl"

    def read(self) -> LogContents:
        """Every complete record; a final line without a newline is returned as a torn tail."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return LogContents([], [], 0, b"")
        except OSError as e:
            raise EventLogError(f"cannot read event log {self.path}: {e.strerror}") from e
        complete, sep, tail = data.rpartition(b"\n")
        if not sep:
            complete, tail = b"", data
        lines = complete.split(b"\n") if complete else []
        records, starts, offset = [], [], 0
        for i, line in enumerate(lines):
            records.append(parse_line(line, f"{self.path} line {i + 1}"))
            starts.append(offset)
            offset += len(line) + 1
        return LogContents(records, starts, len(data) - len(tail), tail)

    def lock(self) -> int:
        """Take the single-writer lock; returns the fd that holds it until closed."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / ".writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EventLogError(
                f"another trusthook agent is writing the event log in {self.directory}"
            ) from None
        return fd

    def append(self, record: Record) -> int:
        """Append one record durably; returns the file length before it (to undo with truncate)."""
        line = record.to_line()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise EventLogError(f"cannot open the event log {self.path}: {e.strerror}") from e
        try:
            start = os.fstat(fd).st_size
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (short write)")
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, start)  # the record is not durable: take it back out
                raise
            if start == 0:  # a new file: make its directory entry durable too
                dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as e:
            raise EventLogError(f"cannot append to event log {self.path}: {e.strerror}") from e
        finally:
            os.close(fd)
        return start

    def truncate(self, length: int) -> None:
        """Cut the log back to ``length`` bytes, durably."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, length)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise EventLogError(f"cannot truncate event log {self.path}: {e.strerror}") from e
