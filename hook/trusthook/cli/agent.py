"""``trusthook agent``: run the node agent in the foreground (the systemd unit's command)."""

from __future__ import annotations

import argparse

from trusthook.agent.main import run_agent
from trusthook.common.config import Config


def agent(_args: argparse.Namespace, config: Config) -> int:
    run_agent(config)
    return 0
