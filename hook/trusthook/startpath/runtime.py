"""``trusthook-runtime``: an OCI runtime shim that adds the trusthook hook, then runs runc/crun.

Docker (daemon.json ``runtimes``), containerd (``BinaryName``) and Kubernetes RuntimeClass select
it like any runtime. The command line is parsed exactly as runc and crun parse it
(``runtimeargs``); anything unclassifiable is refused. On ``create`` and ``run`` it writes
trusthook's own ``createRuntime`` hook entry into the bundle's config.json (every other field
kept, the file replaced atomically) and execs the real runtime with the identical arguments;
``checkpoint`` and ``restore`` are refused; every other subcommand passes straight through. A
container from an encrypted image also gets a tmpfs root, and the runtime then runs as a child
so that the tmpfs can be removed after it (``bundle``). Standard library only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from trusthook.common.config import Config, load_config
from trusthook.errors import RuntimeShimError, TrusthookError
from trusthook.startpath.runtimeargs import (
    Invocation,
    Subcommand,
    parse_invocation,
    parse_subcommand,
)

CREATING_COMMANDS = frozenset({"create", "run"})
# Refused until the policy manifest decides restore policy: a restore runs whatever hooks the
# checkpoint recorded (or none), and a checkpoint writes the container's memory, plaintext, to
# disk (docs/images.md, "Checkpoint and restore").
REFUSED_COMMANDS = frozenset({"checkpoint", "restore"})


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


def _report(invocation: Invocation | None, message: str) -> None:
    """Tell the engine: stderr, and the runtime log file in runc's format when one is given."""
    import json  # noqa: PLC0415 - error path only: the shim's every start is kept lean

    from trusthook.common.clock import iso, utc_now  # noqa: PLC0415

    print(message, file=sys.stderr)
    log_path = invocation.flag("log") if invocation else None
    if not log_path:
        return
    now = iso(utc_now())
    if invocation and invocation.flag("log-format") == "json":
        line = json.dumps({"level": "error", "msg": message, "time": now})
    else:
        line = f'time="{now}" level=error msg="{message}"'
    try:
        with open(log_path, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass  # stderr already carries the message


def main(argv: list[str] | None = None) -> int:
    """Run the real runtime; for ``create``/``run`` prepare the bundle first (``bundle``).

    The engine starts the shim for every runtime subcommand (Docker: create, start, delete,
    delete), so everything but ``create``/``run`` and the delete of an encrypted-image container
    is an ``execv`` after as few imports as possible."""
    args = sys.argv[1:] if argv is None else argv
    invocation: Invocation | None = None
    root: Path | None = None
    detached = False
    try:
        invocation = parse_invocation(args)
        command = invocation.command
        if command in REFUSED_COMMANDS:
            raise RuntimeShimError(
                f"{command} is refused: a restored container would run unmeasured and a"
                " checkpoint writes its memory to disk in plaintext"
            )
        config = load_config()
        runtime = resolve(config.runtime, "runtime")
        if command in CREATING_COMMANDS or command == "delete":
            sub = parse_subcommand(command, invocation.rest)
            detached = sub.detached
            root = _prepare(config, command, sub)
    except TrusthookError as e:
        _report(invocation, f"trusthook-runtime: {e}")
        return 1
    if root is None:
        os.execv(runtime, [runtime, *args])
    from trusthook.startpath import bundle  # noqa: PLC0415 - see above

    return bundle.run_and_release([runtime, *args], root, str(command), detached)


def _prepare(config: Config, command: str, sub: Subcommand) -> Path | None:
    """The tmpfs root to release after the runtime, if the container has one; for a create
    or run, the bundle prepared first."""
    if command == "delete" and not os.path.lexists(config.image_roots / sub.container_id):
        return None  # no tmpfs root: a plain exec, without importing the bundle code (~20 ms)
    from trusthook.startpath import bundle  # noqa: PLC0415 - see main

    container = bundle.check_container_name(sub.container_id)
    if command == "delete":
        return config.image_roots / container
    entry = bundle.own_hook_entry(config)
    directory = sub.bundle(os.getcwd())
    return bundle.prepare_bundle(
        Path(directory, "config.json"), directory, container, config, entry
    )


if __name__ == "__main__":
    sys.exit(main())
