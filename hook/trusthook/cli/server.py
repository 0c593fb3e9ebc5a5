"""``trusthook server ...``: set up, run and administer the attestation server: its hosts'
admission records and trust (``hosts``), operator certificates, image keys."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trusthook.attest.identity import verify_ek_certificate
from trusthook.common.clock import iso_from_timestamp
from trusthook.common.config import Config
from trusthook.errors import UsageError
from trusthook.server import imagekeys
from trusthook.server import run as server_run
from trusthook.server.admin import Decision, HostAdmin, HostView, decision
from trusthook.server.admission import (
    AdmissionState,
    check_text,
    ek_sha256_of,
    parse_attributes,
)
from trusthook.server.app import openapi_document
from trusthook.server.config import ServerConfig, load_server_config
from trusthook.server.records import OperatorCert
from trusthook.server.status import status_of
from trusthook.server.store import Store


def _config(args: argparse.Namespace) -> ServerConfig:
    return load_server_config(Path(args.config))


def init(args: argparse.Namespace, _config_: Config) -> int:
    for line in server_run.init_server(_config(args)):
        print(f"ready: {line}")
    return 0


def run(args: argparse.Namespace, _config_: Config) -> int:
    server_run.run_server(_config(args))
    return 0


def operator_cert_issue(args: argparse.Namespace, _config_: Config) -> int:
    key, cert = server_run.operator_certificate(
        _config(args), args.name, Path(args.out), by=operator_identity()
    )
    print(f"wrote {cert} and {key}")
    return 0


def operator_cert_revoke(args: argparse.Namespace, _config_: Config) -> int:
    reason = check_text(args.reason, "--reason", empty=True)
    for cert in server_run.revoke_operator_certificates(
        _config(args), args.name_or_serial, by=operator_identity(), reason=reason
    ):
        print(f"revoked operator certificate {cert.serial} ({cert.name})")
    return 0


def operator_cert_list(args: argparse.Namespace, _config_: Config) -> int:
    certs = server_run.operator_certificates(_config(args))
    if args.json:
        print(json.dumps([_operator_json(c) for c in certs], indent=2))
        return 0
    rows = [
        (
            c.serial,
            c.name,
            _iso(c.issued_at),
            _iso(c.expires_at),
            "valid" if c.revoked_at is None else f"revoked {_iso(c.revoked_at)}",
        )
        for c in certs
    ]
    _table(("SERIAL", "NAME", "ISSUED", "EXPIRES", "STATE"), rows)
    return 0


def openapi(_args: argparse.Namespace, _config_: Config) -> int:
    sys.stdout.write(openapi_document())
    return 0


def keys_create(args: argparse.Namespace, _config_: Config) -> int:
    path = imagekeys.create_key(_config(args).image_key_dir, args.name, args.type)
    print(f"created {path}; encrypt images to: trusthook server keys public {args.name}")
    return 0


def keys_public(args: argparse.Namespace, _config_: Config) -> int:
    sys.stdout.write(imagekeys.public_pem(_config(args).image_key_dir, args.name).decode())
    return 0


def keys_list(args: argparse.Namespace, _config_: Config) -> int:
    for name in imagekeys.list_keys(_config(args).image_key_dir):
        print(name)
    return 0


# trusthook server hosts ...


def operator_identity() -> str:
    """Who runs this command, as decisions record it: the user (and who became it by sudo)
    at this machine."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    via = os.environ.get("SUDO_USER")
    who = f"{user} (sudo by {via})" if via and via != user else user
    return f"{who}@{socket.gethostname()}"


@contextmanager
def _admin(args: argparse.Namespace) -> Iterator[HostAdmin]:
    config = _config(args)
    store = Store(config.database_url)
    try:
        yield HostAdmin(config, store)
    finally:
        store.dispose()


def _decision(args: argparse.Namespace, *, required: bool) -> Decision:
    return decision(operator_identity(), args.reason, time.time(), required=required)


def hosts_admit(args: argparse.Namespace, _config_: Config) -> int:
    config = _config(args)
    certificate = None
    if args.ek_cert:
        certificate = _read_ek_certificate(config, Path(args.ek_cert))
        ek_sha256 = ek_sha256_of(certificate)
    else:
        ek_sha256 = args.ek_sha256.strip().lower()
        if not _EK_SHA256.fullmatch(ek_sha256):
            raise UsageError(f"--ek-sha256: got {args.ek_sha256[:80]!r}, expected 64 hex digits")
    with _admin(args) as admin:
        admission = admin.admit(
            ek_sha256=ek_sha256,
            group=args.group,
            attributes=parse_attributes(args.attribute),
            decision=_decision(args, required=False),
            certificate=certificate,
        )
    print(f"admitted host {admission.ek_sha256} to group {admission.group}")
    return 0


def hosts_approve(args: argparse.Namespace, _config_: Config) -> int:
    with _admin(args) as admin:
        admission = admin.approve(
            args.host,
            group=args.group,
            attributes=parse_attributes(args.attribute),
            decision=_decision(args, required=False),
        )
    then = "re-enroll" if admission.reenroll_grant else "enroll"
    print(f"approved host {admission.ek_sha256} into group {admission.group}; it may {then} now")
    return 0


def hosts_tag(args: argparse.Namespace, _config_: Config) -> int:
    if not args.attribute and not args.remove:
        raise UsageError("hosts tag: give KEY=VALUE to set or --remove KEY")
    with _admin(args) as admin:
        admission = admin.tag(
            args.host,
            attributes=parse_attributes(args.attribute),
            remove=args.remove,
            decision=_decision(args, required=True),
        )
    shown = " ".join(f"{k}={v}" for k, v in sorted(admission.attributes.items()))
    print(f"tagged: host {admission.ek_sha256}: {shown or 'no attributes'}")
    return 0


def hosts_reject(args: argparse.Namespace, _config_: Config) -> int:
    with _admin(args) as admin:
        admission = admin.reject(args.host, decision=_decision(args, required=True))
    print(f"rejected host {admission.ek_sha256}")
    return 0


def hosts_revoke(args: argparse.Namespace, _config_: Config) -> int:
    with _admin(args) as admin:
        admission = admin.revoke(args.host, decision=_decision(args, required=True))
    print(f"revoked host {admission.ek_sha256}: its client certificate is no longer accepted")
    return 0


def hosts_clear(args: argparse.Namespace, _config_: Config) -> int:
    with _admin(args) as admin:
        host = admin.clear(args.host, decision=_decision(args, required=True))
    print(f"cleared host {host.host_id}: its next attestation sets a new baseline")
    return 0


def hosts_pending(args: argparse.Namespace, _config_: Config) -> int:
    with _admin(args) as admin:
        views = admin.views(AdmissionState.PENDING)
    if args.json:
        print(json.dumps([_view_json(v) for v in views], indent=2))
        return 0
    rows = [
        (
            v.admission.ek_sha256,
            _iso(v.admission.requested_at),
            _safe(v.admission.hostname or ""),
            "new EK" if v.host is None else f"re-enrollment, was {v.admission.group}",
            _safe(v.admission.note or ""),
        )
        for v in views
    ]
    _table(("HOST", "REQUESTED", "HOSTNAME", "KIND", "NOTE"), rows)
    return 0


def hosts_list(args: argparse.Namespace, _config_: Config) -> int:
    with _admin(args) as admin:
        views = admin.views()
    if args.json:
        print(json.dumps([_view_json(v) for v in views], indent=2))
        return 0
    now = time.time()
    rows = []
    for v in views:
        trust = "not enrolled"
        if v.host is not None:
            status = status_of(v.host, now, operator=True)
            checks = ", ".join(r.check for r in status.reasons)
            trust = "trusted" if status.trusted else f"untrusted ({checks})"
        hostname = v.host.hostname if v.host else v.admission.hostname or ""
        rows.append(
            (
                v.admission.ek_sha256[:16],
                v.admission.state.value,
                v.admission.group or "-",
                _safe(hostname),
                trust,
            )
        )
    _table(("HOST", "STATE", "GROUP", "HOSTNAME", "TRUST"), rows)
    return 0


def hosts_show(args: argparse.Namespace, _config_: Config) -> int:
    with _admin(args) as admin:
        view = admin.view(args.host)
    data = _view_json(view)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    admission = data["admission"]
    for key in (
        "ek_sha256",
        "state",
        "group",
        "decided_by",
        "decided_at",
        "reason",
        "ek_cert_serial",
        "ek_cert_issuer",
        "hostname",
        "note",
        "requested_at",
    ):
        value = admission[key]
        print(f"{key:<16}{'-' if value is None else _safe(str(value))}")
    for key, value in sorted(admission["attributes"].items()):
        print(f"{'attribute':<16}{_safe(key)}={_safe(value)}")
    status = data["status"]
    if status is None:
        print(f"{'enrolled':<16}no")
    else:
        print(f"{'enrolled':<16}{status['enrolled_at']} as {_safe(status['hostname'])}")
        trust = "TRUSTED" if status["trusted"] else "UNTRUSTED"
        print(f"{'trust':<16}{trust} since {status['since']}")
        for r in status["reasons"]:
            line = f"{r['check']}: {r['message']}"
            if r["expected"] is not None or r["got"] is not None:
                line += f" (expected {r['expected']}, got {r['got']})"
            print(f"{'reason':<16}{_safe(line)}")
        if data["held"] is not None:
            print(f"{'held since':<16}{_iso(data['held']['since'])} (hosts clear lifts it)")
    for event in view.events:
        detail = json.dumps(event.detail, sort_keys=True)
        print(f"{'event':<16}{_iso(event.at)} {event.event} {_safe(detail)}")
    return 0


_EK_SHA256 = re.compile(r"[0-9a-f]{64}")


def _read_ek_certificate(config: ServerConfig, path: Path) -> x509.Certificate:
    """The EK certificate in ``path`` (PEM or DER), once it chains to the EK CA bundle as a
    host's must at enrollment."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"--ek-cert: cannot read {path}: {e.strerror}") from e
    try:
        certificate = (
            x509.load_pem_x509_certificate(data)
            if b"-----BEGIN" in data
            else x509.load_der_x509_certificate(data)
        )
    except (ValueError, x509.InvalidVersion) as e:
        raise UsageError(f"--ek-cert: {path} is not a PEM or DER certificate ({e})") from e
    der = certificate.public_bytes(serialization.Encoding.DER)
    bundle = server_run.load_ek_bundle(config)
    return verify_ek_certificate(der, bundle, datetime.now(UTC), config.ek_ca_anchors)


def _view_json(view: HostView) -> dict[str, Any]:
    a = view.admission
    host = view.host
    return {
        "admission": {
            "ek_sha256": a.ek_sha256,
            "state": a.state.value,
            "group": a.group,
            "attributes": dict(a.attributes),
            "ek_cert_serial": a.ek_cert_serial,
            "ek_cert_issuer": a.ek_cert_issuer,
            "hostname": a.hostname,
            "note": a.note,
            "requested_at": _iso(a.requested_at),
            "decided_by": a.decided_by,
            "decided_at": _iso(a.decided_at),
            "reason": a.reason,
            "reenroll_granted": a.reenroll_grant,
        },
        "status": None
        if host is None
        else status_of(host, time.time(), operator=True).model_dump(mode="json"),
        "held": None if host is None or host.held is None else host.held.to_json(),
        "events": [{"at": _iso(e.at), "event": e.event, "detail": e.detail} for e in view.events],
    }


def _operator_json(cert: OperatorCert) -> dict[str, Any]:
    return {
        "serial": cert.serial,
        "name": cert.name,
        "issued_at": _iso(cert.issued_at),
        "expires_at": _iso(cert.expires_at),
        "issued_by": cert.issued_by,
        "revoked_at": _iso(cert.revoked_at),
        "revoked_by": cert.revoked_by,
        "revoked_reason": cert.revoked_reason,
    }


def _iso(moment: float | None) -> str | None:
    return None if moment is None else iso_from_timestamp(moment)


def _safe(text: str) -> str:
    """Text from the database as a terminal may show it: no control characters."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _table(header: tuple[str, ...], rows: Sequence[Sequence[str | None]]) -> None:
    cells = [header, *[tuple(c or "-" for c in row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
