"""``trusthook-runtime``: an OCI runtime shim that adds the trusthook hook, then runs runc/crun.

Docker (daemon.json ``runtimes``), containerd (``BinaryName``) and Kubernetes RuntimeClass select
it like any runtime. On ``create`` and ``run`` it adds a ``createRuntime`` hook to the bundle's
config.json (every other field kept, the file replaced atomically) and execs the real runtime with
the identical arguments; every other subcommand passes straight through. A container from an
encrypted image also gets a tmpfs root, and the runtime then runs as a child so that the tmpfs
can be removed after it (``shimbundle``). Standard library only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from trusthook.common.config import load_config
from trusthook.errors import RuntimeShimError, TrusthookError

# Global flags of runc and crun that take a separate value argument.
VALUE_FLAGS = frozenset(
    {"--log", "--log-format", "--log-level", "--root", "--criu", "--rootless", "--cgroup-manager"}
)
CREATING_COMMANDS = frozenset({"create", "run"})


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


def resolve(program: str, what: str) -> str:
    """An absolute path for ``program`` (a path, or a name looked up in PATH; not with
    ``shutil.which``, whose import costs the shim's every start ~10 ms)."""
    candidates = (
        [program]
        if os.path.isabs(program)
        else [
            os.path.join(d, program)
            for d in os.environ.get("PATH", os.defpath).split(os.pathsep)
            if d
        ]
    )
    for found in candidates:
        if os.path.isfile(found) and os.access(found, os.X_OK):
            return found
    raise RuntimeShimError(f"{what} {program!r} not found or not executable")


def _report(args: list[str], end: int, message: str) -> None:
    """Tell the engine: stderr, and the runtime log file in runc's format when one is given."""
    import json  # noqa: PLC0415 - error path only: the shim's every start is kept lean

    from trusthook.common.clock import iso, utc_now  # noqa: PLC0415

    print(message, file=sys.stderr)
    log_path = global_flag(args, end, "--log")
    if not log_path:
        return
    now = iso(utc_now())
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
    """Run the real runtime; for ``create``/``run`` prepare the bundle first (``shimbundle``).

    The engine starts the shim for every runtime subcommand (Docker: create, start, delete,
    delete), so everything but ``create``/``run`` and the delete of an encrypted-image container
    is an ``execv`` after as few imports as possible."""
    args = sys.argv[1:] if argv is None else argv
    sub = find_subcommand(args)
    end = len(args) if sub is None else sub
    command, rest = (args[sub], args[sub + 1 :]) if sub is not None else ("", [])
    root: Path | None = None
    try:
        config = load_config()
        runtime = resolve(config.runtime, "runtime")
        if command in CREATING_COMMANDS or (
            command == "delete" and rest and os.path.lexists(config.image_roots / rest[-1])
        ):
            from trusthook.startpath import bundle as shimbundle  # noqa: PLC0415 - see above

            container = shimbundle.container_arg(rest)
            if command == "delete":
                root = config.image_roots / container
            else:
                hook = config.hook_path or Path(sys.executable).parent / "trusthook-hook"
                hook_path = Path(resolve(str(hook), "trusthook hook"))
                bundle = find_bundle(rest, os.getcwd())
                entry = shimbundle.hook_entry(config, hook_path)
                config_path = Path(bundle, "config.json")
                root = shimbundle.prepare_bundle(config_path, bundle, container, config, entry)
    except TrusthookError as e:
        _report(args, end, f"trusthook-runtime: {e}")
        return 1
    if root is None:
        os.execv(runtime, [runtime, *args])
    return shimbundle.run_and_release(
        [runtime, *args], root, command, any(a in ("-d", "--detach") for a in args[end + 1 :])
    )


if __name__ == "__main__":
    sys.exit(main())
