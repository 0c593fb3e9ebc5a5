"""``trusthook doctor``: is this host ready? One line per check with a fix; ``--json`` for
fleet tooling (docs/deploy.md). Exit status 0: ready; 2: a check failed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trusthook.common.config import Config
from trusthook.errors import UsageError
from trusthook.hostsetup.choices import Engine
from trusthook.hostsetup.configure import EngineFile, engine_files
from trusthook.hostsetup.doctor import Doctor


def _engine_configs(values: list[str]) -> dict[Engine, Path]:
    configs: dict[Engine, Path] = {}
    for value in values:
        name, eq, path = value.partition("=")
        try:
            engine = Engine(name)
        except ValueError:
            engine = None
        if not eq or not path or engine is None:
            raise UsageError(
                f"--engine-config: got {value!r}, expected ENGINE=PATH with ENGINE one of"
                " docker, containerd, podman (its containers.conf), crio"
            )
        configs[engine] = Path(path)
    return configs


def doctor(args: argparse.Namespace, config: Config) -> int:
    configs = _engine_configs(args.engine_config)
    hooks_dir = Path(args.hooks_dir) if args.hooks_dir else None
    files: dict[Engine, list[EngineFile]] = {
        engine: engine_files(engine, config=configs.get(engine), hooks_dir=hooks_dir)
        for engine in Engine
    }
    report = Doctor(config, files=files).run()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.text())
    return 0 if report.ready else 2
