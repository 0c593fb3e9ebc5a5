"""The files ``trusthook runtime configure|unconfigure`` changes, read and written: every file
of an engine is read and its new text computed (``engines``) before anything is written, so a
refusal touches nothing; each file is then replaced atomically (``common.files``), keeping its
mode.

Backups (docs/deploy.md): before configure first adds trusthook to a file of the engine's
(``daemon.json``, ``config.toml``, podman's ``containers.conf``), the file as it was is kept in
``FILE.trusthook-backup``; while the file names trusthook that backup is kept as it is.
Unconfigure takes trusthook out again; when the file is still what configure made of the backup
(nothing else changed since), the backup itself is put back, byte for byte, and removed. A file
configure created (there was none) is removed again when nothing but trusthook's settings was
in it. trusthook's own files (the CRI-O drop-in, the hooks.d file) get no backup: configure
refuses to replace a file that is not trusthook's.
"""

from __future__ import annotations

import difflib
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trusthook.common.config import Config
from trusthook.common.files import sync_directory, write_atomic
from trusthook.errors import EngineConfigError, TrusthookError
from trusthook.hostsetup.choices import Engine
from trusthook.hostsetup.containers_conf import ContainersConf
from trusthook.hostsetup.engines import (
    ContainerdToml,
    CrioDropIn,
    DaemonJson,
    Format,
    HooksJson,
    RuntimeSpec,
)

DEFAULT_CONFIG = {
    Engine.DOCKER: Path("/etc/docker/daemon.json"),
    Engine.CONTAINERD: Path("/etc/containerd/config.toml"),
    Engine.CRIO: Path("/etc/crio/crio.conf.d/50-trusthook.conf"),
    Engine.PODMAN: Path("/etc/containers/containers.conf"),
}
HOOKS_DIR = Path("/etc/containers/oci/hooks.d")  # podman's and CRI-O's (where hooks_dir says)
HOOKS_FILE = "trusthook.json"
BACKUP_SUFFIX = ".trusthook-backup"
NEW_FILE_MODE = 0o644
RELOAD = {
    Engine.DOCKER: "systemctl reload docker (dockerd re-reads its runtimes on SIGHUP)",
    Engine.CONTAINERD: "systemctl restart containerd",
    Engine.CRIO: "systemctl restart crio",
    Engine.PODMAN: "nothing to reload: podman reads containers.conf and hooks.d at every command",
}
# dockerd 20.10's reload keeps a default-runtime the file no longer names, and with the
# runtime itself gone it crashes: taking trusthook out as the default needs a restart
RESTART = {
    **RELOAD,
    Engine.DOCKER: "systemctl restart docker (a reload would keep trusthook"
    " as the default runtime after removing it)",
}


@dataclass(frozen=True)
class EngineFile:
    """One file of an engine's configuration and its format."""

    format: Format
    path: Path

    @property
    def backup(self) -> Path:
        return self.path.with_name(self.path.name + BACKUP_SUFFIX)


def engine_files(
    engine: Engine, *, config: Path | None = None, hooks_dir: Path | None = None
) -> list[EngineFile]:
    """The files configure changes for ``engine``: its configuration (``config``, else the
    default path) and, for podman and CRI-O, the hooks.d file in ``hooks_dir``. podman's
    configuration is its ``containers.conf``, listed after the hooks.d file: configure writes
    the hook before it makes podman read the directory it is in. A symlink is followed: the
    file it points to is the one changed (a hooks directory is named in containers.conf as
    given)."""
    files: list[EngineFile] = []
    if engine is not Engine.PODMAN:
        path = _real(config or DEFAULT_CONFIG[engine])
        files.append(EngineFile(_FORMATS[engine](str(path)), path))
    if engine in (Engine.PODMAN, Engine.CRIO):
        path = _real((hooks_dir or HOOKS_DIR) / HOOKS_FILE)
        files.append(EngineFile(HooksJson(str(path)), path))
    if engine is Engine.PODMAN:
        path = _real(config or DEFAULT_CONFIG[engine])
        directory = os.path.abspath(hooks_dir or HOOKS_DIR)
        fmt = ContainersConf(str(path), hooks_dir=directory, named=config is not None)
        files.append(EngineFile(fmt, path))
    return files


_FORMATS: dict[Engine, Callable[[str], Format]] = {
    Engine.DOCKER: DaemonJson,
    Engine.CONTAINERD: ContainerdToml,
    Engine.CRIO: CrioDropIn,
}


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def runtime_spec(
    config: Config, *, shim: str | None, hook: str | None, default: bool
) -> RuntimeSpec:
    """What to register: the shim (``shim``, else the trusthook-runtime beside the Python
    running trusthook, else the one in PATH) and the hook entry the shim writes into bundles
    (``agent.bundles``; ``hook`` replaces its path). Both must be executable files."""
    from trusthook.agent.bundles import (  # noqa: PLC0415
        hook_entry,
        own_hook_entry,
        resolve,
    )

    if shim is None:
        beside = Path(sys.executable).parent / "trusthook-runtime"
        shim = str(beside) if os.access(beside, os.X_OK) else "trusthook-runtime"
    entry = (
        own_hook_entry(config)
        if hook is None
        else hook_entry(config, Path(resolve(hook, "trusthook hook")))
    )
    return RuntimeSpec(shim=resolve(shim, "trusthook-runtime"), hook=entry, default=default)


@dataclass(frozen=True, kw_only=True)
class Change:
    """What happens to one file: its text before and after (None: no file), the backup
    written first (``backup_from``: the text it holds), and whether the backup goes after."""

    file: EngineFile
    before: str | None
    after: str | None
    notes: tuple[str, ...] = ()
    backup_from: str | None = None
    remove_backup: bool = False
    restart: bool = False  # the engine must be restarted, a reload is not enough

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def diff(self) -> str:
        """A unified diff of the change (empty when there is none)."""
        name = str(self.file.path)
        return "".join(
            difflib.unified_diff(
                (self.before or "").splitlines(keepends=True),
                (self.after or "").splitlines(keepends=True),
                fromfile="/dev/null" if self.before is None else name,
                tofile="/dev/null" if self.after is None else name,
            )
        )


def read_text(path: Path) -> str | None:
    """A configuration file's text, None if there is none; EngineConfigError if it cannot be read
    or is not UTF-8."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise EngineConfigError(
            f"cannot read {path}: {e.strerror}; trusthook changed nothing"
        ) from e
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EngineConfigError(f"{path} is not UTF-8 ({e}); trusthook changed nothing") from None


def plan_configure(files: list[EngineFile], spec: RuntimeSpec) -> list[Change]:
    """Every file's change, computed before any is written."""
    changes = []
    for f in files:
        before = read_text(f.path)
        edit = f.format.configure(before, spec)
        backup_from, remove_backup = None, False
        if edit.text != before and not f.format.owned:
            if before is None:
                remove_backup = f.backup.exists()  # of a file that is gone: stale
            elif f.format.registration(before) is None or not f.backup.exists():
                backup_from = before
        changes.append(
            Change(
                file=f,
                before=before,
                after=edit.text,
                notes=edit.notes,
                backup_from=backup_from,
                remove_backup=remove_backup,
            )
        )
    return changes


def plan_unconfigure(files: list[EngineFile]) -> list[Change]:
    """Every file's change, computed before any is written."""
    changes = []
    for f in files:
        before = read_text(f.path)
        edit = f.format.unconfigure(before)
        after, notes, remove_backup = edit.text, edit.notes, False
        if before is not None and after != before and after is not None and not f.format.owned:
            backup = read_text(f.backup)
            if backup is not None and (after == backup or _made_from(f.format, backup, before)):
                after, remove_backup = backup, True
                notes = (f"restored from {f.backup}, byte for byte",)
            elif backup is None and f.format.empty(after):
                after, notes = None, (*notes, "removed: it held nothing but trusthook's")
            elif backup is not None:
                notes = (*notes, f"{f.backup} kept: the file changed since it was made")
        changes.append(
            Change(
                file=f,
                before=before,
                after=after,
                notes=notes,
                remove_backup=remove_backup,
                restart=edit.restart,
            )
        )
    return changes


def _made_from(fmt: Format, backup: str, current: str) -> bool:
    """Whether ``current`` is what configure makes of ``backup`` (with the shim and default
    ``current`` registers): then nothing else changed since, and the backup is the file
    without trusthook, byte for byte."""
    found = fmt.registration(current)
    if found is None:
        return False
    spec = RuntimeSpec(shim=found.program or "", hook={}, default=found.default)
    try:
        redone = fmt.configure(backup, spec).text
    except TrusthookError:  # the backup no longer parses, or names another trusthook
        return False
    return redone is not None and fmt.equivalent(redone, current)


def apply(changes: list[Change]) -> None:
    """Write the changes: each backup first, then the file, atomically, its mode kept."""
    for change in changes:
        path = change.file.path
        mode = _mode(path)
        if change.backup_from is not None:
            write_atomic(change.file.backup, change.backup_from.encode(), mode)
        if change.changed:
            if change.after is None:
                path.unlink(missing_ok=True)
                sync_directory(path.parent)
            else:
                path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                write_atomic(path, change.after.encode(), mode)
        if change.remove_backup:
            change.file.backup.unlink(missing_ok=True)


def _mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return NEW_FILE_MODE
