"""Child processes of the development setup: start one with its output in a log file, wait until
it answers, stop it by its PID (never by name). Used by swtpm, PostgreSQL, the agent, the server
and dockerd helpers alike."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from trusthook.errors import ServiceError

LOG_TAIL = 2000  # characters of a child's log quoted when it dies while starting


def spawn(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (with ``env``: that environment) with its stdout and stderr appended to
    ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=log, env=env)


def wait_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    what: str,
    log_path: Path,
    timeout: float,
    poll: float = 0.05,
) -> None:
    """Return once ``ready()`` is true. If the child exits first, a ServiceError quotes the end
    of its log; if ``timeout`` seconds pass, the child is stopped and a ServiceError says so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = log_path.read_text(errors="replace")[-LOG_TAIL:].strip()
            raise ServiceError(f"{what} exited with {proc.returncode}: {output}")
        if ready():
            return
        time.sleep(poll)
    stop(proc)
    raise ServiceError(f"{what} did not come up within {timeout:g}s; see {log_path}")


def stop(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 20.0
) -> int | None:
    """Stop a child this program started: ``sig``, then SIGKILL after ``timeout`` seconds. Its
    exit status, or None when there was no child."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ChildProcess:
    """A trusthook process the development setup runs (the agent, the server): its log, its
    ``Popen`` while it runs, stop by PID, and use as a context manager (start, then stop)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def _start(self, argv: list[str], ready: Callable[[], bool], what: str, timeout: float) -> None:
        self.proc = spawn(argv, self.log_path)
        try:
            wait_ready(self.proc, ready, what=what, log_path=self.log_path, timeout=timeout)
        except ServiceError:
            self.proc = None
            raise

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the process this object started, by its PID; its exit status."""
        code, self.proc = stop(self.proc, sig), None
        return code

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
