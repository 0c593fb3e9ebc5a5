"""The runtime command line the engine hands ``trusthook-runtime``, parsed as runc and crun
parse it, so that the shim and the real runtime never disagree about which subcommand runs.
Standard library only.

Global flags (runc 1.1 and crun 1.8 together) come before the subcommand. runc reads them with
Go's ``flag`` rules: ``-name`` and ``--name`` are the same flag, a value is ``--name=v`` or the
next argument, a boolean takes only ``--name`` or ``--name=BOOL``; crun reads GNU long options.
Flag parsing stops at ``--`` or at the first argument that is not a flag: the subcommand.

Anything the shim cannot classify is refused, never guessed: an unknown flag (crun also takes
unambiguous abbreviations such as ``--ro``; the shim refuses them), a value flag at the end, a
boolean with a value that is not a boolean. A refusal stops the container: failing closed is
the point, since a subcommand misread as an argument would run unmeasured.

For the subcommands whose bundle or container the shim works on (``create``, ``run``,
``delete``, ``checkpoint``, ``restore``), their flags are parsed the same way; runc also
takes them after the container id (urfave/cli moves flags first), so flags and the one
positional argument may come in any order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from trusthook.errors import RuntimeShimError

GLOBAL_VALUE_FLAGS = frozenset(
    {"log", "log-format", "log-level", "root", "criu", "rootless", "cgroup-manager"}
)
GLOBAL_BOOL_FLAGS = frozenset({"debug", "systemd-cgroup"})
INFO_FLAGS = frozenset({"help", "h", "version", "v", "V", "?", "usage"})  # print and exit

# Subcommand flags: name -> canonical name, for values and booleans.
_CREATE_VALUES = {
    "bundle": "bundle",
    "b": "bundle",
    "console-socket": "console-socket",
    "pid-file": "pid-file",
    "preserve-fds": "preserve-fds",
}
_CREATE_BOOLS = {"no-pivot": "no-pivot", "no-new-keyring": "no-new-keyring"}
_RUN_BOOLS = {
    **_CREATE_BOOLS,
    "detach": "detach",
    "d": "detach",
    "keep": "keep",
    "no-subreaper": "no-subreaper",
}
# Refused with a reason: flags the shim would have to follow to keep the container measured.
_OTHER_CONFIG = "crun's --config names another file than the bundle's config.json"
_REGEX = "crun's delete --regex names containers the shim cannot know"
_CREATE_REFUSED = {"config": _OTHER_CONFIG, "f": _OTHER_CONFIG}
# checkpoint and restore (runc 1.1 and crun 1.8 together; docs/policy.md §8)
_CRIU_VALUES = {"image-path": "image-path", "work-path": "work-path"}
_CRIU_VALUES |= {"manage-cgroups-mode": "manage-cgroups-mode", "empty-ns": "empty-ns"}
_CRIU_BOOLS = {
    "tcp-established": "tcp-established",
    "ext-unix-sk": "ext-unix-sk",
    "shell-job": "shell-job",
    "file-locks": "file-locks",
    "auto-dedup": "auto-dedup",
    "lazy-pages": "lazy-pages",
}
_CHECKPOINT_VALUES = {**_CRIU_VALUES, "parent-path": "parent-path", "status-fd": "status-fd"}
_CHECKPOINT_BOOLS = {**_CRIU_BOOLS, "leave-running": "leave-running", "pre-dump": "pre-dump"}
_PAGE_SERVER = "--page-server sends the container's memory over the network, in plaintext"
_RESTORE_VALUES = {
    **_CRIU_VALUES,
    "bundle": "bundle",
    "b": "bundle",
    "console-socket": "console-socket",
    "pid-file": "pid-file",
    "lsm-profile": "lsm-profile",
    "lsm-mount-context": "lsm-mount-context",
}
_RESTORE_BOOLS = {
    **_CRIU_BOOLS,
    "detach": "detach",
    "d": "detach",
    "no-subreaper": "no-subreaper",
    "no-pivot": "no-pivot",
}
SUBCOMMAND_FLAGS: dict[str, tuple[dict[str, str], dict[str, str], dict[str, str]]] = {
    "create": (_CREATE_VALUES, {**_CREATE_BOOLS, "no-subreaper": "no-subreaper"}, _CREATE_REFUSED),
    "run": (_CREATE_VALUES, _RUN_BOOLS, _CREATE_REFUSED),
    "delete": ({}, {"force": "force", "f": "force"}, {"regex": _REGEX, "r": _REGEX}),
    "checkpoint": (_CHECKPOINT_VALUES, _CHECKPOINT_BOOLS, {"page-server": _PAGE_SERVER}),
    "restore": (_RESTORE_VALUES, _RESTORE_BOOLS, _CREATE_REFUSED),
}
_BOOLEANS = {"1": True, "t": True, "T": True, "true": True, "TRUE": True, "True": True}
_BOOLEANS |= {"0": False, "f": False, "F": False, "false": False, "FALSE": False, "False": False}


@dataclass(frozen=True, slots=True, kw_only=True)
class Invocation:
    """One runtime command line: global flags, the subcommand and what follows it."""

    flags: dict[str, str] = field(default_factory=dict)  # canonical name -> value ("true")
    info: bool = False  # --help or --version: no subcommand runs
    command: str | None = None
    rest: tuple[str, ...] = ()  # everything after the subcommand, as given

    def flag(self, name: str) -> str | None:
        return self.flags.get(name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Subcommand:
    """The flags and the container id of a ``create``, ``run``, ``delete``, ``checkpoint`` or
    ``restore``."""

    flags: dict[str, str]
    container_id: str

    def bundle(self, cwd: str) -> str:
        """The bundle: ``--bundle``/``-b`` taken from ``cwd``, else ``cwd`` (runtime-spec)."""
        return os.path.join(cwd, self.flags.get("bundle", cwd))

    @property
    def detached(self) -> bool:
        return self.flags.get("detach") == "true"


def _split(arg: str) -> tuple[str, str | None]:
    """A flag argument's name (dashes removed) and its ``=value``, if any."""
    body = arg[2:] if arg.startswith("--") else arg[1:]
    if not body or body.startswith("-"):
        raise RuntimeShimError(f"bad flag syntax {arg!r}")
    name, eq, value = body.partition("=")
    return name, value if eq else None


def _boolean(arg: str, value: str | None) -> str:
    if value is None:
        return "true"
    if value not in _BOOLEANS:
        raise RuntimeShimError(f"flag {arg!r}: expected a boolean value, got {value!r}")
    return "true" if _BOOLEANS[value] else "false"


def parse_invocation(args: list[str]) -> Invocation:
    """The global flags and the subcommand of a runtime command line; RuntimeShimError for
    anything that cannot be classified."""
    flags: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, value = _split(arg)
        if name in INFO_FLAGS:
            return Invocation(flags=flags, info=True)
        if name in GLOBAL_VALUE_FLAGS:
            if value is None:
                if i + 1 >= len(args):
                    raise RuntimeShimError(f"global flag {arg!r} has no value")
                value = args[i + 1]
                i += 1
            flags[name] = value
        elif name in GLOBAL_BOOL_FLAGS:
            flags[name] = _boolean(arg, value)
        else:
            raise RuntimeShimError(
                f"unknown global flag {arg!r}; trusthook-runtime refuses to guess which"
                " subcommand it would run"
            )
        i += 1
    if i >= len(args):
        return Invocation(flags=flags)
    return Invocation(flags=flags, command=args[i], rest=tuple(args[i + 1 :]))


def parse_subcommand(command: str, rest: tuple[str, ...]) -> Subcommand:
    """The flags and the one container id of a subcommand of ``SUBCOMMAND_FLAGS``."""
    values, bools, refused = SUBCOMMAND_FLAGS[command]
    flags: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            positional.extend(rest[i + 1 :])
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            i += 1
            continue
        name, value = _split(arg)
        if name in values:
            if value is None:
                if i + 1 >= len(rest):
                    raise RuntimeShimError(f"{command} flag {arg!r} has no value")
                value = rest[i + 1]
                i += 1
            flags[values[name]] = value
        elif name in bools:
            flags[bools[name]] = _boolean(arg, value)
        elif name in refused:
            raise RuntimeShimError(f"{command} {arg} is refused: {refused[name]}")
        else:
            raise RuntimeShimError(f"unknown {command} flag {arg!r}; refusing to guess")
        i += 1
    if len(positional) != 1:
        raise RuntimeShimError(
            f"{command} needs exactly one container id, got {len(positional)} arguments"
        )
    return Subcommand(flags=flags, container_id=positional[0])
