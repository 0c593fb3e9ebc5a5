"""``trusthook demo``: the main job end to end on swtpm, busybox and a local server."""

from __future__ import annotations

import argparse
from pathlib import Path

from trusthook._devenv.demo import run_demo
from trusthook.common.config import Config


def demo(args: argparse.Namespace, _config: Config) -> int:
    return run_demo(Path(args.workdir))
