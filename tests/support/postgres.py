"""A private PostgreSQL server for development and tests (Debian's server binaries).

Test-only settings: ``trust`` authentication on loopback and the unix socket, ``fsync=off``.
It runs as the ``postgres`` OS user (PostgreSQL refuses root), listens on 127.0.0.1 on a free
port, and is stopped by the PID of the postmaster this object started.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path
from types import TracebackType

from trusthook._devenv.child import spawn, stop, wait_ready
from trusthook._devenv.swtpm import free_port_pair
from trusthook.errors import ServiceError

PG_ROOT = Path("/usr/lib/postgresql")


def server_binaries() -> Path:
    """The newest installed PostgreSQL's bin directory."""
    versions = sorted(
        (p for p in PG_ROOT.glob("*/bin/postgres")), key=lambda p: int(p.parent.parent.name)
    )
    if not versions:
        raise ServiceError("PostgreSQL server binaries not found; run scripts/setup")
    return versions[-1].parent


class Postgres:
    """``postgres`` on a data directory under ``root``, which must be new or ours and reachable
    by the postgres user (``tempfile.mkdtemp()`` is; pytest's ``tmp_path`` is not)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._bin = server_binaries()
        self._user = pwd.getpwnam("postgres")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/trusthook"

    def _as_postgres(self, *args: str) -> list[str]:
        """``args`` run as the postgres user; setpriv execs them, so the PID is theirs."""
        user = self._user
        return [
            "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            *args,
        ]  # fmt: skip

    def _initdb(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        subprocess.run(
            self._as_postgres(
                str(self._bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"
            ),
            check=True,
            capture_output=True,
        )

    def start(self, timeout: float = 30.0) -> Postgres:
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        fresh = self.port == 0
        if fresh:
            self.port = free_port_pair()
        log_path = self.root / "postgres.log"
        self._proc = spawn(
            self._as_postgres(
                str(self._bin / "postgres"),
                "-D", str(self.data),
                "-p", str(self.port),
                "-k", str(self.root),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off",
                "-c", "max_connections=200",
            ),
            log_path,
        )  # fmt: skip
        ready = [str(self._bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)]
        try:
            wait_ready(
                self._proc,
                lambda: subprocess.run(ready, capture_output=True, check=False).returncode == 0,
                what="postgres",
                log_path=log_path,
                timeout=timeout,
                poll=0.1,
            )
        except ServiceError:
            self._proc = None
            raise
        if fresh:
            subprocess.run(
                [str(self._bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                 "-U", "postgres", "trusthook"],
                check=True,
                capture_output=True,
            )  # fmt: skip
        return self

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Stop the postmaster this object started (SIGINT: fast shutdown; SIGKILL: crash)."""
        stop(self._proc, sig, timeout=30)
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same data and port."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
