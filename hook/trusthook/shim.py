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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trusthook.config import Config, load_config
from trusthook.errors import RuntimeShimError, TrusthookError
from trusthook.jsonobject import parse_object
from trusthook.oci import check_container_id
from trusthook.shimroot import container_arg, prepare_root, release_root, run_child, write_config

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
    write_config(config_path, spec, mode)
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
    root: Path | None = None
    try:
        config = load_config()
        runtime = resolve(config.runtime, "runtime")
        command = args[sub] if sub is not None else ""
        if sub is not None and command in CREATING_COMMANDS:
            hook = config.hook_path or Path(sys.executable).parent / "trusthook-hook"
            hook_path = Path(resolve(str(hook), "trusthook hook"))
            bundle = find_bundle(args[sub + 1 :], os.getcwd())
            config_path = Path(bundle, "config.json")
            inject_hook(config_path, hook_entry(config, hook_path))
            root = prepare_root(config_path, bundle, container_arg(args[sub + 1 :]), config)
        elif sub is not None and command == "delete":
            root = config.image_roots / check_container_id(container_arg(args[sub + 1 :]))
    except TrusthookError as e:
        if root is not None:
            release_root(root)
        _report(args, end, f"trusthook-runtime: {e}")
        return 1
    if root is None:
        os.execv(runtime, [runtime, *args])
    code = run_child([runtime, *args])
    detached = any(a in ("-d", "--detach") for a in args[end + 1 :])
    # delete: gone once deleted; create or run: it never started, or (attached run) it exited
    ended = code != 0 or (command == "run" and not detached)
    if code == 0 if command == "delete" else ended:
        release_root(root)  # no container, no plaintext
    return code


if __name__ == "__main__":
    sys.exit(main())
