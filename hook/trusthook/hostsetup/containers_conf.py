"""podman's ``containers.conf`` for ``trusthook runtime configure``, as a pure ``Format``
(``engines``): podman reads hooks.d files only from the directories ``[engine] hooks_dir``
lists, or, when it sets none, from its defaults (``PODMAN_HOOKS_DIRS``). So the directory the
hooks.d file goes into is appended to ``hooks_dir`` when that is set and leaves it out, and
``hooks_dir`` is set to podman's defaults and that directory when it is not set and the
directory is not a default; otherwise the file is left alone. Edited as text (``tomledit``) so
comments and layout survive, then checked by parsing the result, as containerd's
``config.toml`` is. ``[engine.runtimes]`` is left alone: podman runs trusthook as a hook, not
as a runtime (docs/deploy.md).
"""

from __future__ import annotations

import copy
import os.path
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trusthook.errors import EngineConfigError, UsageError
from trusthook.hostsetup import tomledit
from trusthook.hostsetup.engines import (
    Edit,
    Registration,
    RuntimeSpec,
    check_edit,
    parse_toml,
    put,
    unmark,
)

# podman's hooks directories when containers.conf sets no hooks_dir, in increasing precedence
PODMAN_HOOKS_DIRS = ("/usr/share/containers/oci/hooks.d", "/etc/containers/oci/hooks.d")
ENGINE = ("engine",)


def _same_dir(left: str, right: str) -> bool:
    return os.path.normpath(left) == os.path.normpath(right)


@dataclass(frozen=True)
class ContainersConf:
    """podman's ``containers.conf``, for the hooks.d file in ``hooks_dir`` (an absolute path).
    ``named``: whether the user named this file; a change needed only because ``hooks_dir`` is
    not one of podman's defaults is made only in a file the user named."""

    what: str = "containers.conf"
    owned: bool = False
    hooks_dir: str = PODMAN_HOOKS_DIRS[1]
    named: bool = True

    def _hooks_dirs(self, data: Mapping[str, Any]) -> list[str] | None:
        engine = data.get("engine")
        if engine is not None and not isinstance(engine, dict):
            raise EngineConfigError(
                f"{self.what}: 'engine' is a {type(engine).__name__}, expected a table;"
                " trusthook changed nothing"
            )
        dirs = (engine or {}).get("hooks_dir")
        if dirs is not None and not (
            isinstance(dirs, list) and all(isinstance(d, str) for d in dirs)
        ):
            raise EngineConfigError(
                f"{self.what}: [engine] hooks_dir is {dirs!r}, expected a list of directories"
                " (strings); trusthook changed nothing"
            )
        return dirs

    def configure(self, text: str | None, spec: RuntimeSpec) -> Edit:
        original = text or ""
        data = parse_toml(original, self.what)
        dirs = self._hooks_dirs(data)
        default = any(_same_dir(d, self.hooks_dir) for d in PODMAN_HOOKS_DIRS)
        if dirs is None:
            if default:
                return Edit(text=text)  # podman reads its default directories
            wanted = [*PODMAN_HOOKS_DIRS, self.hooks_dir]
            note = (
                f"hooks_dir set to podman's default directories and {self.hooks_dir} (podman"
                " reads hooks only from the directories it lists)"
            )
        elif any(_same_dir(d, self.hooks_dir) for d in dirs):
            return Edit(text=text)
        else:
            wanted = [*dirs, self.hooks_dir]
            note = (
                f"{self.hooks_dir} added to hooks_dir (podman reads hooks only from the"
                " directories it lists)"
            )
        if not (self.named or default):
            raise UsageError(
                f"--hooks-dir {self.hooks_dir} is not one of podman's default hooks directories"
                f" ({', '.join(PODMAN_HOOKS_DIRS)}): podman reads it only if containers.conf's"
                " [engine] hooks_dir lists it; name the containers.conf your podman reads with"
                f" --config (the system one: {self.what}) and trusthook adds it there;"
                " trusthook changed nothing"
            )
        expected = copy.deepcopy(data)
        put(expected, (*ENGINE, "hooks_dir"), wanted)
        lines = tomledit.lines_of(original)
        header = tomledit.find_table(lines, ENGINE)
        snippet = tomledit.block([(ENGINE, {"hooks_dir": wanted})])
        if header is None:
            new = tomledit.append_block(original, snippet)
        else:
            tomledit.set_key(lines, header, "hooks_dir", wanted)
            new = "".join(lines)
        check_edit(self.what, new, expected, snippet)
        return Edit(text=new, notes=(note,))

    def unconfigure(self, text: str | None) -> Edit:
        if text is None:
            return Edit(text=None)
        before = self._hooks_dirs(parse_toml(text, self.what))
        new, found = unmark(text, self.what)
        if not found:
            return Edit(text=text)
        after = self._hooks_dirs(parse_toml(new, self.what))
        if after is None:
            note = "hooks_dir removed (trusthook had set it)"
        else:
            taken = [d for d in before or [] if d not in after]
            note = f"hooks_dir is {after!r} again" + (f" ({taken[0]} taken out)" if taken else "")
        return Edit(text=new, notes=(note,))

    def equivalent(self, left: str, right: str) -> bool:
        return left == right  # comments and layout are part of what a TOML file says

    def empty(self, text: str) -> bool:
        return not text.strip()

    def registration(self, text: str) -> Registration | None:
        """Not None when trusthook's edit is in the file (it registers no program: podman
        runs the hook the hooks.d file names)."""
        self._hooks_dirs(parse_toml(text, self.what))
        return Registration(program=None) if unmark(text, self.what)[1] else None
