"""``trusthook audit verify``: check an exported audit bundle offline, with no server and no
database; ``audit export`` and ``audit key``: the operator's side, on the server's database
and log key (docs/audit.md)."""

from __future__ import annotations

import argparse
import base64
import gc
import time
from datetime import datetime
from pathlib import Path

from trusthook.audit.bundle import Bundle
from trusthook.audit.note import VerifierKey
from trusthook.audit.verify import KeyAnchor, verify_bundle
from trusthook.audit.witness import WitnessKey
from trusthook.common.config import Config
from trusthook.common.files import write_new
from trusthook.errors import AuditLogError, UsageError


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise AuditLogError(f"cannot read the {what} {path}: {e.strerror}") from e


def verify(args: argparse.Namespace, config: Config) -> int:
    # A bundle becomes a few hundred thousand small objects that live until the command ends
    # and form no cycles: the cyclic collector would only walk them over and over, a third of
    # the run time. Off while verifying; back on after (tests call this in their process).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _verify(args)
    finally:
        if collecting:
            gc.enable()


def _verify(args: argparse.Namespace) -> int:
    if args.witness_key and not args.trusted_checkpoint:
        raise UsageError("--witness-key: got no --trusted-checkpoint, expected the one it cosigned")
    witnesses = [WitnessKey.parse(text) for text in args.witness_key]
    bundle = Bundle.from_bytes(_read(args.bundle, "bundle"))
    trusted_bundle = None
    if args.trusted_bundle:
        raw = _read(args.trusted_bundle, "trusted bundle")
        try:
            trusted_bundle = Bundle.from_bytes(raw)
        except AuditLogError as e:
            raise AuditLogError(f"trusted bundle: {e}") from e
    trusted_checkpoint = None
    if args.trusted_checkpoint:
        trusted_checkpoint = _read(args.trusted_checkpoint, "trusted checkpoint")
    key = VerifierKey.parse(args.key) if args.key else None
    result = verify_bundle(
        bundle, trusted_checkpoint, trusted_bundle=trusted_bundle, key=key, witnesses=witnesses
    )
    checkpoint = result.checkpoint
    print(
        f"OK: {len(result.entries)} audit entries ({result.selection.describe()}) are in the log"
        f" {checkpoint.origin} at tree size {checkpoint.size}"
    )
    print(f"  root     {base64.b64encode(checkpoint.root).decode()}")
    print(f"  key      {result.key.encode()} ({result.anchor.value})")
    if result.extends is not None:
        print(f"  extends  the trusted checkpoint at tree size {result.extends.size}")
    elif result.unchecked_consistency_from is not None:
        print(
            f"  unchecked  its consistency proof from tree size"
            f" {result.unchecked_consistency_from} (give --trusted-checkpoint)"
        )
    for witness in result.witnessed_by:
        print(f"  witness  {witness.label} cosigned the trusted checkpoint")
    if result.anchor is KeyAnchor.BUNDLE:
        print(
            "  warning  nothing outside the bundle vouches for its key:"
            " pass --key, --trusted-checkpoint or --trusted-bundle"
        )
    return 0


def _moment(text: str | None, what: str) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{what}: got {text[:40]!r}, expected an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise UsageError(f"{what}: got {text[:40]!r}, expected a time with its UTC offset")
    return moment.timestamp()


def export(args: argparse.Namespace, config: Config) -> int:
    from trusthook.server.config import load_server_config  # noqa: PLC0415 - the server stack
    from trusthook.server.run import open_store  # noqa: PLC0415

    since, until = _moment(args.since, "--since"), _moment(args.until, "--until")
    store = open_store(load_server_config(Path(args.config)))
    try:
        bundle = store.audit_export(
            since=since, until=until, from_size=args.from_size, now=time.time()
        )
    finally:
        store.dispose()
    try:
        write_new(Path(args.out), bundle.to_bytes(), 0o644)
    except FileExistsError:
        raise UsageError(f"{args.out} exists; name a new file") from None
    first, last = bundle.entries[0].index, bundle.entries[-1].index
    print(f"exported {len(bundle.entries)} audit entries ({first}..{last}) to {args.out}")
    return 0


def key(args: argparse.Namespace, config: Config) -> int:
    from trusthook.server.auditlog import load_signer  # noqa: PLC0415
    from trusthook.server.config import load_server_config  # noqa: PLC0415
    from trusthook.server.run import Paths  # noqa: PLC0415

    server = load_server_config(Path(args.config))
    print(load_signer(Paths(server.state_dir).audit_key).verifier_key.encode())
    return 0
