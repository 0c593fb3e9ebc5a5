"""Every ``trusthook`` subcommand's arguments. argparse only: building the parser must stay
cheap, so each subcommand names the module and function that run it (``run``), which ``main``
imports on demand."""

from __future__ import annotations

import argparse
from typing import Any

from trusthook.image.choices import Devices, Setuid, choice_values

REFERENCE_HELP = "an OCI layout directory, optionally :REF (skopeo's oci:DIR:REF also works)"


def _command(sub: Any, name: str, run: str, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=text, description=text)
    parser.set_defaults(run=run)
    return parser


def _add_host(sub: Any) -> None:
    m = _command(sub, "measure", "measure:measure", "print the digests of a rootfs and config.json")
    m.add_argument("rootfs")
    m.add_argument("--config", dest="oci_config", metavar="CONFIG.json")
    m.add_argument("--container-id", default="", help="id whose occurrences mounts may carry")
    m.add_argument("--json", action="store_true")
    m.add_argument(
        "--threads", type=int, help="native hashing threads (default: cores; more for cold caches)"
    )

    _command(sub, "agent", "agent:agent", "run the node agent")

    d = _command(sub, "demo", "demo:demo", "measured launch end to end on swtpm and busybox (root)")
    d.add_argument("--workdir", default="/var/lib/trusthook-demo")

    e = _command(sub, "enroll", "host:enroll", "enroll this host with an attestation server")
    e.add_argument("--server", required=True, metavar="URL", help="https://host:port")
    e.add_argument("--server-ca", required=True, metavar="FILE", help="the server's CA (PEM)")
    e.add_argument("--group", default="default", help="host group (golden values)")
    e.add_argument("--hostname", help="name to enroll under (default: this host's name)")
    e.add_argument(
        "--reenroll", action="store_true", help="replace this host's enrollment and keys"
    )

    at = _command(sub, "attest", "host:attest", "attest now and print the server's verdict")
    at.add_argument("--json", action="store_true")

    st = _command(sub, "status", "host:status", "this host's enrollment and last verdict")
    st.add_argument("--json", action="store_true")

    lg = sub.add_parser("log", help="the event log of this boot").add_subparsers(
        dest="log_command", required=True
    )
    v = _command(lg, "verify", "log:verify", "replay the log and compare it with the PCR")
    v.add_argument("--direct", action="store_true", help="read the TPM, not the agent")
    s = _command(lg, "show", "log:show", "print the records")
    s.add_argument("--direct", action="store_true", help="read the TPM, not the agent")
    s.add_argument("--json", action="store_true")


def _add_server(sub: Any) -> None:
    sv = sub.add_parser("server", help="the attestation server").add_subparsers(
        dest="server_command", required=True
    )
    for name, run, text in (
        ("init", "server:init", "create the CA, TLS certificate and database schema"),
        ("run", "server:run", "serve over mutual TLS"),
        (
            "operator-cert",
            "server:operator_cert",
            "issue a client certificate that reads every host's status",
        ),
    ):
        cmd = _command(sv, name, run, text)
        cmd.add_argument("--config", required=True, metavar="FILE", help="server config (TOML)")
        if name == "operator-cert":
            cmd.add_argument("name")
            cmd.add_argument("--out", required=True, metavar="DIR")
    _command(sv, "openapi", "server:openapi", "print the OpenAPI document of the server's API")
    keys = sv.add_parser("keys", help="the image key-encryption keys").add_subparsers(
        dest="keys_command", required=True
    )
    for name, text in (
        ("create", "create a key (its private half never leaves the server)"),
        ("public", "print a key's public half (PEM), to encrypt images to"),
        ("list", "list the keys"),
    ):
        cmd = _command(keys, name, f"server:keys_{name}", text)
        cmd.add_argument("--config", required=True, metavar="FILE", help="server config (TOML)")
        if name != "list":
            cmd.add_argument("name")
        if name == "create":
            cmd.add_argument("--type", choices=("rsa", "ec"), default="ec")


def _add_image(sub: Any) -> None:
    image = sub.add_parser("image", help="encrypted OCI images (ocicrypt JWE)").add_subparsers(
        dest="image_command", required=True
    )
    enc = _command(
        image, "encrypt", "image:encrypt", "encrypt the layers of an image to recipients"
    )
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

    dec = _command(image, "decrypt", "image:decrypt", "decrypt the layers of an image")
    dec.add_argument("source", help=REFERENCE_HELP)
    dec.add_argument("dest", help=REFERENCE_HELP)
    dec.add_argument(
        "--key", action="append", required=True, metavar="PRIVKEY", help="PEM or JWK (repeat)"
    )

    ins = _command(image, "inspect", "image:inspect", "show an image's layers and their encryption")
    ins.add_argument("source", help=REFERENCE_HELP)
    ins.add_argument("--json", action="store_true")

    seal = _command(
        image, "seal", "image:seal", "wrap an encrypted image into an ordinary one for docker run"
    )
    seal.add_argument("source", help=REFERENCE_HELP)
    seal.add_argument("output", help="the docker-load archive to write (.tar)")
    seal.add_argument("--tag", required=True, help="the name docker load gives it, e.g. app:sealed")

    unp = _command(
        image, "unpack", "image:unpack", "verify, decrypt and extract an image into a rootfs"
    )
    unp.add_argument("source", help=REFERENCE_HELP)
    unp.add_argument("rootfs", help="an empty or new directory")
    unp.add_argument("--key", action="append", default=[], metavar="PRIVKEY")
    unp.add_argument("--pin", metavar="sha256:DIGEST", help="refuse any other manifest digest")
    unp.add_argument("--devices", choices=choice_values(Devices), default=Devices.REFUSE.value)
    unp.add_argument("--setuid", choices=choice_values(Setuid), default=Setuid.STRIP.value)


def build_parser(description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trusthook", description=description)
    p.add_argument("--trusthook-config", metavar="PATH", help="trusthook config file")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    _add_host(sub)
    _add_server(sub)
    _add_image(sub)
    return p
