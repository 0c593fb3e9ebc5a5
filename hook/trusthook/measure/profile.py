"""Config digests: the full canonical config.json and the launch profile (docs/measurement.md).

The launch profile keeps every field of an OCI runtime config that changes what the container
can do, or who can see its memory and files, and that stays the same from one instance of a
container to the next: two launches of the same image with the same options give the same
digest on any host and under any engine. Pure: dicts in, bytes out.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Any

from trusthook.common.digest import sha256_of
from trusthook.common.jcs import canonicalize

PROFILE_VERSION = 2

# Files every engine writes per container; their sources live in per-container directories.
PER_INSTANCE_MOUNTS = frozenset(
    {"/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/run/.containerenv"}
)
# Environment variables that engines set to per-container values.
PER_INSTANCE_ENV = frozenset({"HOSTNAME"})
CONTAINER_ID_PLACEHOLDER = "{container-id}"
CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")
# Annotations that runc 1.1 or crun (1.8, and its later handlers) act on; every other
# annotation is engine bookkeeping that no runtime reads (docs/measurement.md 4.5).
RUNTIME_ANNOTATION_PREFIXES = ("run.oci.", "org.systemd.property.")
RUNTIME_ANNOTATIONS = frozenset(
    {"org.criu.config", "io.kubernetes.cri.container-type", "module.wasm.image/variant"}
)
# Named network namespaces (ip-netns, CNI, podman, CRI-O, containerd): one file per namespace,
# named afresh for every pod or container.
NETNS_DIRS = frozenset({"/run/netns", "/var/run/netns"})
NETNS_PLACEHOLDER = "{netns}"
# Docker's network hook: dockerd, re-executed as "libnetwork-setkey", names its own pid and its
# network controller's id, both new at every start of dockerd.
DOCKER_SETKEY = "libnetwork-setkey"
DOCKERD_PID_PLACEHOLDER = "{dockerd-pid}"
CONTROLLER_ID_PLACEHOLDER = "{controller-id}"
_DOCKERD_EXE = re.compile(r"/proc/([1-9][0-9]{0,9})/exe")  # a pid, not a 5000-digit number
_CONTROLLER_ID = re.compile(r"[0-9a-f]{12}|[0-9a-f]{64}")
_CATEGORY = re.compile(r"c([0-9]{1,9})(?:\.c([0-9]{1,9}))?")  # MCS has c0 to c1023


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


def _without_id(value: Any, container_id: str) -> Any:
    """A string with every ``/``-separated component equal to the container id replaced."""
    if not isinstance(value, str) or not container_id:
        return value
    parts = value.split("/")
    return "/".join(CONTAINER_ID_PLACEHOLDER if p == container_id else p for p in parts)


def _mount(mount: Any, container_id: str) -> Any:
    if not isinstance(mount, Mapping):
        return mount
    return {**mount, "source": _without_id(mount.get("source"), container_id)}


def _per_instance(mount: Any) -> bool:
    destination = _obj(mount).get("destination")
    return isinstance(destination, str) and posixpath.normpath(destination) in PER_INSTANCE_MOUNTS


def is_named_netns(ns_type: Any, path: Any) -> bool:
    """Whether a namespace entry joins a named network namespace: type ``network`` and a path
    that is one name directly in /run/netns or /var/run/netns."""
    if ns_type != "network" or not isinstance(path, str):
        return False
    directory, name = posixpath.split(path)
    return directory in NETNS_DIRS and name not in ("", ".", "..")


def _namespace(ns: Any, container_id: str) -> dict[str, Any]:
    """``{"type", "path"}``: path null for a namespace the runtime creates; for a joined one
    the path, the container id replaced, and a named network namespace's name replaced."""
    entry = _obj(ns)
    ns_type, path = entry.get("type"), entry.get("path")
    if not path:
        return {"type": ns_type, "path": None}
    if is_named_netns(ns_type, path):
        return {"type": ns_type, "path": f"{posixpath.dirname(path)}/{NETNS_PLACEHOLDER}"}
    return {"type": ns_type, "path": _without_id(path, container_id)}


def _categories(categories: str) -> int | None:
    """How many MCS categories a category set (``c1,c5.c9``) names; None if it is not one."""
    count = 0
    for item in categories.split(","):
        found = _CATEGORY.fullmatch(item)
        if found is None:
            return None
        low, high = int(found[1]), int(found[2] or found[1])
        if high < low:
            return None
        count += high - low + 1
    return count


def _level(level: str) -> str:
    sensitivity, colon, categories = level.partition(":")
    count = _categories(categories) if colon else None
    return level if count is None else f"{sensitivity}:{{categories={count}}}"


def _label(label: Any) -> Any:
    """An SELinux label with each level's category set replaced by how many categories it has:
    engines pick a fresh pair for every container, while the type, the sensitivity and whether
    a process has none, two or all categories decide what it may reach."""
    if not isinstance(label, str):
        return label
    fields = label.split(":", 3)
    if len(fields) < 4:
        return label
    levels = "-".join(_level(level) for level in fields[3].split("-", 1))
    return ":".join([*fields[:3], levels])


def docker_setkey_pid(stage: str, hook: Any) -> int | None:
    """The dockerd pid named by Docker's network hook: a ``prestart`` entry of exactly
    ``{"path": "/proc/<pid>/exe", "args": ["libnetwork-setkey", "-exec-root=/<dir>", <id>,
    <12 or 64 hex digits>]}``; None for any other entry."""
    if stage != "prestart" or not isinstance(hook, Mapping) or set(hook) != {"path", "args"}:
        return None
    path, args = hook["path"], hook["args"]
    exe = _DOCKERD_EXE.fullmatch(path) if isinstance(path, str) else None
    if (
        exe is None
        or not isinstance(args, list)
        or len(args) != 4
        or not all(isinstance(a, str) for a in args)
        or args[0] != DOCKER_SETKEY
        or not args[1].startswith("-exec-root=/")
        or _CONTROLLER_ID.fullmatch(args[3]) is None
    ):
        return None
    return int(exe[1])


def _hook(stage: str, entry: Any, container_id: str) -> Any:
    if docker_setkey_pid(stage, entry) is not None:
        _, exec_root, target, _ = entry["args"]
        return {
            "path": f"/proc/{DOCKERD_PID_PLACEHOLDER}/exe",
            "args": [
                DOCKER_SETKEY,
                exec_root,
                _without_id(target, container_id),
                CONTROLLER_ID_PLACEHOLDER,
            ],
        }
    if not isinstance(entry, Mapping):
        return entry
    kept = dict(entry)
    if "path" in kept:
        kept["path"] = _without_id(kept["path"], container_id)
    for key in ("args", "env"):
        if isinstance(kept.get(key), list):
            kept[key] = [_without_id(v, container_id) for v in kept[key]]
    return kept


def _hooks(hooks: Any, container_id: str, own_hook: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every stage's hooks in order, minus entries equal to trusthook's own, Docker's network
    hook without dockerd's pid and controller id; stages left empty are dropped (an empty list
    runs nothing)."""
    own = None if own_hook is None else canonicalize(own_hook)
    profile: dict[str, Any] = {}
    for stage, entries in _obj(hooks).items():
        kept = [_hook(stage, h, container_id) for h in _list(entries) if canonicalize(h) != own]
        if kept:
            profile[stage] = kept
    return profile


def _runtime_annotation(name: str) -> bool:
    return name in RUNTIME_ANNOTATIONS or name.startswith(RUNTIME_ANNOTATION_PREFIXES)


def launch_profile(
    config: Mapping[str, Any], container_id: str, *, own_hook: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The launch profile of an OCI runtime config, as a JSON-ready dict. ``own_hook`` is the
    hook entry trusthook-runtime writes on this host (left out: it is trusthook itself)."""
    process = _obj(config.get("process"))
    linux = _obj(config.get("linux"))
    caps = _obj(process.get("capabilities"))
    annotations = _obj(config.get("annotations"))
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
            "selinuxLabel": _label(process.get("selinuxLabel")),
            "rlimits": _sorted(_list(process.get("rlimits"))),
        },
        "root": {"readonly": _obj(config.get("root")).get("readonly", False)},
        "linux": {
            "namespaces": _sorted(
                [_namespace(ns, container_id) for ns in _list(linux.get("namespaces"))]
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
            "mountLabel": _label(linux.get("mountLabel")),
        },
        "mounts": [
            _mount(m, container_id) for m in _list(config.get("mounts")) if not _per_instance(m)
        ],
        "hooks": _hooks(config.get("hooks"), container_id, own_hook),
        "annotations": {
            name: _without_id(value, container_id)
            for name, value in annotations.items()
            if _runtime_annotation(name)
        },
    }


def config_digest(config: Mapping[str, Any]) -> str:
    """Digest of the whole config.json in RFC 8785 canonical form."""
    return sha256_of(canonicalize(config))


def launch_profile_digest(
    config: Mapping[str, Any], container_id: str, *, own_hook: Mapping[str, Any] | None = None
) -> str:
    """Digest of the launch profile in RFC 8785 canonical form."""
    return sha256_of(canonicalize(launch_profile(config, container_id, own_hook=own_hook)))
