"""``trusthook image seal``: an encrypted OCI image wrapped into an ordinary image for Docker.

The sealed image has one plain layer holding the encrypted image as an OCI layout at
``/.trusthook/sealed`` (its blobs stay encrypted) and the real image's entrypoint, cmd, env,
working directory and user. ``docker load`` takes it (``docker save`` format); run with
``--runtime trusthook``, the shim sees the sealed layout in the rootfs, mounts a tmpfs root
and the hook decrypts the real image into it. Without trusthook it runs nothing useful: the
rootfs holds only ciphertext.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path
from typing import IO, Any, cast

from trusthook.common.digest import digest_string
from trusthook.errors import ImageError
from trusthook.image.layout import Layout
from trusthook.image.model import ImageConfig

SEALED_DIR = ".trusthook/sealed"
SEALED_LABEL = "org.trusthook.sealed.manifest"
_NUMERIC_USER = re.compile(r"\d+(:\d+)?")
_MTIME = 0


def _check_user(user: str) -> None:
    if user and not _NUMERIC_USER.fullmatch(user):
        raise ImageError(
            f"the image's user {user!r} is a name: Docker would look it up in the sealed"
            " rootfs, which holds only ciphertext; rebuild the image with a numeric uid[:gid]"
        )


class _HashingWriter:
    """Counts and hashes what a tarfile writes (the layer's diff_id)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.hasher.update(data)
        self.size += len(data)
        return len(data)


def _add_dir(tf: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = _MTIME
    tf.addfile(info)


def _add_file(tf: tarfile.TarFile, name: str, size: int, data: IO[bytes]) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = _MTIME
    tf.addfile(info, data)


def _layer(layout: Layout, ref: str | None, out: IO[bytes]) -> str:
    """Write the sealed layer tar to ``out``; its diff_id. Every blob is verified first."""
    desc, manifest = layout.manifest(ref)
    blobs = [manifest.config, *manifest.layers]
    for blob in blobs:
        layout.verify_blob(blob)
    writer = _HashingWriter(out)
    manifest_bytes = layout.read_blob(desc)
    index = json.dumps(
        {"schemaVersion": 2, "manifests": [dict(desc.raw, annotations={})]},
        separators=(",", ":"),
    ).encode()
    # Stream mode only ever calls write(); the cast satisfies tarfile's stub.
    stream = cast(IO[bytes], writer)
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for d in (".trusthook", SEALED_DIR, f"{SEALED_DIR}/blobs", f"{SEALED_DIR}/blobs/sha256"):
            _add_dir(tf, d)
        for name, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", index),
            (f"blobs/sha256/{desc.digest.removeprefix('sha256:')}", manifest_bytes),
        ):
            _add_file(tf, f"{SEALED_DIR}/{name}", len(data), io.BytesIO(data))
        for blob in blobs:
            with layout.open_blob(blob) as f:
                name = f"{SEALED_DIR}/blobs/sha256/{blob.digest.removeprefix('sha256:')}"
                _add_file(tf, name, blob.size, f)
    return digest_string(writer.hasher.digest())


def seal_image(layout: Layout, ref: str | None, tag: str, output: Path) -> str:
    """Write a ``docker load`` archive of the sealed image named ``tag``; its image id."""
    desc, manifest = layout.manifest(ref)
    config = ImageConfig.parse(layout.read_blob(manifest.config))
    _check_user(config.user)
    if ":" not in tag.rsplit("/", 1)[-1]:
        tag += ":latest"
    tmp = output.with_name(output.name + ".partial")
    try:
        with tmp.open("wb") as out, tarfile.open(fileobj=out, mode="w") as archive:
            scratch = output.with_name(output.name + ".layer")
            try:
                with scratch.open("w+b") as layer:
                    diff_id = _layer(layout, ref, layer)
                    size = layer.tell()
                    layer.seek(0)
                    image_config = _docker_config(config, diff_id, desc.digest)
                    config_bytes = json.dumps(image_config, separators=(",", ":")).encode()
                    image_id = hashlib.sha256(config_bytes).hexdigest()
                    layer_name = f"{diff_id.removeprefix('sha256:')}/layer.tar"
                    _add_file(archive, layer_name, size, layer)
            finally:
                scratch.unlink(missing_ok=True)
            _add_file(archive, f"{image_id}.json", len(config_bytes), io.BytesIO(config_bytes))
            docker_manifest = json.dumps(
                [{"Config": f"{image_id}.json", "RepoTags": [tag], "Layers": [layer_name]}]
            ).encode()
            _add_file(archive, "manifest.json", len(docker_manifest), io.BytesIO(docker_manifest))
        tmp.replace(output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return "sha256:" + image_id


def _docker_config(config: ImageConfig, diff_id: str, manifest: str) -> dict[str, Any]:
    process: dict[str, Any] = {
        "Env": list(config.env),
        "Entrypoint": list(config.entrypoint) or None,
        "Cmd": list(config.cmd) or None,
        "WorkingDir": config.working_dir,
        "User": config.user,
        "Labels": {SEALED_LABEL: manifest},
    }
    return {
        "architecture": config.raw.get("architecture", "amd64"),
        "os": config.raw.get("os", "linux"),
        "config": process,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "created": "1970-01-01T00:00:00Z",
    }
