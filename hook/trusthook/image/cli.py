"""``trusthook image encrypt|decrypt|inspect|unpack``: ocicrypt images in OCI layouts."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trusthook.image.crypt import decrypt_image, encrypt_image
from trusthook.image.keywrap import load_private_key, load_recipient, recipient_algs
from trusthook.image.layout import Layout, parse_reference
from trusthook.image.model import ANNOTATION_JWE, LayerType
from trusthook.image.rootfs import local_keys, unpack_image
from trusthook.image.seal import seal_image
from trusthook.image.unpack import ExtractPolicy

REFERENCE_HELP = "an OCI layout directory, optionally :REF (skopeo's oci:DIR:REF also works)"


def _cmd_encrypt(args: argparse.Namespace) -> int:
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


def _cmd_decrypt(args: argparse.Namespace) -> int:
    src, src_ref = parse_reference(args.source)
    dst, dst_ref = parse_reference(args.dest)
    keys = [load_private_key(Path(k)) for k in args.key]
    desc = decrypt_image(Layout.open(src), src_ref, Layout.open_or_create(dst), dst_ref, keys)
    print(desc.digest)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
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


def _cmd_unpack(args: argparse.Namespace) -> int:
    src, ref = parse_reference(args.source)
    layout = Layout.open(src)
    keys = [load_private_key(Path(k)) for k in args.key]
    policy = ExtractPolicy(devices=args.devices, setuid=args.setuid)
    root = Path(args.rootfs)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        done = unpack_image(
            layout, ref, root, keys=local_keys(keys), policy=policy, pinned_manifest=args.pin
        )
    except BaseException:
        if created:
            root.rmdir()  # unpack_image emptied it: leave nothing behind
        raise
    print(f"unpacked {done.manifest_digest} into {root} ({done.encrypted_layers} encrypted layers)")
    return 0


def _cmd_seal(args: argparse.Namespace) -> int:
    src, ref = parse_reference(args.source)
    image_id = seal_image(Layout.open(src), ref, args.tag, Path(args.output))
    print(f"{image_id} written to {args.output}: docker load -i {args.output}")
    return 0


def add_parser(sub: Any, handler: Callable[..., int]) -> None:
    """Add ``image`` and its subcommands to the top-level subparsers ``sub``, run by ``handler``."""
    parser = sub.add_parser("image", help="encrypted OCI images (ocicrypt JWE)")
    parser.set_defaults(func=handler)
    image = parser.add_subparsers(dest="image_command", required=True)
    enc = image.add_parser("encrypt", help="encrypt the layers of an image to recipients")
    enc.add_argument("source", help=REFERENCE_HELP)
    enc.add_argument("dest", help=REFERENCE_HELP)
    enc.add_argument(
        "--recipient",
        action="append",
        required=True,
        metavar="jwe:PUBKEY",
        help="a PEM or JWK public key (RSA or EC); repeat for several recipients",
    )
    enc.add_argument(
        "--layer", type=int, action="append", metavar="N", help="encrypt only layer N (repeat)"
    )
    enc.set_defaults(image_func=_cmd_encrypt)

    dec = image.add_parser("decrypt", help="decrypt the layers of an image")
    dec.add_argument("source", help=REFERENCE_HELP)
    dec.add_argument("dest", help=REFERENCE_HELP)
    dec.add_argument(
        "--key", action="append", required=True, metavar="PRIVKEY", help="PEM or JWK (repeat)"
    )
    dec.set_defaults(image_func=_cmd_decrypt)

    ins = image.add_parser("inspect", help="show an image's layers and their encryption")
    ins.add_argument("source", help=REFERENCE_HELP)
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(image_func=_cmd_inspect)

    seal = image.add_parser(
        "seal", help="wrap an encrypted image into an ordinary one for docker run"
    )
    seal.add_argument("source", help=REFERENCE_HELP)
    seal.add_argument("output", help="the docker-load archive to write (.tar)")
    seal.add_argument("--tag", required=True, help="the name docker load gives it, e.g. app:sealed")
    seal.set_defaults(image_func=_cmd_seal)

    unp = image.add_parser("unpack", help="verify, decrypt and extract an image into a rootfs")
    unp.add_argument("source", help=REFERENCE_HELP)
    unp.add_argument("rootfs", help="an empty or new directory")
    unp.add_argument("--key", action="append", default=[], metavar="PRIVKEY")
    unp.add_argument("--pin", metavar="sha256:DIGEST", help="refuse any other manifest digest")
    unp.add_argument("--devices", choices=("refuse", "skip", "allow"), default="refuse")
    unp.add_argument("--setuid", choices=("refuse", "strip", "keep"), default="strip")
    unp.set_defaults(image_func=_cmd_unpack)


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``image`` subcommand."""
    return int(args.image_func(args))
