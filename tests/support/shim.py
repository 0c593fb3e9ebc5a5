"""The ``trusthook-runtime`` the tests run, and what its environment needs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from trusthook.common.config import Config, load_config


def shim_program() -> Path:
    """The installed shim, or ``$TRUSTHOOK_RUNTIME_PROGRAM`` (scripts/test-native-sanitized
    points it at an ASan + UBSan build)."""
    default = Path(sys.executable).parent / "trusthook-runtime"
    return Path(os.environ.get("TRUSTHOOK_RUNTIME_PROGRAM") or default)


def shim_env(config_path: Path) -> dict[str, str]:
    """The shim's environment for the host ``config_path`` configures: the agent's socket (the
    shim reads no config file) and the config file (for the CLI and the agent). A file not
    written yet is the defaults."""
    socket = load_config(config_path).socket if config_path.exists() else Config().socket
    return {"TRUSTHOOK_CONFIG": str(config_path), "TRUSTHOOK_AGENT_SOCKET": str(socket)}
