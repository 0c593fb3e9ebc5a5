"""Encrypt and decrypt the layers of an OCI image in a layout, as ocicrypt (and skopeo) do.

Encryption streams each plain layer blob through AES-256-CTR once, checking the blob against its
descriptor's digest as it goes. Decryption never releases plaintext from unauthenticated
ciphertext: a first pass checks the ciphertext blob's digest (pinned by the manifest) and the HMAC,
a second pass decrypts. What the plaintext must be is pinned by the config's diff_ids, which
unpacking checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from jwcrypto import jwk

from trusthook.common.digest import digest_string
from trusthook.errors import ImageCryptError, ImageError
from trusthook.image.cipher import (
    Authenticator,
    LayerCipher,
    PrivateOptions,
    PublicOptions,
    check_mac,
)
from trusthook.image.keywrap import Recipient, unwrap, wrap
from trusthook.image.layout import CHUNK, Layout, check_blob
from trusthook.image.model import (
    ANNOTATION_JWE,
    ANNOTATION_PUBOPTS,
    ENCRYPTION_ANNOTATION_PREFIX,
    Descriptor,
    LayerType,
)


@dataclass(frozen=True, kw_only=True)
class LayerKey:
    """An encrypted layer's unwrapped options, authenticated against its pubopts HMAC later."""

    private: PrivateOptions
    public: PublicOptions


def layer_name(index: int, desc: Descriptor) -> str:
    """How errors name a layer."""
    return f"layer {index} ({desc.digest[:19]})"


def encrypt_image(
    source: Layout,
    source_ref: str | None,
    dest: Layout,
    dest_ref: str | None,
    recipients: Sequence[Recipient],
    *,
    select: Callable[[int], bool] = lambda _: True,
) -> Descriptor:
    """Encrypt the selected plain layers of an image to ``recipients``; the new manifest."""
    if not recipients:
        raise ImageCryptError("encryption needs at least one recipient key (--recipient)")
    _, manifest = source.manifest(source_ref)
    dest.copy_blob(source, manifest.config)
    layers = []
    for i, desc in enumerate(manifest.layers):
        kind = LayerType.parse(desc.media_type)
        if kind.encrypted or not select(i):
            dest.copy_blob(source, desc)
            layers.append(desc)
        else:
            layers.append(_encrypt_layer(source, dest, desc, recipients, layer_name(i, desc)))
    return dest.add_manifest(manifest.with_layers(tuple(layers)), dest_ref)


def _encrypt_layer(
    source: Layout, dest: Layout, desc: Descriptor, recipients: Sequence[Recipient], what: str
) -> Descriptor:
    options = PrivateOptions.generate(desc.digest)
    cipher = LayerCipher(options, encrypt=True)
    plain = hashlib.sha256()
    size = 0
    with source.open_blob(desc) as f, dest.blob_writer() as out:
        while chunk := f.read(CHUNK):
            plain.update(chunk)
            size += len(chunk)
            out.write(cipher.update(chunk))
        try:
            check_blob(desc, size, digest_string(plain.digest()))
        except ImageError as e:
            raise ImageError(f"{what}: {e}") from None
        mac = cipher.finalize()
    annotations = dict(desc.annotations)
    annotations[ANNOTATION_JWE] = wrap(options.to_json(), recipients)
    annotations[ANNOTATION_PUBOPTS] = PublicOptions(hmac=mac).to_annotation()
    kind = LayerType.parse(desc.media_type)
    return desc.replace(
        media_type=LayerType(compression=kind.compression, encrypted=True).media_type,
        digest=out.digest,
        size=out.size,
        annotations=annotations,
    )


def public_options(desc: Descriptor, what: str) -> PublicOptions:
    """An encrypted layer's public options (cipher and HMAC) from its annotation."""
    pubopts = desc.annotations.get(ANNOTATION_PUBOPTS)
    if pubopts is None:
        raise ImageCryptError(f"{what}: no {ANNOTATION_PUBOPTS} annotation")
    return PublicOptions.from_annotation(pubopts)


def unwrap_layer_key(desc: Descriptor, keys: Sequence[jwk.JWK], what: str) -> LayerKey:
    """Unwrap an encrypted layer's private options with any of ``keys``."""
    wrapped = desc.annotations.get(ANNOTATION_JWE)
    if wrapped is None:
        raise ImageCryptError(f"{what}: no {ANNOTATION_JWE} annotation (only JWE is supported)")
    public = public_options(desc, what)
    private = PrivateOptions.from_json(unwrap(wrapped, keys, what))
    return LayerKey(private=private, public=public)


def authenticate_layer(layout: Layout, desc: Descriptor, key: LayerKey, what: str) -> None:
    """Pass 1: the ciphertext blob's size and digest (manifest-pinned) and its HMAC."""
    mac = Authenticator(key.private)
    hasher = hashlib.sha256()
    size = 0
    with layout.open_blob(desc) as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
            mac.update(chunk)
            size += len(chunk)
    try:
        check_blob(desc, size, digest_string(hasher.digest()))
    except ImageError as e:
        raise ImageError(f"{what}: {e}") from None
    mac.verify(key.public.hmac, what)


def decrypted_chunks(layout: Layout, desc: Descriptor, key: LayerKey, what: str) -> Iterator[bytes]:
    """Pass 2: the plaintext blob in chunks (only after ``authenticate_layer``). The HMAC is
    checked again at the end, in case the blob changed since pass 1: the caller must discard
    what it got if this raises."""
    cipher = LayerCipher(key.private, encrypt=False)
    with layout.open_blob(desc) as f:
        while chunk := f.read(CHUNK):
            yield cipher.update(chunk)
    check_mac(cipher.finalize(), key.public.hmac, what)


def plain_descriptor(desc: Descriptor, digest: str, size: int) -> Descriptor:
    """The descriptor of a decrypted layer: its plain media type, digest and size.

    The private options' ``digest`` is not used: ocicrypt stores whatever digest its caller
    passes (containers/image passes the uncompressed blob's when it compresses on the fly).
    """
    kind = LayerType.parse(desc.media_type)
    return desc.replace(
        media_type=LayerType(compression=kind.compression, encrypted=False).media_type,
        digest=digest,
        size=size,
        annotations={
            k: v
            for k, v in desc.annotations.items()
            if not k.startswith(ENCRYPTION_ANNOTATION_PREFIX)
        },
    )


def decrypt_image(
    source: Layout,
    source_ref: str | None,
    dest: Layout,
    dest_ref: str | None,
    keys: Sequence[jwk.JWK],
) -> Descriptor:
    """Decrypt every encrypted layer of an image into ``dest``; the new manifest.

    Every layer's key is unwrapped and its ciphertext authenticated before any plaintext is
    written; if anything fails after that, the blobs this call added to ``dest`` are removed
    again (``dest``'s index.json is only written at the end)."""
    _, manifest = source.manifest(source_ref)
    keyed = []
    for i, desc in enumerate(manifest.layers):
        what = layer_name(i, desc)
        key = None
        if LayerType.parse(desc.media_type).encrypted:
            key = unwrap_layer_key(desc, keys, what)
            authenticate_layer(source, desc, key, what)
        keyed.append((desc, key, what))
    added: list[str] = []
    try:
        if dest.copy_blob(source, manifest.config):
            added.append(manifest.config.digest)
        layers = []
        for desc, key, what in keyed:
            if key is None:
                if dest.copy_blob(source, desc):
                    added.append(desc.digest)
                layers.append(desc)
                continue
            with dest.blob_writer() as out:
                for chunk in decrypted_chunks(source, desc, key, what):
                    out.write(chunk)
            if out.created:
                added.append(out.digest)
            layers.append(plain_descriptor(desc, out.digest, out.size))
        return dest.add_manifest(manifest.with_layers(tuple(layers)), dest_ref)
    except BaseException:
        for digest in added:
            dest.blob_path(digest).unlink(missing_ok=True)
        raise
