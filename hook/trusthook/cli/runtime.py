"""``trusthook runtime configure|unconfigure``: merge trusthook into a container engine's own
configuration, or take it out again (docs/deploy.md). Every file is planned before any is
written: a refusal is one line on stderr, and nothing changes."""

from __future__ import annotations

import argparse
from pathlib import Path

from trusthook.common.config import Config
from trusthook.errors import UsageError
from trusthook.hostsetup.choices import Engine
from trusthook.hostsetup.configure import (
    RELOAD,
    RESTART,
    Change,
    EngineFile,
    apply,
    engine_files,
    plan_configure,
    plan_unconfigure,
    runtime_spec,
)


def _files(args: argparse.Namespace) -> tuple[Engine, list[EngineFile]]:
    engine = Engine(args.runtime)
    config = Path(args.config) if args.config else None
    hooks_dir = Path(args.hooks_dir) if args.hooks_dir else None
    return engine, engine_files(engine, config=config, hooks_dir=hooks_dir)


def configure(args: argparse.Namespace, config: Config) -> int:
    engine, files = _files(args)
    if args.default and engine is Engine.PODMAN:
        raise UsageError(
            "--default: podman has no default runtime to set; its hooks.d hook runs for every"
            " container"
        )
    spec = runtime_spec(config, shim=args.shim_path, hook=args.hook_path, default=args.default)
    return _carry_out(engine, plan_configure(files, spec), dry_run=args.dry_run, adding=True)


def unconfigure(args: argparse.Namespace, config: Config) -> int:
    engine, files = _files(args)
    return _carry_out(engine, plan_unconfigure(files), dry_run=args.dry_run, adding=False)


def _carry_out(engine: Engine, changes: list[Change], *, dry_run: bool, adding: bool) -> int:
    if not dry_run:
        apply(changes)
    for change in changes:
        path = change.file.path
        if not change.changed:
            state = "already configured" if adding else "trusthook is not configured there"
            print(f"{engine.value}: {path}: unchanged ({state})")
            continue
        if dry_run:
            print(change.diff(), end="")
        verb = "remove" if change.after is None else "write"
        done = f"would {verb}" if dry_run else ("removed" if change.after is None else "wrote")
        backup = f" (backup: {change.file.backup})" if change.backup_from is not None else ""
        print(f"{engine.value}: {done} {path}{backup}")
        for note in change.notes:
            print(f"  {note}")
    if any(c.changed for c in changes):
        then = "then" if dry_run else "now"
        advice = RESTART if any(c.restart for c in changes) else RELOAD
        print(f"{engine.value}: {then} {advice[engine]}")
    return 0
