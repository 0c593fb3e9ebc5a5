"""What ``trusthook runtime configure`` writes into each container engine's configuration, as
pure functions: a file's text (None: there is no file) in, its new text out, or an error naming
what is wrong and touching nothing (docs/deploy.md).

Each file is one ``Format``:
- ``DaemonJson``: Docker's ``daemon.json``: ``runtimes.trusthook = {"path": SHIM}`` and, as the
  default, ``default-runtime``; every other member and their order kept, the indentation kept.
- ``ContainerdToml``: containerd's ``config.toml``, version 2: the CRI plugin's runtime
  ``trusthook`` (``io.containerd.runc.v2`` with ``options.BinaryName = SHIM``), edited as text
  (``tomledit``) so comments and layout survive, then checked by parsing the result.
- ``containers_conf.ContainersConf``: podman's ``containers.conf``, its ``[engine] hooks_dir``
  (in a module of its own, with the TOML helpers here).
- ``CrioDropIn``: CRI-O's drop-in ``crio.conf.d/50-trusthook.conf``, trusthook's own file.
- ``HooksJson``: the hooks.d file podman and CRI-O run OCI hooks from, trusthook's own file,
  the same content as ``oci-config/hooks.d/trusthook.json``.
A file that already names a ``trusthook`` runtime pointing elsewhere is refused (unconfigure
first): configure never guesses which of two binaries is meant.
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from trusthook.errors import ConflictError, EngineConfigError
from trusthook.hostsetup import tomledit

NAME = "trusthook"  # the runtime's name in every engine, and the RuntimeClass handler
RUNC_V2 = "io.containerd.runc.v2"
CRI = ("plugins", "io.containerd.grpc.v1.cri")
CONTAINERD = (*CRI, "containerd")
RUNTIMES = (*CONTAINERD, "runtimes")
CRIO_HEADER = (
    "# trusthook: written by `trusthook runtime configure --runtime crio`;"
    " `trusthook runtime unconfigure --runtime crio` removes it. Do not edit.\n"
)
HOOK_ARGV0 = "trusthook-hook"


@dataclass(frozen=True, kw_only=True)
class RuntimeSpec:
    """What configure registers: the shim, the hooks.d hook entry (``path``, ``args``,
    ``timeout``, as ``agent.bundles.hook_entry`` makes it), and whether trusthook becomes
    the engine's default runtime."""

    shim: str
    hook: Mapping[str, Any]
    default: bool = False


@dataclass(frozen=True, kw_only=True)
class Edit:
    """A file's new text (None: the file should not exist), what changed, for the user, and
    whether the engine must be restarted for it (its reload would not do)."""

    text: str | None
    notes: tuple[str, ...] = ()
    restart: bool = False


@dataclass(frozen=True, kw_only=True)
class Registration:
    """What a file registers for trusthook: the program it runs (the shim, or the hook for a
    hooks.d file), and whether trusthook is the default runtime; ``args`` for a hook."""

    program: str | None
    default: bool = False
    args: tuple[str, ...] = ()


class Format(Protocol):
    """One kind of engine configuration file."""

    @property
    def what(self) -> str:
        """How messages name the file."""
        ...

    @property
    def owned(self) -> bool:
        """Whether it is trusthook's own file (written whole, removed whole, no backup)."""
        ...

    def configure(self, text: str | None, spec: RuntimeSpec) -> Edit: ...

    def unconfigure(self, text: str | None) -> Edit: ...

    def equivalent(self, left: str, right: str) -> bool:
        """Whether two texts say the same, where the format has nothing but what they say
        (JSON: member order and layout aside)."""
        ...

    def empty(self, text: str) -> bool:
        """Whether a file left with ``text`` holds no setting (a file configure created is
        removed again then)."""
        ...

    def registration(self, text: str) -> Registration | None: ...


# Docker: daemon.json


def _unique_pairs(where: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """A JSON object hook that refuses a member given twice (Go keeps the last one)."""

    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise EngineConfigError(f"{where} has the member {key!r} twice; remove one")
            result[key] = value
        return result

    return build


def _json_object(text: str | None, where: str) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    try:
        data = json.loads(text, object_pairs_hook=_unique_pairs(where))
    except (ValueError, RecursionError) as e:
        raise EngineConfigError(
            f"{where} is not valid JSON ({e}); trusthook changed nothing"
        ) from None
    if not isinstance(data, dict):
        raise EngineConfigError(f"{where} must hold a JSON object, got {type(data).__name__}")
    return data


def _indent_of(text: str | None) -> str | int:
    """The indentation of a JSON text's first indented line (2 if it has none)."""
    for line in (text or "").splitlines()[1:]:
        stripped = line.lstrip(" \t")
        if stripped and len(stripped) < len(line):
            unit = line[: len(line) - len(stripped)]
            return unit if "\t" in unit else len(unit)
    return 2


def _object_member(data: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise EngineConfigError(f"{where}: {key!r} must be an object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class DaemonJson:
    what: str = "daemon.json"
    owned: bool = False

    def configure(self, text: str | None, spec: RuntimeSpec) -> Edit:
        data = _json_object(text, self.what)
        runtimes = _object_member(data, "runtimes", self.what)
        existing = _object_member(runtimes or {}, NAME, f"{self.what} runtimes")
        notes = []
        if existing is None:
            data["runtimes"] = {**(runtimes or {}), NAME: {"path": spec.shim}}
            notes.append(f"runtime {NAME!r} runs {spec.shim}")
        elif existing.get("path") != spec.shim:
            raise ConflictError(
                f"{self.what} already has runtime {NAME!r} with path {existing.get('path')!r},"
                f" expected {spec.shim!r}; run 'trusthook runtime unconfigure --runtime docker'"
                " first, or pass --shim-path with that path to keep it"
            )
        previous = data.get("default-runtime")
        if spec.default and previous != NAME:
            data["default-runtime"] = NAME
            was = f" (was {previous!r})" if previous is not None else ""
            notes.append(f"default-runtime is {NAME!r}{was}")
        if not notes:
            return Edit(text=text)
        return Edit(text=self._dump(data, text), notes=tuple(notes))

    def unconfigure(self, text: str | None) -> Edit:
        data = _json_object(text, self.what)
        runtimes = _object_member(data, "runtimes", self.what)
        notes = []
        if runtimes is not None and NAME in runtimes:
            del runtimes[NAME]
            if not runtimes:
                del data["runtimes"]
            notes.append(f"runtime {NAME!r} removed")
        restart = data.get("default-runtime") == NAME
        if restart:  # a reload keeps a default the file no longer names (dockerd 20.10)
            del data["default-runtime"]
            notes.append("default-runtime removed: restart dockerd, a reload would keep it")
        if not notes:
            return Edit(text=text)
        return Edit(text=self._dump(data, text), notes=tuple(notes), restart=restart)

    def _dump(self, data: dict[str, Any], original: str | None) -> str:
        return json.dumps(data, indent=_indent_of(original), ensure_ascii=False) + "\n"

    def equivalent(self, left: str, right: str) -> bool:
        return _json_object(left, self.what) == _json_object(right, self.what)

    def empty(self, text: str) -> bool:
        return not _json_object(text, self.what)

    def registration(self, text: str) -> Registration | None:
        data = _json_object(text, self.what)
        runtime = (_object_member(data, "runtimes", self.what) or {}).get(NAME)
        if not isinstance(runtime, dict):
            return None
        path = runtime.get("path")
        return Registration(
            program=path if isinstance(path, str) else None,
            default=data.get("default-runtime") == NAME,
        )


# containerd: config.toml, version 2


def parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise EngineConfigError(
            f"{where} is not valid TOML ({e}); trusthook changed nothing"
        ) from None


def _get(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def check_edit(where: str, new: str, expected: dict[str, Any], snippet: str) -> None:
    """A line-level edit's result must parse to exactly the old settings plus trusthook's."""
    try:
        got = tomllib.loads(new)
    except tomllib.TOMLDecodeError as e:
        got = {"error": str(e)}
    if got != expected:
        raise EngineConfigError(
            f"{where} is laid out in a way trusthook cannot edit line by line (a table"
            " defined with dotted keys or inline?); trusthook changed nothing; add this by"
            f" hand:\n{snippet}"
        )


def unmark(text: str, where: str) -> tuple[str, bool]:
    """``tomledit.remove_marked``, its ValueError a refusal."""
    try:
        return tomledit.remove_marked(text)
    except ValueError as e:
        raise EngineConfigError(f"{where}: {e}; trusthook changed nothing") from None


@dataclass(frozen=True)
class ContainerdToml:
    what: str = "config.toml"
    owned: bool = False

    def _check_version(self, data: Mapping[str, Any]) -> None:
        version = data.get("version")
        if not data or (version == 2 and type(version) is int):
            return  # an empty file holds containerd's defaults: it becomes version 2
        if version is None:
            raise EngineConfigError(
                f"{self.what} is a version 1 configuration (it has no 'version = 2'); trusthook"
                " edits only version 2 (containerd 1.5 to 1.7): migrate it first ('containerd"
                " config default' prints the version 2 layout); trusthook changed nothing"
            )
        raise EngineConfigError(
            f"{self.what} has version = {version!r}, expected 2; trusthook edits only version 2"
            " (containerd 1.5 to 1.7); for containerd 2 (version 3) add the runtime by hand"
            " (docs/deploy.md); trusthook changed nothing"
        )

    def configure(self, text: str | None, spec: RuntimeSpec) -> Edit:
        original = text or ""
        data = parse_toml(original, self.what)
        self._check_version(data)
        runtimes = _get(data, RUNTIMES)
        if runtimes is not None and not isinstance(runtimes, dict):
            raise EngineConfigError(f"{self.what}: {'.'.join(RUNTIMES)} must be a table")
        runtimes = runtimes or {}
        expected = copy.deepcopy(data)
        tables: list[tuple[tomledit.TablePath, dict[str, str | bool | int]]] = []
        notes = []
        top = ""
        if not data:
            top, expected["version"] = "version = 2\n", 2
        if NAME not in runtimes:
            if not runtimes:  # a runtimes table replaces the built-in runc: spell it out
                tables.append(((*RUNTIMES, "runc"), {"runtime_type": RUNC_V2}))
                put(expected, (*RUNTIMES, "runc"), {"runtime_type": RUNC_V2})
                notes.append("containerd's built-in runtime 'runc' written out (it would be lost)")
            options: dict[str, str | bool | int] = {"BinaryName": spec.shim}
            if _get(runtimes, ("runc", "options", "SystemdCgroup")) is True:
                options["SystemdCgroup"] = True  # the kubelet's cgroup driver applies to all
            tables.append(((*RUNTIMES, NAME), {"runtime_type": RUNC_V2}))
            tables.append(((*RUNTIMES, NAME, "options"), options))
            put(expected, (*RUNTIMES, NAME), {"runtime_type": RUNC_V2, "options": options})
            notes.append(f"runtime {NAME!r} ({RUNC_V2}) runs {spec.shim}")
        else:
            self._check_existing(runtimes[NAME], spec.shim)
        lines = tomledit.lines_of(original)
        previous = _get(data, (*CONTAINERD, "default_runtime_name"))
        if spec.default and previous != NAME:
            header = tomledit.find_table(lines, CONTAINERD)
            if header is None:
                tables.insert(0, (CONTAINERD, {"default_runtime_name": NAME}))
            else:
                tomledit.set_key(lines, header, "default_runtime_name", NAME)
            put(expected, (*CONTAINERD, "default_runtime_name"), NAME)
            was = f" (was {previous!r})" if previous is not None else ""
            notes.append(f"default_runtime_name is {NAME!r}{was}")
        if not notes:
            return Edit(text=text)
        new = "".join(lines)
        if tables or top:
            new = tomledit.append_block(new, tomledit.block(tables, top))
        check_edit(self.what, new, expected, tomledit.block(tables, top))
        return Edit(text=new, notes=tuple(notes))

    def _check_existing(self, existing: object, shim: str) -> None:
        binary = _get(existing, ("options", "BinaryName")) if isinstance(existing, dict) else None
        kind = existing.get("runtime_type") if isinstance(existing, dict) else None
        if kind == RUNC_V2 and binary == shim:
            return
        raise ConflictError(
            f"{self.what} already defines runtime {NAME!r} (runtime_type {kind!r}, BinaryName"
            f" {binary!r}), expected runtime_type {RUNC_V2!r} and BinaryName {shim!r}; run"
            " 'trusthook runtime unconfigure --runtime containerd' (or remove it by hand), then"
            " configure again"
        )

    def unconfigure(self, text: str | None) -> Edit:
        if text is None:
            return Edit(text=None)
        data = parse_toml(text, self.what)
        new, found = unmark(text, self.what)
        after = parse_toml(new, self.what) if found else data
        if _get(after, (*RUNTIMES, NAME)) is not None or (
            _get(after, (*CONTAINERD, "default_runtime_name")) == NAME
        ):
            raise EngineConfigError(
                f"{self.what} names runtime {NAME!r} outside the lines trusthook marked as its"
                " own (added by hand?); remove it by hand; trusthook changed nothing"
            )
        if not found:
            return Edit(text=text)
        return Edit(text=new, notes=("trusthook's tables and settings removed",))

    def equivalent(self, left: str, right: str) -> bool:
        return left == right  # comments and layout are part of what a TOML file says

    def empty(self, text: str) -> bool:
        return not text.strip()

    def registration(self, text: str) -> Registration | None:
        data = parse_toml(text, self.what)
        runtime = _get(data, (*RUNTIMES, NAME))
        if not isinstance(runtime, dict):
            return None
        binary = _get(runtime, ("options", "BinaryName"))
        return Registration(
            program=binary if isinstance(binary, str) else None,
            default=_get(data, (*CONTAINERD, "default_runtime_name")) == NAME,
        )


# trusthook's own files: the CRI-O drop-in and the hooks.d file


@dataclass(frozen=True)
class CrioDropIn:
    what: str = "50-trusthook.conf"
    owned: bool = True

    def text(self, spec: RuntimeSpec) -> str:
        lines = [CRIO_HEADER]
        if spec.default:
            lines.append(f'[crio.runtime]\ndefault_runtime = "{NAME}"\n\n')
        lines.append(
            f"[crio.runtime.runtimes.{NAME}]\n"
            f"runtime_path = {tomledit.value_text(spec.shim)}\n"
            'runtime_type = "oci"\n'
            'runtime_root = "/run/runc"\n'
        )
        return "".join(lines)

    def _check_ours(self, text: str) -> None:
        if not text.startswith(CRIO_HEADER):
            raise ConflictError(
                f"{self.what} exists and was not written by trusthook; move it away (CRI-O reads"
                " every file in crio.conf.d) or pass another --config; trusthook changed nothing"
            )

    def configure(self, text: str | None, spec: RuntimeSpec) -> Edit:
        if text is not None:
            self._check_ours(text)
        new = self.text(spec)
        if new == text:
            return Edit(text=text)
        default = (f"default_runtime is {NAME!r}",) if spec.default else ()
        return Edit(text=new, notes=(f"runtime {NAME!r} runs {spec.shim}", *default))

    def unconfigure(self, text: str | None) -> Edit:
        if text is None:
            return Edit(text=None)
        self._check_ours(text)
        return Edit(text=None, notes=(f"{self.what} removed",))

    def equivalent(self, left: str, right: str) -> bool:
        return left == right

    def empty(self, text: str) -> bool:
        return False

    def registration(self, text: str) -> Registration | None:
        data = parse_toml(text, self.what)
        runtime = _get(data, ("crio", "runtime", "runtimes", NAME))
        if not isinstance(runtime, dict):
            return None
        path = runtime.get("runtime_path")
        return Registration(
            program=path if isinstance(path, str) else None,
            default=_get(data, ("crio", "runtime", "default_runtime")) == NAME,
        )


@dataclass(frozen=True)
class HooksJson:
    what: str = "trusthook.json"
    owned: bool = True

    def text(self, spec: RuntimeSpec) -> str:
        """The hooks.d file, laid out as oci-config/hooks.d/trusthook.json is."""
        hook = spec.hook
        return (
            "{\n"
            '  "version": "1.0.0",\n'
            '  "hook": {\n'
            f'    "path": {json.dumps(hook["path"])},\n'
            f'    "args": {json.dumps(list(hook["args"]))},\n'
            f'    "timeout": {json.dumps(hook["timeout"])}\n'
            "  },\n"
            '  "when": {\n'
            '    "always": true\n'
            "  },\n"
            '  "stages": ["createRuntime"]\n'
            "}\n"
        )

    def _check_ours(self, text: str) -> None:
        if self.registration(text) is None:
            raise ConflictError(
                f"{self.what} exists and is not trusthook's hook (its hook.args[0] is not"
                f" {HOOK_ARGV0!r}); move it away; trusthook changed nothing"
            )

    def configure(self, text: str | None, spec: RuntimeSpec) -> Edit:
        if text is not None:
            self._check_ours(text)
        new = self.text(spec)
        if new == text:
            return Edit(text=text)
        return Edit(text=new, notes=(f"hook {spec.hook['path']} at createRuntime",))

    def unconfigure(self, text: str | None) -> Edit:
        if text is None:
            return Edit(text=None)
        self._check_ours(text)
        return Edit(text=None, notes=(f"{self.what} removed",))

    def equivalent(self, left: str, right: str) -> bool:
        return left == right

    def empty(self, text: str) -> bool:
        return False

    def registration(self, text: str) -> Registration | None:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return None
        hook = data.get("hook") if isinstance(data, dict) else None
        args = hook.get("args") if isinstance(hook, dict) else None
        if not (isinstance(args, list) and args and args[0] == HOOK_ARGV0):
            return None
        path = hook.get("path") if isinstance(hook, dict) else None
        return Registration(
            program=path if isinstance(path, str) else None,
            args=tuple(str(a) for a in args),
        )
