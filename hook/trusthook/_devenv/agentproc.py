"""Run ``trusthook agent`` as a child process and wait until it serves (and, for an enrolled
agent, until its start-up attestation is over)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from trusthook._devenv.child import ChildProcess, wait_ready
from trusthook.common.config import Config, load_config
from trusthook.common.protocol import OP_SNAPSHOT, OP_STATUS, call
from trusthook.errors import AgentUnavailableError, ServiceError


def write_agent_config(
    path: Path,
    *,
    tcti: str,
    state_dir: Path,
    hook: Path,
    mode: str = "enforce",
    attest_interval: float = 60.0,
    hook_timeout: float = 10.0,
    roots: Path | None = None,
) -> Config:
    """A trusthook config file for a development setup; returns it loaded. The image policy
    lives in ``state_dir`` too, and the tmpfs roots unless ``roots`` names their directory."""
    path.write_text(
        f'[tpm]\ntcti = "{tcti}"\npcr = 23\n'
        f'[agent]\nsocket = "{state_dir / "agent.sock"}"\nstate_dir = "{state_dir}"\n'
        f'[hook]\nmode = "{mode}"\ntimeout = {hook_timeout}\n'
        f'[runtime]\nhook = "{hook}"\n'
        f"[attestation]\ninterval = {attest_interval}\ntimeout = 10\n"
        f'[images]\npolicy = "{state_dir / "image-policy.toml"}"\n'
        f'roots = "{roots or state_dir / "roots"}"\n'
    )
    return load_config(path)


class AgentProcess(ChildProcess):
    """``trusthook agent`` with a given config file, its output kept in ``log_path``."""

    def __init__(self, config_path: Path, config: Config, log_path: Path) -> None:
        super().__init__(log_path)
        self.config_path = config_path
        self.config = config

    def start(self, timeout: float = 30.0) -> AgentProcess:
        def serving() -> bool:
            try:
                call(str(self.config.socket), OP_SNAPSHOT, timeout=2)
            except AgentUnavailableError:
                return False
            return True

        argv = [sys.executable, "-m", "trusthook.cli", "--trusthook-config", str(self.config_path)]
        self._start([*argv, "agent"], serving, "trusthook agent", timeout)
        return self

    def start_attested(self, timeout: float = 30.0) -> dict[str, Any]:
        """Start an enrolled agent and return its ``status`` once its start-up attestation (an
        enrolled agent attests at once) is over, passed or failed: ``last_attempt`` differs
        from the one the status file held before. From then on the server has verified what
        the log held at start-up, and the agent attests on its own again only an interval
        later, or sooner if this attempt could not reach the server (``error`` says so). If
        the agent is not enrolled, or no attempt ends within ``timeout`` seconds, it is
        stopped and a ServiceError says why."""
        before = self._last_attempt()
        self.start()
        status: dict[str, Any] = {}

        def attested() -> bool:
            nonlocal status
            try:
                status = call(str(self.config.socket), OP_STATUS, timeout=10)
            except AgentUnavailableError:  # busy: ask again
                return False
            if status.get("enrolled") is not True:
                raise ServiceError(f"trusthook agent ({self.config_path}) is not enrolled")
            return status.get("last_attempt") not in (None, before)

        proc = self.proc
        if proc is None:  # start() returned: it runs
            raise ServiceError("trusthook agent is not running")
        try:
            wait_ready(
                proc,
                attested,
                what="trusthook agent's start-up attestation",
                log_path=self.log_path,
                timeout=timeout,
                poll=0.1,
            )
        except ServiceError:
            self.stop()
            raise
        return status

    def _last_attempt(self) -> object:
        """``last_attempt`` in the attester's status file (``attest/status.json`` in the state
        directory), or None; read while no agent runs."""
        path = self.config.state_dir / "attest" / "status.json"
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        return data.get("last_attempt") if isinstance(data, dict) else None
