"""The host's local image policy, decided before any network call (format: docs/images.md).

TOML, every key optional::

    mode = "enforce"            # or "audit": log what would be refused, refuse nothing
    allow_unencrypted = true    # may containers run from ordinary (unencrypted) images?
    devices = "refuse"          # device nodes in encrypted images' layers: refuse, skip, allow
    setuid = "strip"            # setuid/setgid bits and file capabilities: strip, refuse, keep
    [[image]]                   # an encrypted image this host may run
    manifest = "sha256:..."     # its manifest digest
    name = "payments"           # for messages only

A missing file is the default policy: enforce, unencrypted images allowed, no encrypted image
allowed. Standard library only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from trusthook.common.config import check_keys, read_toml
from trusthook.common.digest import is_digest
from trusthook.errors import ConfigError, PolicyRefusedError
from trusthook.image.choices import Devices, Setuid, choice_values

log = logging.getLogger(__name__)
Choice = TypeVar("Choice", Devices, Setuid)


@dataclass(frozen=True, kw_only=True)
class ImagePolicy:
    """The parsed policy: ``images`` maps each allowed manifest digest to its name."""

    enforce: bool = True
    allow_unencrypted: bool = True
    devices: Devices = Devices.REFUSE
    setuid: Setuid = Setuid.STRIP
    images: Mapping[str, str] = field(default_factory=dict)

    def check(self, *, encrypted: bool, manifest: str | None) -> None:
        """Refuse (PolicyRefusedError) unless this launch is allowed; audit mode only logs."""
        problem = None
        if not encrypted and not self.allow_unencrypted:
            problem = "unencrypted images are not allowed on this host (allow_unencrypted)"
        elif encrypted and manifest not in self.images:
            problem = f"encrypted image {manifest} is not in the host's image policy"
        if problem is None:
            return
        if self.enforce:
            raise PolicyRefusedError(f"image policy: {problem}")
        log.warning("image policy (audit mode, allowed): %s", problem)


def parse_policy(data: Mapping[str, Any], where: str) -> ImagePolicy:
    """An ImagePolicy from parsed TOML; a ConfigError naming the first bad key."""
    check_keys(
        data,
        "",
        ("mode", "allow_unencrypted", "devices", "setuid", "image"),
        f" in image policy{where}",
    )
    devices = _choice(data, "devices", Devices, Devices.REFUSE, where)
    setuid = _choice(data, "setuid", Setuid, Setuid.STRIP, where)
    mode = data.get("mode", "enforce")
    if mode not in ("enforce", "audit"):
        raise ConfigError(f"image policy{where}: mode got {mode!r}, expected enforce or audit")
    allow = data.get("allow_unencrypted", True)
    if not isinstance(allow, bool):
        raise ConfigError(f"image policy{where}: allow_unencrypted must be true or false")
    entries = data.get("image", [])
    if not isinstance(entries, list):
        raise ConfigError(f"image policy{where}: image must be an array of tables: [[image]]")
    images: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) - {"manifest", "name"}:
            raise ConfigError(f"image policy{where}: image[{i}] takes only manifest and name")
        manifest = entry.get("manifest")
        if not isinstance(manifest, str) or not is_digest(manifest):
            raise ConfigError(
                f"image policy{where}: image[{i}].manifest got {manifest!r},"
                " expected sha256:<64 hex>"
            )
        name = entry.get("name", manifest)
        if not isinstance(name, str):
            raise ConfigError(f"image policy{where}: image[{i}].name must be a string")
        images[manifest] = name
    return ImagePolicy(
        enforce=mode == "enforce",
        allow_unencrypted=allow,
        devices=devices,
        setuid=setuid,
        images=images,
    )


def load_policy(path: Path) -> ImagePolicy:
    """The policy in ``path``; the default policy if there is no such file."""
    try:
        data = read_toml(path, "image policy")
    except FileNotFoundError:
        return ImagePolicy()
    return parse_policy(data, f" {path}")


def _choice(
    data: Mapping[str, Any], key: str, kind: type[Choice], default: Choice, where: str
) -> Choice:
    value = data.get(key, default.value)
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(
            f"image policy{where}: {key} got {value!r}, expected one of"
            f" {', '.join(choice_values(kind))}"
        ) from None
