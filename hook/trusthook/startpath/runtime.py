"""``trusthook-runtime``: an OCI runtime shim that adds the trusthook hook, then runs runc/crun.

Docker (daemon.json ``runtimes``), containerd (``BinaryName``) and Kubernetes RuntimeClass select
it like any runtime. The command line is parsed exactly as runc and crun parse it
(``runtimeargs``); anything unclassifiable is refused. On ``create`` and ``run`` it writes
trusthook's own ``createRuntime`` hook entry into the bundle's config.json (every other field
kept, the file replaced atomically) and execs the real runtime with the identical arguments.
``checkpoint`` and ``restore`` run only when the node agent, asking the attestation server,
allows them (docs/policy.md §8): a restore's bundle first gets the same hook entry, so the
restored container is measured again; a refusal, or any failure to get an answer, is one line
and exit 1, and the runtime never runs. Every other subcommand passes straight through. A
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
# Asked of the agent first (docs/policy.md §8): a restore runs whatever hooks the checkpoint
# recorded (or none), and a checkpoint writes the container's memory, plaintext, to disk.
DECIDED_COMMANDS = frozenset({"checkpoint", "restore"})


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
        config = load_config()
        runtime = resolve(config.runtime, "runtime")
        if command in DECIDED_COMMANDS:
            _decide(config, command, parse_subcommand(command, invocation.rest))
        elif command in CREATING_COMMANDS or command == "delete":
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


def _decide(config: Config, command: str, sub: Subcommand) -> None:
    """Return if the agent allows this checkpoint or restore; RuntimeShimError otherwise. A
    restore's bundle gets trusthook's hook first, as for ``create``, and the agent reads its
    config.json as the runtime will."""
    from trusthook.common.messages import (  # noqa: PLC0415 - see main
        OP_CHECKPOINT,
        OP_RESTORE,
        CheckpointParams,
        RestoreParams,
    )
    from trusthook.common.protocol import call  # noqa: PLC0415
    from trusthook.startpath import bundle  # noqa: PLC0415

    container = bundle.check_container_name(sub.container_id)
    if command == "checkpoint":
        if os.path.lexists(config.image_roots / container):
            raise RuntimeShimError(
                f"checkpoint of container {container} is refused: it runs from an encrypted"
                " image, and its memory would be written to disk in plaintext (encrypted"
                " checkpoints are not built)"
            )
        op, params = OP_CHECKPOINT, CheckpointParams(container_id=container).to_json()
    else:
        directory = os.path.abspath(sub.bundle(os.getcwd()))
        config_path = Path(directory, "config.json")
        bundle.prepare_restore(config_path, directory, bundle.own_hook_entry(config))
        params = RestoreParams(container_id=container, bundle=Path(directory)).to_json()
        op = OP_RESTORE
    try:
        # the agent attests, then asks: two exchanges with the server
        call(str(config.socket), op, timeout=3 * config.attest_timeout, params=params)
    except TrusthookError as e:
        raise RuntimeShimError(f"{command} of container {container} is refused: {e}") from e


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
