"""Config digests: the full canonical config.json and the launch profile (docs/measurement.md).

The launch profile keeps the security-relevant fields of an OCI runtime config that stay the
same from one instance of a container to the next, so two launches of the same image with the
same options give the same digest on any host and under any engine. Pure: dicts in, bytes out.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from trusthook.common.digest import sha256_of
from trusthook.measure.jcs import canonicalize

PROFILE_VERSION = 1

# Files every engine writes per container; their sources live in per-container directories.
PER_INSTANCE_MOUNTS = frozenset(
    {"/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/run/.containerenv"}
)
# Environment variables that engines set to per-container values.
PER_INSTANCE_ENV = frozenset({"HOSTNAME"})
CONTAINER_ID_PLACEHOLDER = "{container-id}"
CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _sorted(values: list[Any]) -> list[Any]:
    """Sort a list of JSON values by their canonical bytes (order carries no meaning)."""
    return sorted(values, key=canonicalize)


def _env_name(entry: Any) -> str:
    return entry.partition("=")[0] if isinstance(entry, str) else ""


def _env(process: Mapping[str, Any]) -> list[Any]:
    """The environment minus per-instance variables, sorted by name. Engines build it from maps
    (podman's order changes from one launch to the next); the sort is stable, so entries that
    repeat a name keep their relative order, which decides which one a program sees."""
    kept = [e for e in _list(process.get("env")) if _env_name(e) not in PER_INSTANCE_ENV]
    return sorted(kept, key=_env_name)


def _source(source: Any, container_id: str) -> Any:
    """A mount source with every path component equal to the container id replaced."""
    if not isinstance(source, str) or not container_id:
        return source
    parts = source.split("/")
    return "/".join(CONTAINER_ID_PLACEHOLDER if p == container_id else p for p in parts)


def _mount(mount: Any, container_id: str) -> Any:
    if not isinstance(mount, Mapping):
        return mount
    return {**mount, "source": _source(mount.get("source"), container_id)}


def _per_instance(mount: Any) -> bool:
    destination = _obj(mount).get("destination")
    return isinstance(destination, str) and posixpath.normpath(destination) in PER_INSTANCE_MOUNTS


def launch_profile(config: Mapping[str, Any], container_id: str) -> dict[str, Any]:
    """The launch profile of an OCI runtime config, as a JSON-ready dict."""
    process = _obj(config.get("process"))
    linux = _obj(config.get("linux"))
    caps = _obj(process.get("capabilities"))
    return {
        "profileVersion": PROFILE_VERSION,
        "process": {
            "args": process.get("args"),
            "env": _env(process),
            "cwd": process.get("cwd"),
            "user": process.get("user"),
            "capabilities": {s: _sorted(_list(caps.get(s))) for s in CAPABILITY_SETS},
            "noNewPrivileges": process.get("noNewPrivileges", False),
            "apparmorProfile": process.get("apparmorProfile"),
            "rlimits": _sorted(_list(process.get("rlimits"))),
        },
        "root": {"readonly": _obj(config.get("root")).get("readonly", False)},
        "linux": {
            "namespaces": _sorted(
                [
                    {"type": _obj(ns).get("type"), "joined": bool(_obj(ns).get("path"))}
                    for ns in _list(linux.get("namespaces"))
                ]
            ),
            "uidMappings": linux.get("uidMappings"),
            "gidMappings": linux.get("gidMappings"),
            "seccomp": linux.get("seccomp"),
            "maskedPaths": _sorted(_list(linux.get("maskedPaths"))),
            "readonlyPaths": _sorted(_list(linux.get("readonlyPaths"))),
            "devices": _sorted(_list(linux.get("devices"))),
            "deviceCgroup": _obj(linux.get("resources")).get("devices"),
            "sysctl": linux.get("sysctl"),
            "personality": linux.get("personality"),
            "rootfsPropagation": linux.get("rootfsPropagation"),
        },
        "mounts": [
            _mount(m, container_id) for m in _list(config.get("mounts")) if not _per_instance(m)
        ],
    }


def config_digest(config: Mapping[str, Any]) -> str:
    """Digest of the whole config.json in RFC 8785 canonical form."""
    return sha256_of(canonicalize(config))


def launch_profile_digest(config: Mapping[str, Any], container_id: str) -> str:
    """Digest of the launch profile in RFC 8785 canonical form."""
    return sha256_of(canonicalize(launch_profile(config, container_id)))
