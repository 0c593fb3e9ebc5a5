"""Unpack an OCI image (encrypted or not) into a root directory, verifying everything on the way.

Order of trust: the manifest (its digest optionally pinned by the caller) pins the config and
every layer blob; the config pins each layer's uncompressed tar (diff_ids). For each layer:
1. encrypted: unwrap its key, then read the whole ciphertext once for its digest and HMAC;
   plain: read the whole blob once for its digest. Nothing is extracted from a blob that fails.
2. stream it again: decrypt, decompress, hash the tar, extract. The tar's digest must be the
   config's diff_id. (The private options' digest is not checked: ocicrypt's callers put
   different things there; see ``crypt.plain_descriptor``. A plain blob is hashed again, in
   case it changed after pass 1.)
Any failure empties the root (the root directory itself stays, it may be a mount point).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jwcrypto import jwk

from trusthook.errors import ImageCryptError, ImageError
from trusthook.image.cipher import LayerCipher, PrivateOptions, check_mac
from trusthook.image.crypt import (
    LayerKey,
    authenticate_layer,
    layer_name,
    public_options,
    unwrap_layer_key,
)
from trusthook.image.layout import Layout
from trusthook.image.model import Descriptor, ImageConfig, LayerType
from trusthook.image.stream import DecryptingReader, LayerStream, decompressing
from trusthook.image.tree import listing, prune
from trusthook.image.unpack import ExtractPolicy, apply_layer

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Unpacked:
    """What was unpacked: the manifest digest, the image config, how many layers were encrypted."""

    manifest_digest: str
    config: ImageConfig
    encrypted_layers: int


KeySource = Callable[[Descriptor, str], LayerKey]
"""Finds an encrypted layer's key: unwrapped with local keys, or released by the server."""


def local_keys(keys: Sequence[jwk.JWK]) -> KeySource:
    """Unwrap each layer's key with one of ``keys`` (private keys the caller holds)."""
    return lambda desc, what: unwrap_layer_key(desc, keys, what)


def released_keys(released: Mapping[str, bytes]) -> KeySource:
    """Use the private options the attestation server released, by encrypted layer digest."""

    def find(desc: Descriptor, what: str) -> LayerKey:
        options = released.get(desc.digest)
        if options is None:
            raise ImageCryptError(f"{what}: the server released no key for this layer")
        return LayerKey(
            private=PrivateOptions.from_json(options), public=public_options(desc, what)
        )

    return find


@dataclass(frozen=True, kw_only=True)
class _Plan:
    desc: Descriptor
    kind: LayerType
    key: LayerKey | None
    diff_id: str
    what: str


def unpack_image(
    layout: Layout,
    ref: str | None,
    root: Path,
    *,
    keys: KeySource,
    policy: ExtractPolicy,
    pinned_manifest: str | None = None,
    pinned_by: str = "the policy",
    runtime_entries: bool = False,
) -> Unpacked:
    """Unpack ``layout:ref`` into ``root``; empty it again on any failure.

    ``pinned_manifest``: the only manifest digest accepted (``pinned_by`` says whose pin it is
    in the refusal). ``root`` must be empty, unless ``runtime_entries``: then what is in it
    already are mount points the runtime made (``/proc``, ``/data``, ``/etc/hosts``...): they
    are protected, so layer entries for those paths are skipped (the mounts cover them in the
    container anyway) and no whiteout removes them or what holds them; a layer could otherwise
    remove a mount point and show the container its own file instead of the mount. A failure is
    raised as it was, after the root is emptied (a failure to empty it is logged)."""
    keep = existing_entries(root) if runtime_entries else frozenset()
    if not runtime_entries and any(root.iterdir()):
        raise ImageError(f"unpack target {root} is not empty")
    try:
        return _unpack(layout, ref, root, keys, policy, pinned_manifest, pinned_by, keep)
    except BaseException:
        try:
            empty_directory(root)
        except ImageError as e:
            log.error("%s", e)
        raise


def _unpack(  # noqa: PLR0917 - the private body of unpack_image, same arguments
    layout: Layout,
    ref: str | None,
    root: Path,
    keys: KeySource,
    policy: ExtractPolicy,
    pinned_manifest: str | None,
    pinned_by: str,
    keep: frozenset[str],
) -> Unpacked:
    desc, manifest = layout.manifest(ref)
    if pinned_manifest is not None and desc.digest != pinned_manifest:
        raise ImageError(
            f"image manifest digest is {desc.digest}, expected {pinned_manifest} ({pinned_by})"
        )
    config = ImageConfig.parse(layout.read_blob(manifest.config))
    if len(config.diff_ids) != len(manifest.layers):
        raise ImageError(
            f"the manifest has {len(manifest.layers)} layers, "
            f"the config {len(config.diff_ids)} diff_ids"
        )
    plans = []
    for i, (layer, diff_id) in enumerate(zip(manifest.layers, config.diff_ids, strict=True)):
        kind = LayerType.parse(layer.media_type)
        what = layer_name(i, layer)
        key = keys(layer, what) if kind.encrypted else None
        plans.append(_Plan(desc=layer, kind=kind, key=key, diff_id=diff_id, what=what))
    for plan in plans:  # pass 1: nothing is extracted before every blob is authenticated
        if plan.key is not None:
            authenticate_layer(layout, plan.desc, plan.key, plan.what)
        else:
            layout.verify_blob(plan.desc)
    for plan in plans:
        _extract(layout, plan, root, policy, keep)
    return Unpacked(
        manifest_digest=desc.digest,
        config=config,
        encrypted_layers=sum(1 for p in plans if p.key is not None),
    )


def _extract(
    layout: Layout, plan: _Plan, root: Path, policy: ExtractPolicy, keep: frozenset[str]
) -> None:
    cipher = LayerCipher(plan.key.private, encrypt=False) if plan.key else None
    with layout.open_blob(plan.desc) as f:
        blob = DecryptingReader(f, cipher)
        with LayerStream(decompressing(blob, plan.kind.compression)) as tar:
            try:
                apply_layer(root, tar, policy, keep=keep)
                diff_id = tar.drain()
            except ImageError as e:
                raise type(e)(f"{plan.what}: {e}") from None
    # The blob may have changed since pass 1: check it again (the diff_id check below would
    # catch a changed plaintext too, but name the cause less well).
    if cipher is not None and plan.key is not None:
        check_mac(cipher.finalize(), plan.key.public.hmac, plan.what)
    elif blob.digest() != plan.desc.digest:
        raise ImageError(f"{plan.what}: the blob changed while it was read")
    if diff_id != plan.diff_id:
        raise ImageError(
            f"{plan.what}: the uncompressed tar's digest is {diff_id}, "
            f"the config's diff_id is {plan.diff_id}"
        )


def existing_entries(root: Path) -> frozenset[str]:
    """Paths (relative to ``root``) of everything already in ``root``, directories included
    (symlinks are not followed)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        found.update(str(rel / name) if str(rel) != "." else name for name in filenames + dirnames)
    return frozenset(found)


def empty_directory(root: Path) -> None:
    """Remove everything inside ``root``, at any depth, without following symlinks; keep
    ``root`` itself (it may be a mount point). An ImageError if that fails."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            prune(fd, listing(fd), "", None)
        finally:
            os.close(fd)
    except OSError as e:
        raise ImageError(f"cannot empty {root}: {e.strerror or e}") from e
