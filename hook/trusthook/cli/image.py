"""``trusthook image encrypt|decrypt|inspect|unpack|seal``: ocicrypt images in OCI layouts."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from trusthook.common.config import Config
from trusthook.common.digest import is_digest
from trusthook.errors import ImageCryptError, UsageError
from trusthook.image.choices import Devices, Setuid
from trusthook.image.crypt import LayerKey, decrypt_image, encrypt_image
from trusthook.image.keywrap import load_private_key, load_recipient, recipient_algs
from trusthook.image.layout import Layout, output_layout, parse_reference
from trusthook.image.model import ANNOTATION_JWE, Descriptor, LayerType
from trusthook.image.rootfs import KeySource, local_keys, unpack_image
from trusthook.image.seal import seal_image
from trusthook.image.unpack import ExtractPolicy


def encrypt(args: argparse.Namespace, _config: Config) -> int:
    src, src_ref = parse_reference(args.source)
    dst, dst_ref = parse_reference(args.dest)
    recipients = [load_recipient(r) for r in args.recipient]
    chosen = set(args.layer or [])
    desc = encrypt_image(
        Layout.open(src),
        src_ref,
        Layout.open_or_create(dst),
        dst_ref,
        recipients,
        select=lambda i: not chosen or i in chosen,
    )
    print(desc.digest)
    return 0


def decrypt(args: argparse.Namespace, _config: Config) -> int:
    src, src_ref = parse_reference(args.source)
    dst, dst_ref = parse_reference(args.dest)
    keys = [load_private_key(Path(k)) for k in args.key]
    source = Layout.open(src)
    with output_layout(dst) as dest:
        desc = decrypt_image(source, src_ref, dest, dst_ref, keys)
    print(desc.digest)
    return 0


def inspect(args: argparse.Namespace, _config: Config) -> int:
    src, ref = parse_reference(args.source)
    layout = Layout.open(src)
    desc, manifest = layout.manifest(ref)
    layers: list[dict[str, Any]] = []
    for i, desc_i in enumerate(manifest.layers):
        kind = LayerType.parse(desc_i.media_type)
        wrapped = desc_i.annotations.get(ANNOTATION_JWE)
        layers.append(
            {
                "index": i,
                "digest": desc_i.digest,
                "size": desc_i.size,
                "compression": kind.compression,
                "encrypted": kind.encrypted,
                "recipients": recipient_algs(wrapped, f"layer {i}") if wrapped else [],
            }
        )
    if args.json:
        print(json.dumps({"manifest": desc.digest, "layers": layers}, indent=2))
        return 0
    print(f"manifest {desc.digest}")
    for layer in layers:
        state = "encrypted" if layer["encrypted"] else "plain"
        who = f" to {', '.join(layer['recipients'])}" if layer["recipients"] else ""
        print(
            f"layer {layer['index']} {layer['digest']} {layer['size']} bytes "
            f"{layer['compression']} {state}{who}"
        )
    return 0


def unpack(args: argparse.Namespace, _config: Config) -> int:
    src, ref = parse_reference(args.source)
    if args.pin is not None and not is_digest(args.pin):
        raise UsageError(
            f"--pin must be a manifest digest, sha256:<64 lowercase hex digits>; got {args.pin!r}"
        )
    layout = Layout.open(src)
    keys: KeySource = _no_key
    if args.key:
        keys = local_keys([load_private_key(Path(k)) for k in args.key])
    policy = ExtractPolicy(devices=Devices(args.devices), setuid=Setuid(args.setuid))
    root = Path(args.rootfs)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        done = unpack_image(
            layout, ref, root, keys=keys, policy=policy, pinned_manifest=args.pin, pinned_by="--pin"
        )
    except BaseException:
        if created:  # unpack_image emptied it (or logged why it could not): leave nothing
            with contextlib.suppress(OSError):
                root.rmdir()
        raise
    print(f"unpacked {done.manifest_digest} into {root} ({done.encrypted_layers} encrypted layers)")
    return 0


def _no_key(_desc: Descriptor, what: str) -> LayerKey:
    raise ImageCryptError(
        f"{what} is encrypted and no key was given: pass a recipient's private key with --key"
    )


def seal(args: argparse.Namespace, _config: Config) -> int:
    src, ref = parse_reference(args.source)
    image_id = seal_image(Layout.open(src), ref, args.tag, Path(args.output))
    print(f"{image_id} written to {args.output}: docker load -i {args.output}")
    return 0
