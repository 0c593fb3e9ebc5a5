"""Shared helpers for the encrypted-image tests: keys, a layered test image, skopeo and umoci."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

from trusthook._devenv.ociimage import Entry, busybox_entries, tar_bytes
from trusthook.image.layout import Layout
from trusthook.image.model import LAYER_TAR

D, F, L, H = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def layered_tars() -> list[bytes]:
    """Three layers: a busybox root; whiteouts, an opaque directory and changes; type swaps."""
    base = [
        *busybox_entries(),
        Entry(name="bin/hardlinked", kind=H, linkname="bin/busybox"),
        Entry(name="etc/app.conf", data=b"secret=1\n", mode=0o600),
        Entry(name="opt/", kind=D, mode=0o755),
        Entry(name="opt/data/", kind=D, mode=0o750, uid=1000, gid=1000),
        Entry(name="opt/data/a", data=b"a" * 5000, uid=1000, gid=1000),
        Entry(name="opt/data/b", data=b"b"),
        Entry(name="var/", kind=D, mode=0o755),
        Entry(name="var/lib/", kind=D, mode=0o755),
        Entry(name="var/lib/gone/", kind=D, mode=0o755),
        Entry(name="var/lib/gone/deep", data=b"deep"),
        Entry(name="usr/", kind=D, mode=0o755),
        Entry(name="usr/share/", kind=D, mode=0o755),
        Entry(name="usr/share/doc/", kind=D, mode=0o755),
        Entry(name="usr/share/doc/readme", data=b"doc"),
        Entry(name="srv", data=b"a file, later a directory"),
    ]
    changes = [
        Entry(name="etc/.wh.app.conf"),
        Entry(name="var/lib/.wh.gone"),
        Entry(name="opt/data/.wh..wh..opq"),
        Entry(name="opt/data/new", data=b"new", mode=0o640),
        Entry(
            name="etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n"
        ),
        Entry(name="usr/bin/", kind=D, mode=0o755),
        Entry(name="usr/bin/env", kind=L, linkname="/bin/busybox"),
    ]
    swaps = [
        Entry(name="usr/share/doc", data=b"a directory, now a file"),
        Entry(name="srv/", kind=D, mode=0o711),
        Entry(name="srv/www", data=os.urandom(200_000), mode=0o644),
    ]
    return [tar_bytes(base), tar_bytes(changes), tar_bytes(swaps)]


def skopeo(*args: str) -> None:
    """Run skopeo quietly; a failure shows its stderr."""
    result = subprocess.run(
        ["skopeo", "copy", "-q", *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def umoci_rootfs(layout: Path, ref: str, bundle: Path) -> Path:
    """``umoci unpack`` of ``layout:ref``; the rootfs directory."""
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{ref}", str(bundle)],
        check=True,
        capture_output=True,
        text=True,
    )
    return bundle / "rootfs"


def zstd_layers_to_tar(layout_dir: Path, ref: str) -> None:
    """Replace ``layout:ref`` by the same image with its zstd layers decompressed (zstd -dc)."""
    layout = Layout.open(layout_dir)
    _, manifest = layout.manifest(ref)
    layers = []
    for desc in manifest.layers:
        if not desc.media_type.endswith("+zstd"):
            layers.append(desc)
            continue
        tar = subprocess.run(
            ["zstd", "-dc", str(layout.blob_path(desc.digest))], check=True, capture_output=True
        ).stdout
        digest = layout.write_blob(tar)
        layers.append(
            desc.replace(media_type=LAYER_TAR, digest=digest, size=len(tar), annotations={})
        )
    layout.add_manifest(manifest.with_layers(tuple(layers)), ref)


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything that defines a rootfs except timestamps: type, mode, owner, content, links."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            fields: tuple[object, ...] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
            )
            if stat.S_ISREG(st.st_mode):
                first = inodes.setdefault(st.st_ino, rel)
                fields += (
                    hashlib.sha256(path.read_bytes()).hexdigest(),
                    first if first != rel else "",
                )
            elif stat.S_ISLNK(st.st_mode):
                fields += (os.readlink(path),)
            out[rel] = fields
    return out


def manifest_layers(layout: Path, ref: str) -> list[str]:
    """The layer digests of ``layout:ref``."""
    index = json.loads((layout / "index.json").read_text())
    digest = next(
        m["digest"]
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
    )
    manifest = json.loads((layout / "blobs/sha256" / digest.removeprefix("sha256:")).read_text())
    return [layer["digest"] for layer in manifest["layers"]]
