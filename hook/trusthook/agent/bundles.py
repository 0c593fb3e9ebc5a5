"""What the agent does to a bundle before the real runtime creates it, asked by
``trusthook-runtime`` (op ``prepare``, docs/api.md §3.4).

The hook: on ``create``, ``run`` and ``restore`` trusthook's own ``createRuntime`` hook entry is
written into config.json (every other field kept, the file replaced atomically, its mode kept);
any other entry for the hook's program goes.

The memory-backed root: a container is from an encrypted image when its config.json names an
OCI layout in the ``org.trusthook.image.layout`` annotation, or when its rootfs is a *sealed*
image (it holds ``/.trusthook/sealed/oci-layout``; see ``trusthook image seal``). Then, before
the runtime creates it, a private tmpfs is mounted at ``<image_roots>/<container id>`` and
config.json's ``root.path`` points at it (the sealed layout's path goes into the annotation); the
shim has made that directory, exclusively, before it asked.
The hook decrypts into that tmpfs. The shim removes it (``native/trusthook_runtime.c``) when
the container is deleted, when ``create`` fails, and when an attached ``run`` returns: no
plaintext outlives its container. A restore of such a container is refused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import stat
import sys
from pathlib import Path
from typing import Any

from trusthook.common.config import Config
from trusthook.common.files import write_atomic
from trusthook.common.jsonobject import parse_object
from trusthook.common.oci import IMAGE_LAYOUT_ANNOTATION, check_container_id
from trusthook.errors import RuntimeShimError

SEALED_LAYOUT = ".trusthook/sealed"
MNT_DETACH = 2
MS_PRIVATE = 1 << 18
HOOK_STAGE = "createRuntime"


def resolve(program: str, what: str) -> str:
    """An absolute path for ``program`` (a path, or a name looked up in PATH) that is an
    executable file; RuntimeShimError otherwise."""
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


def check_container_name(value: str) -> str:
    """The container id, refused if it could not name a directory under the roots."""
    checked = check_container_id(value)
    if checked in (".", ".."):
        raise RuntimeShimError(f"container id {checked!r} is not a valid name")
    return checked


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _mount_tmpfs(target: Path) -> None:
    """Mount a private tmpfs: no mount the runtime makes inside the container can propagate
    back into it, so the agent, which works in this namespace, sees only the tmpfs."""
    libc, path = _libc(), os.fsencode(target)
    if libc.mount(b"tmpfs", path, b"tmpfs", 0, b"mode=0755") != 0:
        err = ctypes.get_errno()
        raise RuntimeShimError(f"cannot mount a tmpfs at {target}: {os.strerror(err)}")
    if libc.mount(None, path, None, MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        raise RuntimeShimError(f"cannot make the tmpfs at {target} private: {os.strerror(err)}")


def _read_spec(config_path: Path) -> tuple[dict[str, Any], int]:
    """config.json's object and its file mode."""
    try:
        raw = config_path.read_bytes()
        mode = os.stat(config_path).st_mode & 0o7777
    except OSError as e:
        raise RuntimeShimError(f"cannot read {config_path}: {e.strerror}") from e
    return parse_object(raw, str(config_path), RuntimeShimError), mode


def prepare_bundle(
    config_path: Path, bundle: str, container_id: str, roots: Path, entry: dict[str, Any]
) -> Path | None:
    """Add the hook ``entry`` to config.json and, for a container from an encrypted image,
    mount its tmpfs root under ``roots`` and point ``root.path`` at it; config.json is read
    once and replaced atomically (mode kept) only if it changed. The tmpfs root, or None."""
    spec, mode = _read_spec(config_path)
    changed = add_hook(spec, entry, config_path)
    layout = encrypted_layout(spec, bundle, config_path)
    if layout is None:
        if changed:
            write_spec(config_path, spec, mode)
        return None
    root = roots / container_id
    _check_made(root)
    try:
        _mount_tmpfs(root)
        spec.setdefault("annotations", {})[IMAGE_LAYOUT_ANNOTATION] = layout
        spec["root"]["path"] = str(root)
        write_spec(config_path, spec, mode)
    except BaseException:
        release_root(root)
        raise
    return root


def _check_made(root: Path) -> None:
    """Refuse unless ``root`` is the empty directory trusthook-runtime made, exclusively, before
    it asked (so that it removes the root also when no answer reaches it)."""
    try:
        st = os.lstat(root)
        empty = not os.listdir(root) if stat.S_ISDIR(st.st_mode) else False
    except OSError as e:
        raise RuntimeShimError(
            f"{root}: {e.strerror}; trusthook-runtime makes it before it asks for a container"
            " from an encrypted image"
        ) from e
    if not empty or st.st_uid != 0 or os.path.ismount(root):
        raise RuntimeShimError(
            f"{root} is not the empty directory trusthook-runtime makes before it asks; refusing"
            " to mount a root there"
        )


def prepare_restore(config_path: Path, bundle: str, entry: dict[str, Any]) -> None:
    """Add the hook ``entry`` to a restored bundle's config.json, as for ``create`` (runc runs
    the createRuntime hooks of a restore, with OCI status ``stopped``). A container from an
    encrypted image is refused: its checkpoint held its memory, and its root, in plaintext
    (encrypted checkpoints, docs/policy.md §8 point 4, are not built)."""
    spec, mode = _read_spec(config_path)
    if encrypted_layout(spec, bundle, config_path) is not None:
        raise RuntimeShimError(
            f"{config_path} names an encrypted image, and its checkpoint would hold its memory"
            " in plaintext (encrypted checkpoints are not built)"
        )
    if add_hook(spec, entry, config_path):
        write_spec(config_path, spec, mode)


def encrypted_layout(spec: dict[str, Any], bundle: str, config_path: Path) -> str | None:
    """The encrypted image's layout: the annotation's, or a sealed rootfs's; None if neither."""
    annotations = spec.get("annotations")
    annotations = {} if annotations is None else annotations
    root_spec = spec.get("root")
    if not isinstance(annotations, dict):
        raise RuntimeShimError(f"{config_path}: 'annotations' must be an object")
    sealed = None
    if isinstance(root_spec, dict):
        sealed = Path(bundle, str(root_spec.get("path", "rootfs"))) / SEALED_LAYOUT
    layout = annotations.get(IMAGE_LAYOUT_ANNOTATION)
    if layout is None and sealed is not None and (sealed / "oci-layout").is_file():
        layout = str(sealed)
    if layout is not None and not isinstance(root_spec, dict):
        raise RuntimeShimError(f"{config_path}: 'root' must be an object")
    return None if layout is None else str(layout)


def write_spec(config_path: Path, spec: dict[str, Any], mode: int) -> None:
    """Replace ``config_path`` with ``spec`` atomically, keeping ``mode``. Not fsync'd: the
    runtime must never read half a file (the rename sees to that), but a bundle does not outlive
    a crash's consequences (an engine creates its containers again, through the shim), and the
    two fsyncs cost ~12 ms of every start."""
    try:
        write_atomic(config_path, json.dumps(spec).encode(), mode, durable=False)
    except OSError as e:
        raise RuntimeShimError(f"cannot write {config_path}: {e.strerror}") from e


def own_hook_entry(config: Config) -> dict[str, Any]:
    """The hook entry the agent writes into every config.json on this host (and expects): the
    configured hook, else the one installed beside the Python running trusthook, resolved to
    an executable file."""
    program = config.hook_path or Path(sys.executable).parent / "trusthook-hook"
    return hook_entry(config, Path(resolve(str(program), "trusthook hook")))


def hook_entry(config: Config, hook_path: Path) -> dict[str, Any]:
    return {
        "path": str(hook_path),
        "args": ["trusthook-hook", *config.hook_args, "--stage", HOOK_STAGE],
        "timeout": math.ceil(config.hook_timeout),  # never shorter than the hook's own wait
    }


def add_hook(spec: dict[str, Any], entry: dict[str, Any], config_path: Path) -> bool:
    """Make ``entry`` the one hook of ``spec`` at its path: any other entry for the same
    program, in any stage and with any arguments (an ``--audit`` or a ``--socket`` to another
    agent), is removed, and ``entry`` goes last in createRuntime. True if ``spec`` changed."""
    hooks = spec.setdefault("hooks", {})
    if not isinstance(hooks, dict):
        raise RuntimeShimError(f"{config_path}: 'hooks' must be an object")
    for stage, entries in hooks.items():
        if not isinstance(entries, list):
            raise RuntimeShimError(f"{config_path}: 'hooks.{stage}' must be an array")
    ours = [
        (stage, h)
        for stage, entries in hooks.items()
        for h in entries
        if isinstance(h, dict) and h.get("path") == entry["path"]
    ]
    stage_entries = hooks.setdefault(HOOK_STAGE, [])
    if ours == [(HOOK_STAGE, entry)] and stage_entries[-1] == entry:
        return False
    for stage, entries in hooks.items():
        hooks[stage] = [
            h for h in entries if not (isinstance(h, dict) and h.get("path") == entry["path"])
        ]
    hooks[HOOK_STAGE].append(entry)
    return True


def release_root(root: Path) -> None:
    """Unmount (detached: a running container keeps its own view) and remove ``root``."""
    if not root.exists():
        return
    if os.path.ismount(root) and _libc().umount2(os.fsencode(root), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise RuntimeShimError(f"cannot unmount {root}: {os.strerror(err)}")
    root.rmdir()
