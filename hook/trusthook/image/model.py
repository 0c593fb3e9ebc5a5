"""OCI image data: descriptors, manifests, image configs, media types. Pure: bytes in, objects out.

Only what trusthook needs is modelled; every other field of a descriptor or manifest is kept as it
came (``raw``) so that rewriting a manifest loses nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trusthook.common.digest import is_digest
from trusthook.common.jsonobject import parse_object
from trusthook.errors import ImageError

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
ENCRYPTED_SUFFIX = "+encrypted"
COMPRESSIONS = {"": "none", "+gzip": "gzip", "+zstd": "zstd"}
REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_PUBOPTS = "org.opencontainers.image.enc.pubopts"
ANNOTATION_JWE = "org.opencontainers.image.enc.keys.jwe"
ENCRYPTION_ANNOTATION_PREFIX = "org.opencontainers.image.enc."


def check_digest(value: object, what: str) -> str:
    """``value`` if it is a ``sha256:<64 lowercase hex>`` digest, else an ImageError."""
    if not is_digest(value):
        raise ImageError(f"{what}: expected a sha256:<64 hex> digest, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class LayerType:
    """A layer media type taken apart: its compression and whether it is ocicrypt-encrypted."""

    compression: str  # "none" | "gzip" | "zstd"
    encrypted: bool

    @classmethod
    def parse(cls, media_type: str) -> LayerType:
        """The layer type of ``media_type``; an ImageError for anything but OCI tar layers."""
        rest = media_type
        encrypted = rest.endswith(ENCRYPTED_SUFFIX)
        if encrypted:
            rest = rest.removesuffix(ENCRYPTED_SUFFIX)
        if rest.startswith(LAYER_TAR) and rest.removeprefix(LAYER_TAR) in COMPRESSIONS:
            return cls(compression=COMPRESSIONS[rest.removeprefix(LAYER_TAR)], encrypted=encrypted)
        raise ImageError(
            f"layer media type {media_type!r} is not supported: expected {LAYER_TAR}"
            "[+gzip|+zstd][+encrypted] (convert Docker images to OCI first, e.g. with skopeo)"
        )

    @property
    def media_type(self) -> str:
        """The media type string for this layer type."""
        suffix = next(k for k, v in COMPRESSIONS.items() if v == self.compression)
        return LAYER_TAR + suffix + (ENCRYPTED_SUFFIX if self.encrypted else "")


@dataclass(frozen=True, kw_only=True)
class Descriptor:
    """An OCI content descriptor; ``raw`` keeps every field, including ones not modelled."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str]
    raw: Mapping[str, Any]

    @classmethod
    def parse(cls, data: object, what: str) -> Descriptor:
        """A descriptor from parsed JSON; an ImageError naming ``what`` if it is malformed."""
        if not isinstance(data, dict):
            raise ImageError(f"{what}: a descriptor must be a JSON object")
        media_type = data.get("mediaType")
        size = data.get("size")
        annotations = data.get("annotations", {})
        if not isinstance(media_type, str) or not media_type:
            raise ImageError(f"{what}: mediaType must be a non-empty string")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImageError(f"{what}: size must be a non-negative integer, got {size!r}")
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise ImageError(f"{what}: annotations must map strings to strings")
        digest = check_digest(data.get("digest"), f"{what} digest")
        return cls(
            media_type=media_type, digest=digest, size=size, annotations=annotations, raw=data
        )

    def replace(
        self,
        *,
        media_type: str,
        digest: str,
        size: int,
        annotations: Mapping[str, str],
    ) -> Descriptor:
        """This descriptor with new content fields; other fields (urls, platform) are kept."""
        raw = dict(self.raw)
        raw.update(mediaType=media_type, digest=digest, size=size)
        raw.pop("annotations", None)
        if annotations:
            raw["annotations"] = dict(annotations)
        return Descriptor(
            media_type=media_type, digest=digest, size=size, annotations=annotations, raw=raw
        )


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """An OCI image manifest."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: Mapping[str, Any]

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """The manifest in ``data``; an ImageError if it is not an OCI image manifest."""
        obj = parse_object(data, "image manifest", ImageError)
        if obj.get("schemaVersion") != 2:
            raise ImageError(
                f"image manifest: schemaVersion must be 2, got {obj.get('schemaVersion')!r}"
            )
        if obj.get("mediaType", MANIFEST_TYPE) != MANIFEST_TYPE:
            raise ImageError(
                f"image manifest: mediaType must be {MANIFEST_TYPE}, got {obj.get('mediaType')!r}"
            )
        config = Descriptor.parse(obj.get("config"), "manifest config")
        if config.media_type != CONFIG_TYPE:
            raise ImageError(
                f"manifest config: mediaType must be {CONFIG_TYPE}, got {config.media_type!r}"
            )
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise ImageError("image manifest: layers must be a list")
        parsed = tuple(Descriptor.parse(d, f"manifest layer {i}") for i, d in enumerate(layers))
        for i, layer in enumerate(parsed):
            try:
                LayerType.parse(layer.media_type)
            except ImageError as e:
                raise ImageError(f"manifest layer {i}: {e}") from None
        return cls(config=config, layers=parsed, raw=obj)

    def with_layers(self, layers: tuple[Descriptor, ...]) -> dict[str, Any]:
        """This manifest's JSON object with ``layers`` in place of its own."""
        raw = dict(self.raw)
        raw["layers"] = [dict(layer.raw) for layer in layers]
        return raw


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """What trusthook reads from an image config: the diff_ids and the process defaults."""

    diff_ids: tuple[str, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[str, ...]
    working_dir: str
    user: str
    raw: Mapping[str, Any]

    @classmethod
    def parse(cls, data: bytes) -> ImageConfig:
        """The image config in ``data``; an ImageError if it is malformed."""
        obj = parse_object(data, "image config", ImageError)
        rootfs = obj.get("rootfs")
        if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
            raise ImageError('image config: rootfs must be {"type": "layers", "diff_ids": [...]}')
        diff_ids = rootfs.get("diff_ids")
        if not isinstance(diff_ids, list):
            raise ImageError("image config: rootfs.diff_ids must be a list")
        process = obj.get("config") or {}
        if not isinstance(process, dict):
            raise ImageError("image config: config must be a JSON object")
        return cls(
            diff_ids=tuple(
                check_digest(d, f"image config diff_id {i}") for i, d in enumerate(diff_ids)
            ),
            entrypoint=_strings(process, "Entrypoint"),
            cmd=_strings(process, "Cmd"),
            env=_strings(process, "Env"),
            working_dir=_string(process, "WorkingDir"),
            user=_string(process, "User"),
            raw=obj,
        )


def _strings(process: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = process.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"image config: config.{key} must be a list of strings")
    return tuple(value)


def _string(process: Mapping[str, Any], key: str) -> str:
    value = process.get(key) or ""
    if not isinstance(value, str):
        raise ImageError(f"image config: config.{key} must be a string")
    return value


@dataclass(frozen=True, kw_only=True)
class IndexEntry:
    """One manifest named in an image layout's index.json."""

    descriptor: Descriptor
    ref: str | None


def parse_index(data: bytes) -> tuple[IndexEntry, ...]:
    """The manifests listed in an index.json; an ImageError if it is malformed."""
    obj = parse_object(data, "index.json", ImageError)
    if obj.get("schemaVersion") != 2:
        raise ImageError(f"index.json: schemaVersion must be 2, got {obj.get('schemaVersion')!r}")
    manifests = obj.get("manifests")
    if not isinstance(manifests, list):
        raise ImageError("index.json: manifests must be a list")
    entries = []
    for i, d in enumerate(manifests):
        desc = Descriptor.parse(d, f"index.json manifest {i}")
        entries.append(IndexEntry(descriptor=desc, ref=desc.annotations.get(REF_NAME)))
    return tuple(entries)
