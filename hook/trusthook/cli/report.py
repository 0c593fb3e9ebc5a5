"""``trusthook report``: a compliance report (html, json, csv) computed from audit-log entries
that were verified first (docs/reports.md). Two sources: ``--bundle`` (an auditor, offline:
the bundle is verified as ``trusthook audit verify`` does) and ``--config`` (the operator, on
the server's database: a bundle is exported as ``trusthook audit export`` does, verified, and
written beside the report, so that the commands the report names are exact).

Nothing is half written: both files are written atomically and never over an existing file;
if the report cannot be written, the bundle written for it is removed again.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from datetime import datetime
from pathlib import Path

from trusthook.audit.bundle import Bundle
from trusthook.audit.note import VerifierKey
from trusthook.audit.report import (
    Parameters,
    Report,
    Source,
    build_report,
    period_time,
    render,
)
from trusthook.audit.verify import VerifiedBundle, verify_bundle
from trusthook.common.config import Config
from trusthook.common.files import write_new
from trusthook.errors import AuditLogError, UsageError


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise AuditLogError(f"cannot read the {what} {path}: {e.strerror}") from e


def _time(text: str | None, what: str) -> str | None:
    if text is None:
        return None
    try:
        return period_time(text, what)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _seconds(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


def _absent(path: Path) -> None:
    if path.exists() or path.is_symlink():
        raise UsageError(f"{path} exists; name a new file")


def _parameters(args: argparse.Namespace, validity: float | None) -> Parameters:
    since, until = _time(args.since, "--since"), _time(args.until, "--until")
    if since is not None and until is not None and until <= since:
        raise UsageError(f"--until: got {until}, expected a time after --since {since}")
    if validity is not None and not (math.isfinite(validity) and validity > 0):
        raise UsageError(f"--validity: got {validity}, expected a number of seconds above 0")
    return Parameters(since=since, until=until, workload=args.workload, validity=validity)


def report(args: argparse.Namespace, config: Config) -> int:
    # As in ``audit verify``: a bundle is many small objects that form no cycles.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _report(args)
    finally:
        if collecting:
            gc.enable()


def _report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _absent(out)
    if args.config is not None:
        for flag, value in (("--key", args.key), ("--trusted-checkpoint", args.trusted_checkpoint)):
            if value is not None:
                raise UsageError(f"{flag} is for --bundle; with --config the server's key is used")
        bundle_out = Path(args.bundle_out or f"{out}.bundle.json")
        _absent(bundle_out)
        parameters, bundle, verified = _from_server(args)
        source = Source(bundle=bundle_out.name)
    else:
        for flag, value in (("--bundle-out", args.bundle_out), ("--history-since", args.history)):
            if value is not None:
                raise UsageError(f"{flag} is for --config")
        bundle_out, bundle = None, None
        parameters = _parameters(args, args.validity)
        verified = _verified(args)
        source = Source(
            bundle=Path(args.bundle).name,
            trusted_checkpoint=Path(args.trusted_checkpoint).name
            if args.trusted_checkpoint
            else None,
        )
    result = build_report(verified, parameters=parameters, source=source)
    data = render(result, args.format)
    if bundle is not None and bundle_out is not None:
        _write(bundle_out, bundle.to_bytes())
        try:
            _write(out, data)
        except BaseException:
            bundle_out.unlink(missing_ok=True)
            raise
    else:
        _write(out, data)
    _print(result, out, bundle_out)
    return 0


def _verified(args: argparse.Namespace) -> VerifiedBundle:
    """The auditor's bundle, verified as ``trusthook audit verify`` does."""
    bundle = Bundle.from_bytes(_read(args.bundle, "bundle"))
    trusted = None
    if args.trusted_checkpoint:
        trusted = _read(args.trusted_checkpoint, "trusted checkpoint")
    key = VerifierKey.parse(args.key) if args.key else None
    return verify_bundle(bundle, trusted, key=key)


def _from_server(args: argparse.Namespace) -> tuple[Parameters, Bundle, VerifiedBundle]:
    """The bundle of the period (from ``--history-since`` if given) exported from the
    server's database as ``audit export`` does, under a fresh checkpoint, and verified with
    the log's own key in the form it will be written."""
    from trusthook.server.config import load_server_config  # noqa: PLC0415 - the server stack
    from trusthook.server.run import open_store  # noqa: PLC0415

    server = load_server_config(Path(args.config))
    validity = args.validity if args.validity is not None else server.validity
    parameters = _parameters(args, validity)
    history = _time(args.history, "--history-since")
    if history is not None and parameters.since is not None and history > parameters.since:
        raise UsageError(
            f"--history-since: got {history}, expected a time at or before --since"
            f" {parameters.since}"
        )
    store = open_store(server)
    try:
        bundle = store.audit_export(
            since=_seconds(history or parameters.since),
            until=_seconds(parameters.until),
            from_size=None,
            now=time.time(),
        )
        key = VerifierKey.parse(store.audit_key())
    finally:
        store.dispose()
    written = Bundle.from_bytes(bundle.to_bytes())
    return parameters, written, verify_bundle(written, key=key)


def _write(path: Path, data: bytes) -> None:
    try:
        write_new(path, data, 0o644)
    except FileExistsError:
        raise UsageError(f"{path} exists; name a new file") from None
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from e


def _print(result: Report, out: Path, bundle_out: Path | None) -> None:
    s, c, p = result.summary, result.checkpoint, result.period
    print(
        f"report of {p.entries} audit entries ({p.start} to {p.end}) in the log {c.origin} at"
        f" tree size {c.size}: {s.hosts} hosts, {s.launches} launches, {s.violations}"
        f" violations, {s.releases} key releases, {s.release_refusals} refused;"
        f" {s.non_compliant_launches} non-compliant launches, {s.moves} moves"
        f" ({s.tampered_moves} tampered, {s.disallowed_moves} disallowed),"
        f" {s.policy_versions} policy versions applied"
    )
    print(f"  report   {out}")
    if bundle_out is not None:
        print(f"  bundle   {bundle_out}")
    for command in result.verification.commands:
        print(f"  verify   {command}")
    if not result.verification.key_vouched:
        print(
            "  warning  nothing outside the bundle vouches for its key:"
            " pass --key or --trusted-checkpoint"
        )
