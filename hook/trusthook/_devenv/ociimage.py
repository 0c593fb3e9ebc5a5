"""Build small OCI images for tests, the demo and benchmarks: tar layers from entry lists.

No registry is reachable on our machines, so images are made here: layer tars (with whiteouts
and hostile entries when a test needs them), compressed as asked, written into an OCI layout.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from trusthook.common.digest import sha256_of
from trusthook.image.layout import Layout
from trusthook.image.model import CONFIG_TYPE, MANIFEST_TYPE, Descriptor, LayerType


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One tar entry: a file (``data``), a directory, a symlink, a hardlink or a device."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""
    uid: int = 0
    gid: int = 0
    devmajor: int = 0
    devminor: int = 0


def tar_bytes(entries: Sequence[Entry]) -> bytes:
    """An uncompressed POSIX (pax) tar of ``entries``, in order, with fixed mtimes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.kind
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = 1_700_000_000
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.devmajor, e.devminor
            if e.kind == tarfile.REGTYPE:
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def compress(tar: bytes, compression: str) -> bytes:
    """``tar`` compressed as ``compression`` (none, gzip or zstd)."""
    if compression == "gzip":
        return gzip.compress(tar, compresslevel=1, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(tar)
    return tar


@dataclass(frozen=True, kw_only=True)
class ImageSpec:
    """An image to build: its layer tars, their compression, the process defaults."""

    layers: Sequence[bytes]
    compression: str = "gzip"
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ("/bin/sh",)
    env: Sequence[str] = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin",)
    working_dir: str = "/"
    user: str = ""
    annotations: dict[str, str] = field(default_factory=dict)


def _digest(data: bytes) -> str:
    return sha256_of(data)


def build_image(path: Path, ref: str, spec: ImageSpec) -> Descriptor:
    """Write the image ``spec`` into the layout at ``path`` under ``ref``; its manifest."""
    layout = Layout.open_or_create(path)
    media_type = LayerType(compression=spec.compression, encrypted=False).media_type
    layers = []
    for tar in spec.layers:
        blob = compress(tar, spec.compression)
        layers.append(
            {"mediaType": media_type, "digest": layout.write_blob(blob), "size": len(blob)}
        )
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": list(spec.entrypoint) or None,
            "Cmd": list(spec.cmd) or None,
            "Env": list(spec.env),
            "WorkingDir": spec.working_dir,
            "User": spec.user,
        },
        "rootfs": {"type": "layers", "diff_ids": [_digest(t) for t in spec.layers]},
    }
    config_blob = json.dumps(config).encode()
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": CONFIG_TYPE,
            "digest": layout.write_blob(config_blob),
            "size": len(config_blob),
        },
        "layers": layers,
    }
    if spec.annotations:
        manifest["annotations"] = spec.annotations
    return layout.add_manifest(manifest, ref)


def busybox_entries(busybox: Path = Path("/bin/busybox")) -> list[Entry]:
    """A minimal busybox root: /bin/busybox, /bin/sh, /bin/cat and friends, /etc, /tmp."""
    entries = [
        Entry(name="bin/", kind=tarfile.DIRTYPE, mode=0o755),
        Entry(name="bin/busybox", data=busybox.read_bytes(), mode=0o755),
        Entry(name="etc/", kind=tarfile.DIRTYPE, mode=0o755),
        Entry(name="etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"),
        Entry(name="tmp/", kind=tarfile.DIRTYPE, mode=0o1777),
    ]
    for tool in ("sh", "cat", "ls", "echo", "sleep", "sha256sum", "id", "true"):
        entries.append(Entry(name=f"bin/{tool}", kind=tarfile.SYMTYPE, linkname="busybox"))
    return entries
