"""Run ``trusthook agent`` as a child process and wait until it serves."""

from __future__ import annotations

import sys
from pathlib import Path

from trusthook._devenv.child import ChildProcess
from trusthook.common.config import Config, load_config
from trusthook.common.protocol import OP_SNAPSHOT, call
from trusthook.errors import AgentUnavailableError


def write_agent_config(
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


class AgentProcess(ChildProcess):
    """``trusthook agent`` with a given config file, its output kept in ``log_path``."""

    def __init__(self, config_path: Path, config: Config, log_path: Path) -> None:
        super().__init__(log_path)
        self.config_path = config_path
        self.config = config

    def start(self, timeout: float = 20.0) -> AgentProcess:
        def serving() -> bool:
            try:
                call(str(self.config.socket), OP_SNAPSHOT, timeout=2)
            except AgentUnavailableError:
                return False
            return True

        argv = [sys.executable, "-m", "trusthook.cli", "--trusthook-config", str(self.config_path)]
        self._start([*argv, "agent"], serving, "trusthook agent", timeout)
        return self
