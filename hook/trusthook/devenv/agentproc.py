"""Run ``trusthook agent`` as a child process and wait until it serves."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from trusthook.config import Config, load_config
from trusthook.errors import AgentUnavailableError, ServiceError
from trusthook.protocol import OP_SNAPSHOT, call


def write_config(
    path: Path,
    *,
    tcti: str,
    state_dir: Path,
    hook: Path,
    mode: str = "enforce",
    attest_interval: float = 60.0,
    hook_timeout: float = 10.0,
) -> Config:
    """A trusthook config file for a development setup; returns it loaded. The image policy
    and the tmpfs roots live in ``state_dir`` too."""
    path.write_text(
        f'[tpm]\ntcti = "{tcti}"\npcr = 23\n'
        f'[agent]\nsocket = "{state_dir / "agent.sock"}"\nstate_dir = "{state_dir}"\n'
        f'[hook]\nmode = "{mode}"\ntimeout = {hook_timeout}\n'
        f'[runtime]\nhook = "{hook}"\n'
        f"[attestation]\ninterval = {attest_interval}\ntimeout = 10\n"
        f'[images]\npolicy = "{state_dir / "image-policy.toml"}"\n'
        f'roots = "{state_dir / "roots"}"\n'
    )
    return load_config(path)


class AgentProcess:
    """``trusthook agent`` with a given config file, its output kept in ``log_path``."""

    def __init__(self, config_path: Path, config: Config, log_path: Path) -> None:
        self.config_path = config_path
        self.config = config
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> AgentProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trusthook.cli",
                "--trusthook-config",
                str(self.config_path),
                "agent",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(
                    f"trusthook agent exited with {self.proc.returncode}: {self.output().strip()}"
                )
            try:
                call(str(self.config.socket), OP_SNAPSHOT, timeout=2)
                return self
            except AgentUnavailableError:
                time.sleep(0.05)
        self.stop()
        raise ServiceError(f"trusthook agent did not come up within {timeout}s")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the agent this object started, by its PID; returns its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
