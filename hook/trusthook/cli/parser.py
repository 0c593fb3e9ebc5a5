"""Every ``trusthook`` subcommand's arguments. argparse only: building the parser must stay
cheap, so each subcommand names the module and function that run it (``run``), which ``main``
imports on demand."""

from __future__ import annotations

import argparse
from typing import Any

from trusthook.hostsetup.choices import Engine
from trusthook.image.choices import Devices, Setuid, choice_values

REFERENCE_HELP = "an OCI layout directory, optionally :REF (skopeo's oci:DIR:REF also works)"


def _command(sub: Any, name: str, run: str, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=text, description=text)
    parser.set_defaults(run=run)
    return parser


class _OperatorAssignsGroups(argparse.Action):
    """``enroll --group``, which is gone: a host does not choose its group."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        parser.error(
            "--group: a host does not choose its group, the operator assigns it (trusthook"
            " server hosts admit|approve --group); tell the operator with --note"
        )


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
    e.add_argument(
        "--note", default="", help="a note to the operator who admits this host (not its group)"
    )
    e.add_argument("--group", action=_OperatorAssignsGroups, help=argparse.SUPPRESS)
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
    for name, text in (
        ("init", "create the CA, TLS certificate and database schema"),
        ("run", "serve over mutual TLS"),
    ):
        _with_config(_command(sv, name, f"server:{name}", text))
    _command(sv, "openapi", "server:openapi", "print the OpenAPI document of the server's API")
    _add_hosts(sv)
    _add_policy(sv)
    _add_workloads(sv)
    _add_operator_cert(sv)
    keys = sv.add_parser("keys", help="the image key-encryption keys").add_subparsers(
        dest="keys_command", required=True
    )
    for name, text in (
        ("create", "create a key (its private half never leaves the server)"),
        ("public", "print a key's public half (PEM), to encrypt images to"),
        ("list", "list the keys"),
    ):
        cmd = _with_config(_command(keys, name, f"server:keys_{name}", text))
        if name != "list":
            cmd.add_argument("name")
        if name == "create":
            cmd.add_argument("--type", choices=("rsa", "ec"), default="ec")


def _with_config(cmd: argparse.ArgumentParser) -> argparse.ArgumentParser:
    cmd.add_argument("--config", required=True, metavar="FILE", help="server config (TOML)")
    return cmd


HOST_HELP = "the host's EK hash (its host id), or its first 8 or more hex digits"


def _add_hosts(sv: Any) -> None:
    hosts = sv.add_parser(
        "hosts", help="admission (which EK is in which host group) and host trust"
    ).add_subparsers(dest="hosts_command", required=True)
    admit = _with_config(
        _command(hosts, "admit", "server:hosts_admit", "pre-register an EK into a host group")
    )
    ek = admit.add_mutually_exclusive_group(required=True)
    ek.add_argument("--ek-cert", metavar="FILE", help="the host's EK certificate (PEM or DER)")
    ek.add_argument("--ek-sha256", metavar="HEX", help="SHA-256 of the EK's public key (DER)")
    approve = _with_config(
        _command(hosts, "approve", "server:hosts_approve", "admit a pending host into a group")
    )
    approve.add_argument("host", help=HOST_HELP)
    for cmd in (admit, approve):
        cmd.add_argument("--group", required=True, help="the host group it belongs to")
        cmd.add_argument(
            "--attribute",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="an attribute of the host, e.g. location=dc1 (repeat)",
        )
        cmd.add_argument("--reason", default="", help="why (recorded and audited)")
    tag = _with_config(
        _command(
            hosts,
            "tag",
            "server:hosts_tag",
            "set or remove an admitted host's attributes (its location and tags), audited",
        )
    )
    tag.add_argument("host", help=HOST_HELP)
    tag.add_argument("attribute", nargs="*", metavar="KEY=VALUE", help="set, e.g. region=eu-1")
    tag.add_argument("--remove", action="append", default=[], metavar="KEY", help="remove (repeat)")
    tag.add_argument("--reason", required=True, help="why (recorded and audited)")
    for name, text in (
        ("reject", "refuse a pending host"),
        ("revoke", "revoke a host: its certificate, trust and releases end now"),
        ("clear", "clear what holds a host untrusted (event_log, clock) after checking it"),
    ):
        cmd = _with_config(_command(hosts, name, f"server:hosts_{name}", text))
        cmd.add_argument("host", help=HOST_HELP)
        cmd.add_argument("--reason", required=True, help="why (recorded and audited)")
    show = _with_config(
        _command(hosts, "show", "server:hosts_show", "one host's admission, trust and audit events")
    )
    show.add_argument("host", help=HOST_HELP)
    show.add_argument("--json", action="store_true")
    for name, text in (
        ("pending", "the hosts waiting for an operator, with their requests' notes"),
        ("list", "every admission record and its host's trust"),
    ):
        _with_config(_command(hosts, name, f"server:hosts_{name}", text)).add_argument(
            "--json", action="store_true"
        )


def _add_policy(sv: Any) -> None:
    policy = sv.add_parser(
        "policy", help="the workload policy manifest (docs/policy.md): check, apply, versions"
    ).add_subparsers(dest="policy_command", required=True)
    check = _command(
        policy, "check", "policy:check", "check a manifest; name the line of anything wrong"
    )
    check.add_argument("file", metavar="FILE")
    apply = _with_config(
        _command(policy, "apply", "policy:apply", "make a manifest the next policy version")
    )
    apply.add_argument("file", metavar="FILE")
    apply.add_argument("--reason", default="", help="why (recorded and audited)")
    show = _with_config(
        _command(policy, "show", "policy:show", "print the policy in force (or a version)")
    )
    diff = _with_config(
        _command(
            policy,
            "diff",
            "policy:diff",
            "compare a manifest with the policy in force (or a version); exit 1 if they differ",
        )
    )
    diff.add_argument("file", metavar="FILE")
    for cmd in (show, diff):
        cmd.add_argument("--version", type=int, metavar="N", help="this version instead")
    show.add_argument("--json", action="store_true", help="the parsed manifest and its version")
    history = _with_config(
        _command(policy, "history", "policy:history", "every version: when, by whom, why")
    )
    history.add_argument("--json", action="store_true")


def _add_workloads(sv: Any) -> None:
    wl = sv.add_parser(
        "workloads", help="workloads: where their instances ran, compliant or not, moves"
    ).add_subparsers(dest="workloads_command", required=True)
    listed = _with_config(
        _command(wl, "list", "workloads:list", "every workload: instances, hosts, compliance")
    )
    listed.add_argument("--json", action="store_true")
    show = _with_config(
        _command(wl, "show", "workloads:show", "one workload's lineage: creations and moves")
    )
    show.add_argument("name")
    show.add_argument("--json", action="store_true")


def _add_operator_cert(sv: Any) -> None:
    certs = sv.add_parser(
        "operator-cert", help="client certificates that read every host's status"
    ).add_subparsers(dest="operator_cert_command", required=True)
    issue = _with_config(
        _command(certs, "issue", "server:operator_cert_issue", "issue an operator certificate")
    )
    issue.add_argument("name", help="the operator or orchestrator, e.g. scheduler")
    issue.add_argument("--out", required=True, metavar="DIR")
    revoke = _with_config(
        _command(
            certs,
            "revoke",
            "server:operator_cert_revoke",
            "revoke an operator certificate (by serial) or all of an operator's (by name)",
        )
    )
    revoke.add_argument("name_or_serial", metavar="NAME|SERIAL")
    revoke.add_argument("--reason", default="", help="why (recorded and audited)")
    listed = _with_config(
        _command(certs, "list", "server:operator_cert_list", "the issued operator certificates")
    )
    listed.add_argument("--json", action="store_true")


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
    unp.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="PRIVKEY",
        help="a private key (PEM or JWK) that is a recipient of the encrypted layers; "
        "repeat for several (tried in turn for each layer)",
    )
    unp.add_argument(
        "--pin",
        metavar="sha256:DIGEST",
        help="the image's manifest digest (sha256: and 64 hex digits); any other is refused",
    )
    unp.add_argument("--devices", choices=choice_values(Devices), default=Devices.REFUSE.value)
    unp.add_argument("--setuid", choices=choice_values(Setuid), default=Setuid.STRIP.value)


def _add_audit(sub: Any) -> None:
    audit = sub.add_parser("audit", help="the server's tamper-evident audit log").add_subparsers(
        dest="audit_command", required=True
    )
    v = _command(audit, "verify", "audit:verify", "verify an exported audit bundle offline")
    v.add_argument("bundle", metavar="BUNDLE", help="the bundle (JSON) the server exported")
    trust = v.add_mutually_exclusive_group()
    trust.add_argument(
        "--trusted-checkpoint",
        metavar="FILE",
        help="a checkpoint (signed note) kept from before: the bundle's log must extend it",
    )
    trust.add_argument(
        "--trusted-bundle",
        metavar="FILE",
        help="a bundle verified before: its log must extend it, the entries both hold agree",
    )
    v.add_argument("--key", metavar="VKEY", help="the log's verifier key (name+keyid+key)")
    v.add_argument(
        "--witness-key",
        action="append",
        default=[],
        metavar="VKEY",
        help="with --trusted-checkpoint: a witness that must have cosigned it (repeat)",
    )
    e = _command(
        audit, "export", "audit:export", "export a self-contained audit bundle from the server"
    )
    e.add_argument("--config", required=True, metavar="FILE", help="server config (TOML)")
    e.add_argument(
        "--since", metavar="TIME", help="entries from this RFC 3339 time on (default: the start)"
    )
    e.add_argument("--until", metavar="TIME", help="entries before this RFC 3339 time")
    e.add_argument(
        "--from-size",
        type=int,
        metavar="N",
        help="add a consistency proof from the tree of N entries (a checkpoint kept before)",
    )
    e.add_argument("out", metavar="OUT", help="the bundle file to write (not overwritten)")
    k = _command(audit, "key", "audit:key", "print the audit log's verifier key (for auditors)")
    k.add_argument("--config", required=True, metavar="FILE", help="server config (TOML)")
    witness = audit.add_parser(
        "witness", help="cosign checkpoints of a server's log after checking they extend"
    ).add_subparsers(dest="witness_command", required=True)
    wi = _command(witness, "init", "witness:init", "make a witness key; print its verifier key")
    wi.add_argument("--state", required=True, metavar="DIR", help="the witness's directory")
    wi.add_argument("--name", required=True, help="the witness's key name, e.g. example.com/w1")
    wr = _command(witness, "run", "witness:run", "check and cosign the log's latest checkpoint")
    wr.add_argument("--state", required=True, metavar="DIR", help="the witness's directory")
    wr.add_argument("--server", required=True, metavar="URL", help="https://host:port")
    wr.add_argument("--log-key", required=True, metavar="VKEY", help="the log's verifier key")
    wr.add_argument("--server-ca", required=True, metavar="FILE", help="the server's CA (PEM)")
    wr.add_argument(
        "--client-cert",
        required=True,
        metavar="FILE",
        help="an operator certificate (trusthook server operator-cert issue)",
    )
    wr.add_argument("--client-key", required=True, metavar="FILE", help="its private key")
    first = wr.add_mutually_exclusive_group()
    first.add_argument(
        "--trusted-checkpoint",
        metavar="FILE",
        help="before the first cosignature: a checkpoint kept from before, the log must extend it",
    )
    first.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="before the first cosignature: take the log's checkpoint as it comes",
    )
    when = wr.add_mutually_exclusive_group(required=True)
    when.add_argument("--once", action="store_true", help="one round, then exit")
    when.add_argument(
        "--interval", type=float, metavar="SECONDS", help="a round every SECONDS, until refused"
    )


def _add_report(sub: Any) -> None:
    r = _command(
        sub,
        "report",
        "report:report",
        "a compliance report (html, json, csv) computed from verified audit-log entries",
    )
    source = r.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config",
        metavar="FILE",
        help="server config (TOML): export the period's bundle from the server's database,"
        " verify it and write it beside OUT",
    )
    source.add_argument(
        "--bundle", metavar="FILE", help="an exported audit bundle: verify it offline, no server"
    )
    r.add_argument("--key", metavar="VKEY", help="with --bundle: the log's verifier key")
    r.add_argument(
        "--trusted-checkpoint",
        metavar="FILE",
        help="with --bundle: a checkpoint kept from before: the bundle's log must extend it",
    )
    r.add_argument("--since", metavar="TIME", help="from this RFC 3339 time on (inclusive)")
    r.add_argument("--until", metavar="TIME", help="up to this RFC 3339 time (exclusive)")
    r.add_argument(
        "--workload",
        metavar="W",
        help="only this workload (its image reference, else image digest) and the hosts it ran on",
    )
    r.add_argument(
        "--validity",
        type=float,
        metavar="SECONDS",
        help="a trusted verdict counts this long, then the host is stale (default with"
        " --config: the server's [attestation] validity; with --bundle: until the next verdict)",
    )
    r.add_argument(
        "--history-since",
        dest="history",
        metavar="TIME",
        help="with --config: export from this earlier time, so that each host's group,"
        " location and trust at the start of the period are known",
    )
    r.add_argument(
        "--bundle-out",
        metavar="FILE",
        help="with --config: where to write the bundle (default: OUT.bundle.json)",
    )
    r.add_argument("--format", choices=("html", "json", "csv"), default="html")
    r.add_argument("out", metavar="OUT", help="the report to write (not overwritten)")


def _add_setup(sub: Any) -> None:
    engines = choice_values(Engine)
    rt = sub.add_parser(
        "runtime", help="register trusthook with a container engine (docs/deploy.md)"
    ).add_subparsers(dest="runtime_command", required=True)
    for name, text in (
        ("configure", "merge trusthook into an engine's configuration (backed up, idempotent)"),
        ("unconfigure", "take trusthook out of an engine's configuration again"),
    ):
        cmd = _command(rt, name, f"runtime:{name}", text)
        cmd.add_argument("--runtime", required=True, choices=engines, help="the engine")
        cmd.add_argument(
            "--config",
            metavar="PATH",
            help="the engine's file: daemon.json, config.toml, containers.conf or the CRI-O"
            " drop-in (default: /etc/docker/daemon.json, /etc/containerd/config.toml,"
            " /etc/containers/containers.conf, /etc/crio/crio.conf.d/50-trusthook.conf)",
        )
        cmd.add_argument(
            "--hooks-dir",
            metavar="DIR",
            help="where podman and CRI-O read hooks.d files (default /etc/containers/oci/hooks.d)",
        )
        cmd.add_argument("--dry-run", action="store_true", help="print a diff, write nothing")
        if name == "configure":
            cmd.add_argument(
                "--shim-path",
                metavar="PATH",
                help="trusthook-runtime (default: the one beside this trusthook, else in PATH)",
            )
            cmd.add_argument(
                "--hook-path",
                metavar="PATH",
                help="trusthook-hook for hooks.d (default: [runtime] hook, else the one beside"
                " this trusthook)",
            )
            cmd.add_argument(
                "--default", action="store_true", help="make trusthook the engine's default runtime"
            )

    dr = _command(sub, "doctor", "doctor:doctor", "check that this host is ready, with fixes")
    dr.add_argument("--json", action="store_true", help="the report as JSON (docs/deploy.md)")
    dr.add_argument(
        "--engine-config",
        action="append",
        default=[],
        metavar="ENGINE=PATH",
        help="an engine's file where it is not at its default path (repeat)",
    )
    dr.add_argument(
        "--hooks-dir",
        metavar="DIR",
        help="the hooks.d directory (default /etc/containers/oci/hooks.d)",
    )


def build_parser(description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trusthook", description=description)
    p.add_argument("--trusthook-config", metavar="PATH", help="trusthook config file")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    _add_host(sub)
    _add_server(sub)
    _add_image(sub)
    _add_audit(sub)
    _add_report(sub)
    _add_setup(sub)
    return p
