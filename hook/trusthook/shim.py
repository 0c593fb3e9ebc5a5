"""``trusthook-runtime``: an OCI runtime shim that adds the trusthook hook, then runs runc/crun.

Docker (daemon.json ``runtimes``), containerd (``BinaryName``) and Kubernetes RuntimeClass select
it like any runtime. On ``create`` and ``run`` it adds a ``createRuntime`` hook to the bundle's
config.json (every other field kept, the file replaced atomically) and execs the real runtime with
the identical arguments; every other subcommand passes straight through. Standard library only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trusthook.config import Config, load_config
from trusthook.errors import RuntimeShimError, TrusthookError
from trusthook.jsonobject import parse_object

# Global flags of runc and crun that take a separate value argument.
VALUE_FLAGS = frozenset(
    {"--log", "--log-format", "--log-level", "--root", "--criu", "--rootless", "--cgroup-manager"}
)
CREATING_COMMANDS = frozenset({"create", "run"})
HOOK_STAGE = "createRuntime"


def _flag_value(args: list[str], i: int, names: tuple[str, ...]) -> tuple[str | None, int]:
    """If args[i] is one of ``names`` (``--x v``, ``--x=v`` or ``-x v``), its value and the
    number of arguments it spans; else (None, 0)."""
    arg = args[i]
    for name in names:
        if arg == name:
            if i + 1 >= len(args):
                raise RuntimeShimError(f"flag {name} has no value")
            return args[i + 1], 2
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :], 1
    return None, 0


def find_subcommand(args: list[str]) -> int | None:
    """Index of the subcommand after the global flags, or None when there is none."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return i + 1 if i + 1 < len(args) else None
        if not arg.startswith("-"):
            return i
        i += 2 if arg in VALUE_FLAGS else 1
    return None


def global_flag(args: list[str], end: int, name: str) -> str | None:
    """The value of global flag ``name`` among ``args[:end]``."""
    for i in range(end):
        value, _ = _flag_value(args, i, (name,))
        if value is not None:
            return value
    return None


def find_bundle(sub_args: list[str], cwd: str) -> str:
    """The bundle of a create/run: ``--bundle``/``-b`` (runc, crun), else the working directory."""
    for i in range(len(sub_args)):
        value, _ = _flag_value(sub_args, i, ("--bundle", "-b"))
        if value is not None:
            return os.path.join(cwd, value)
    return cwd


def hook_entry(config: Config, hook_path: Path) -> dict[str, Any]:
    return {
        "path": str(hook_path),
        "args": ["trusthook-hook", *config.hook_args, "--stage", HOOK_STAGE],
        "timeout": math.ceil(config.hook_timeout),  # never shorter than the hook's own wait
    }


def inject_hook(config_path: Path, entry: dict[str, Any]) -> bool:
    """Add ``entry`` to the createRuntime hooks of ``config_path`` unless a hook with the same
    path is there; the file is replaced atomically with its mode kept. True if it changed."""
    try:
        raw = config_path.read_bytes()
        mode = os.stat(config_path).st_mode & 0o7777
    except OSError as e:
        raise RuntimeShimError(f"cannot read {config_path}: {e.strerror}") from e
    spec = parse_object(raw, str(config_path), RuntimeShimError)
    hooks = spec.setdefault("hooks", {})
    if not isinstance(hooks, dict):
        raise RuntimeShimError(f"{config_path}: 'hooks' must be an object")
    stage = hooks.setdefault(HOOK_STAGE, [])
    if not isinstance(stage, list):
        raise RuntimeShimError(f"{config_path}: 'hooks.{HOOK_STAGE}' must be an array")
    if any(isinstance(h, dict) and h.get("path") == entry["path"] for h in stage):
        return False
    stage.append(entry)
    fd, tmp = tempfile.mkstemp(dir=config_path.parent, prefix=".config.json.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, config_path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise RuntimeShimError(f"cannot write {config_path}: {e.strerror}") from e
    return True


def resolve(program: str, what: str) -> str:
    """An absolute path for ``program`` (a path, or a name looked up in PATH)."""
    found = program if os.path.isabs(program) else shutil.which(program)
    if not found or not os.access(found, os.X_OK):
        raise RuntimeShimError(f"{what} {program!r} not found or not executable")
    return found


def _report(args: list[str], end: int, message: str) -> None:
    """Tell the engine: stderr, and the runtime log file in runc's format when one is given."""
    print(message, file=sys.stderr)
    log_path = global_flag(args, end, "--log")
    if not log_path:
        return
    now = datetime.now(UTC).isoformat()
    if global_flag(args, end, "--log-format") == "json":
        line = json.dumps({"level": "error", "msg": message, "time": now})
    else:
        line = f'time="{now}" level=error msg="{message}"'
    try:
        with open(log_path, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass  # stderr already carries the message


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sub = find_subcommand(args)
    end = len(args) if sub is None else sub
    try:
        config = load_config()
        runtime = resolve(config.runtime, "runtime")
        if sub is not None and args[sub] in CREATING_COMMANDS:
            hook = config.hook_path or Path(sys.executable).parent / "trusthook-hook"
            hook_path = Path(resolve(str(hook), "trusthook hook"))
            bundle = find_bundle(args[sub + 1 :], os.getcwd())
            inject_hook(Path(bundle, "config.json"), hook_entry(config, hook_path))
    except TrusthookError as e:
        _report(args, end, f"trusthook-runtime: {e}")
        return 1
    os.execv(runtime, [runtime, *args])


if __name__ == "__main__":
    sys.exit(main())
