"""``trusthook``: measure a rootfs, run the agent, show and verify the event log, enroll and
attest this host, run the attestation server."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from trusthook.config import Config, load_config
from trusthook.errors import AgentUnavailableError, BundleError, EventLogError, TrusthookError
from trusthook.eventlog import Record, parse_record, verify_against_pcr
from trusthook.image import cli as image_cli
from trusthook.logstore import LogStore, read_boot_id
from trusthook.measure.backend import select_hasher
from trusthook.measure.profile import config_digest, launch_profile_digest
from trusthook.oci import read_config
from trusthook.protocol import OP_ATTEST, OP_ENROLL, OP_SNAPSHOT, OP_STATUS, call

AGENT_EXCHANGE_TIMEOUT = 300.0  # enrollment creates keys: seconds on a hardware TPM


def _cmd_measure(args: argparse.Namespace, config: Config) -> int:
    hasher = select_hasher(config.hasher, threads=args.threads)
    rootfs = hasher.measure_rootfs(args.rootfs)
    out: dict[str, Any] = {
        "rootfs": os.path.abspath(args.rootfs),
        "rootfs_digest": "sha256:" + rootfs.digest.hex(),
        "rootfs_entries": rootfs.entries,
        "bytes_hashed": rootfs.bytes_hashed,
        "hasher": hasher.backend,
    }
    if args.oci_config:
        bundle = os.path.dirname(os.path.abspath(args.oci_config))
        if os.path.basename(args.oci_config) != "config.json":
            raise BundleError(f"--config must name a bundle's config.json, got {args.oci_config}")
        oci_config = read_config(bundle)
        out["config_digest"] = config_digest(oci_config)
        out["launch_profile_digest"] = launch_profile_digest(oci_config, args.container_id)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key, value in out.items():
            print(f"{key:22} {value}")
    return 0


def _snapshot(config: Config, direct: bool) -> tuple[list[Record], int, bytes, str]:
    """Records and PCR value: from the running agent (consistent under its lock) or, if it is
    not running or ``direct`` is set, from the log file and the TPM."""
    if not direct:
        try:
            result = call(str(config.socket), OP_SNAPSHOT, timeout=config.hook_timeout)
        except AgentUnavailableError:
            pass
        else:
            try:
                records = [
                    parse_record(r, f"agent record {i}") for i, r in enumerate(result["records"])
                ]
                return records, int(result["pcr"]), bytes.fromhex(result["pcr_value"]), "agent"
            except (KeyError, TypeError, ValueError) as e:
                raise EventLogError(f"the agent's snapshot is malformed ({e!r})") from None
    from trusthook.tpm import Tpm  # noqa: PLC0415 - tpm2-pytss is slow to import; only here

    store = LogStore(config.state_dir / "eventlog", read_boot_id())
    lock_fd = store.lock()  # refuses while an agent writes: its snapshot is the consistent one
    try:
        contents = store.read()
        if contents.torn_tail:
            raise EventLogError(
                f"record {len(contents.records)}: {store.path} ends in a torn record;"
                " start the agent to repair it"
            )
        with Tpm(config.tcti) as tpm:
            return contents.records, config.pcr, tpm.pcr_read(config.pcr), "tpm"
    finally:
        os.close(lock_fd)


def _cmd_log_verify(args: argparse.Namespace, config: Config) -> int:
    records, pcr, pcr_value, source = _snapshot(config, args.direct)
    verify_against_pcr(records, pcr, pcr_value)
    print(f"OK: {len(records)} records replay to PCR {pcr} = {pcr_value.hex()} ({source})")
    return 0


def _cmd_log_show(args: argparse.Namespace, config: Config) -> int:
    records, _, _, _ = _snapshot(config, args.direct)
    if args.json:
        for r in records:
            print(json.dumps(r.to_json(), indent=2))
        return 0
    for r in records:
        e = r.event
        print(f"#{r.recnum} pcr={r.pcr} sha256={r.digest.hex()}")
        print(f"  container  {e.container_id}  ({e.stage}, {e.time})")
        print(f"  bundle     {e.bundle}")
        print(f"  image      {e.image_reference or '-'} {e.image_digest or ''}".rstrip())
        print(f"  rootfs     {e.rootfs_digest} ({e.rootfs_entries} entries)")
        print(f"  config     {e.config_digest}")
        print(f"  profile    {e.launch_profile_digest}")
        print(f"  boot       {e.boot_id}")
    return 0


def _cmd_agent(_args: argparse.Namespace, config: Config) -> int:
    from trusthook.agent.run import run_agent  # noqa: PLC0415 - imports tpm2-pytss

    run_agent(config)
    return 0


def _cmd_enroll(args: argparse.Namespace, config: Config) -> int:
    params = {
        "server": args.server,
        "server_ca": os.path.abspath(args.server_ca),
        "hostname": args.hostname or socket.gethostname(),
        "group": args.group,
        "reenroll": args.reenroll,
    }
    result = call(str(config.socket), OP_ENROLL, timeout=AGENT_EXCHANGE_TIMEOUT, params=params)
    verb = "re-enrolled" if result.get("reenrolled") else "enrolled"
    print(f"{verb} with {result.get('server')} as host {result.get('host_id')}")
    return 0


def _print_verdict(verdict: dict[str, Any]) -> int:
    trusted = verdict.get("trusted") is True
    host = f"{verdict.get('host_id')} ({verdict.get('hostname')}, group {verdict.get('group')})"
    print(f"host      {host}")
    print(f"status    {'TRUSTED' if trusted else 'UNTRUSTED'} since {verdict.get('since')}")
    if trusted:
        print(f"valid     until {verdict.get('valid_until')}")
    for reason in verdict.get("reasons") or []:
        line = f"reason    {reason.get('check')}: {reason.get('message')}"
        if reason.get("expected") is not None or reason.get("got") is not None:
            line += f" (expected {reason.get('expected')}, got {reason.get('got')})"
        print(line)
    return 0 if trusted else 2


def _cmd_attest(args: argparse.Namespace, config: Config) -> int:
    verdict = call(str(config.socket), OP_ATTEST, timeout=AGENT_EXCHANGE_TIMEOUT)
    if args.json:
        print(json.dumps(verdict, indent=2))
        return 0 if verdict.get("trusted") is True else 2
    return _print_verdict(verdict)


def _cmd_status(args: argparse.Namespace, config: Config) -> int:
    status = call(str(config.socket), OP_STATUS, timeout=config.hook_timeout)
    if args.json:
        print(json.dumps(status, indent=2))
    if not status.get("enrolled"):
        if not args.json:
            print("not enrolled: run 'trusthook enroll --server URL --server-ca FILE'")
        return 1
    verdict = status.get("last_verdict")
    if args.json:
        return (
            0
            if isinstance(verdict, dict)
            and verdict.get("trusted") is True
            and not status.get("error")
            else 2
        )
    enrollment = status.get("enrollment") or {}
    print(f"server    {enrollment.get('server')}")
    print(f"attempt   {status.get('last_attempt')}")
    if status.get("error"):
        print(f"error     {status['error']}")
    if not isinstance(verdict, dict):
        print("status    UNKNOWN: no verdict from the server yet")
        return 2
    code = _print_verdict(verdict)
    return 2 if status.get("error") else code


def _cmd_server(args: argparse.Namespace, _config: Config) -> int:
    from trusthook.server import run as server_run  # noqa: PLC0415 - server-only imports
    from trusthook.server.config import load_server_config  # noqa: PLC0415

    config = load_server_config(Path(args.config))
    if args.server_command == "init":
        for line in server_run.init_server(config):
            print(f"ready: {line}")
    elif args.server_command == "run":
        server_run.run_server(config)
    elif args.server_command == "keys":
        return _server_keys(args, config)
    elif args.server_command == "operator-cert":
        key, cert = server_run.operator_certificate(config, args.name, Path(args.out))
        print(f"wrote {cert} and {key}")
    else:
        from trusthook.server.app import create_app, openapi_document  # noqa: PLC0415

        service, _store = server_run.build_service(config)
        sys.stdout.write(openapi_document(create_app(service, max_body=config.max_body)))
    return 0


def _cmd_image(args: argparse.Namespace, _config: Config) -> int:
    return image_cli.run(args)


def _server_keys(args: argparse.Namespace, config: Any) -> int:
    from trusthook.server import imagekeys  # noqa: PLC0415 - server-only imports

    directory = config.image_key_dir
    if args.keys_command == "create":
        path = imagekeys.create_key(directory, args.name, args.type)
        print(f"created {path}; encrypt images to: trusthook server keys public {args.name}")
    elif args.keys_command == "public":
        sys.stdout.write(imagekeys.public_pem(directory, args.name).decode())
    else:
        for name in imagekeys.list_keys(directory):
            print(name)
    return 0


def _cmd_demo(args: argparse.Namespace, _config: Config) -> int:
    from trusthook.devenv.demo import run_demo  # noqa: PLC0415 - development only

    return run_demo(Path(args.workdir))


def _add_server_parser(sub: Any) -> None:
    sv = sub.add_parser("server", help="the attestation server").add_subparsers(
        dest="server_command", required=True
    )
    for name, text in (
        ("init", "create the CA, TLS certificate and database schema"),
        ("run", "serve over mutual TLS"),
        ("operator-cert", "issue a client certificate that reads every host's status"),
        ("openapi", "print the OpenAPI document"),
    ):
        cmd = sv.add_parser(name, help=text)
        cmd.add_argument("--config", required=True, metavar="FILE", help="server config (TOML)")
        cmd.set_defaults(func=_cmd_server)
        if name == "operator-cert":
            cmd.add_argument("name")
            cmd.add_argument("--out", required=True, metavar="DIR")
    keys = sv.add_parser("keys", help="the image key-encryption keys").add_subparsers(
        dest="keys_command", required=True
    )
    for name, text in (
        ("create", "create a key (its private half never leaves the server)"),
        ("public", "print a key's public half (PEM), to encrypt images to"),
        ("list", "list the keys"),
    ):
        cmd = keys.add_parser(name, help=text)
        cmd.add_argument("--config", required=True, metavar="FILE", help="server config (TOML)")
        cmd.set_defaults(func=_cmd_server, server_command="keys")
        if name != "list":
            cmd.add_argument("name")
        if name == "create":
            cmd.add_argument("--type", choices=("rsa", "ec"), default="ec")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trusthook", description=__doc__)
    p.add_argument("--trusthook-config", metavar="PATH", help="trusthook config file")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("measure", help="print the digests of a rootfs and optional config.json")
    m.add_argument("rootfs")
    m.add_argument("--config", dest="oci_config", metavar="CONFIG.json")
    m.add_argument("--container-id", default="", help="id whose occurrences mounts may carry")
    m.add_argument("--json", action="store_true")
    m.add_argument(
        "--threads", type=int, help="native hashing threads (default: cores; more for cold caches)"
    )
    m.set_defaults(func=_cmd_measure)

    a = sub.add_parser("agent", help="run the node agent")
    a.set_defaults(func=_cmd_agent)

    d = sub.add_parser("demo", help="measured launch end to end on swtpm and busybox (root)")
    d.add_argument("--workdir", default="/var/lib/trusthook-demo")
    d.set_defaults(func=_cmd_demo)

    e = sub.add_parser("enroll", help="enroll this host with an attestation server")
    e.add_argument("--server", required=True, metavar="URL", help="https://host:port")
    e.add_argument("--server-ca", required=True, metavar="FILE", help="the server's CA (PEM)")
    e.add_argument("--group", default="default", help="host group (golden values)")
    e.add_argument("--hostname", help="name to enroll under (default: this host's name)")
    e.add_argument(
        "--reenroll", action="store_true", help="replace this host's enrollment and keys"
    )
    e.set_defaults(func=_cmd_enroll)

    at = sub.add_parser("attest", help="attest now and print the server's verdict")
    at.add_argument("--json", action="store_true")
    at.set_defaults(func=_cmd_attest)

    st = sub.add_parser("status", help="this host's enrollment and last verdict")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_cmd_status)

    _add_server_parser(sub)
    image_cli.add_parser(sub, _cmd_image)

    lg = sub.add_parser("log", help="the event log of this boot").add_subparsers(
        dest="log_command", required=True
    )
    v = lg.add_parser("verify", help="replay the log and compare it with the PCR")
    v.add_argument("--direct", action="store_true", help="read the TPM, not the agent")
    v.set_defaults(func=_cmd_log_verify)
    s = lg.add_parser("show", help="print the records")
    s.add_argument("--direct", action="store_true", help="read the TPM, not the agent")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_log_show)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TSS2_LOG", "all+NONE")  # tpm2-tss logging off: our errors say it once
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="trusthook %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.trusthook_config)
        return int(args.func(args, config))
    except TrusthookError as e:
        print(f"trusthook: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
