"""``trusthook server policy ...``: check a workload policy manifest, apply it as the server's
next policy version (audited), and read the versions back (docs/policy.md §7)."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path

from trusthook.cli.server import operator_identity
from trusthook.common.clock import iso_from_timestamp
from trusthook.common.config import Config
from trusthook.errors import NotFoundError, PolicyError
from trusthook.policy.manifest import Manifest, changes, parse_manifest
from trusthook.server.admission import check_text
from trusthook.server.config import load_server_config
from trusthook.server.records import PolicyVersion
from trusthook.server.store import Store


def _read(path: str) -> tuple[str, Manifest]:
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise PolicyError(f"cannot read the policy manifest {path}: {e.strerror}") from e
    manifest = parse_manifest(raw, path)
    return raw.decode("utf-8"), manifest


def _store(args: argparse.Namespace) -> Store:
    return Store(load_server_config(Path(args.config)).database_url)


def _version(store: Store, number: int | None) -> PolicyVersion:
    found = store.policy_version(number)
    if found is None:
        raise NotFoundError(
            "no policy has been applied yet ('trusthook server policy apply FILE')"
            if number is None
            else f"there is no policy version {number} ('trusthook server policy history')"
        )
    return found


def check(args: argparse.Namespace, _config: Config) -> int:
    _, manifest = _read(args.file)
    print(f"OK: {args.file}: {len(manifest.workloads)} workloads, digest {manifest.digest}")
    return 0


def apply(args: argparse.Namespace, _config: Config) -> int:
    source, manifest = _read(args.file)
    reason = check_text(args.reason, "--reason", empty=True)
    store = _store(args)
    try:
        version = store.apply_policy(
            source=source,
            digest=manifest.digest,
            by=operator_identity(),
            reason=reason,
            now=time.time(),
        )
    finally:
        store.dispose()
    print(
        f"applied: policy version {version}, {len(manifest.workloads)} workloads,"
        f" digest {manifest.digest}"
    )
    return 0


def show(args: argparse.Namespace, _config: Config) -> int:
    store = _store(args)
    try:
        version = _version(store, args.version)
    finally:
        store.dispose()
    if args.json:
        manifest = parse_manifest(version.source.encode("utf-8"), f"version {version.version}")
        print(json.dumps({**_meta(version), "manifest": manifest.to_json()}, indent=2))
    else:
        sys.stdout.write(version.source)
    return 0


def diff(args: argparse.Namespace, _config: Config) -> int:
    source, manifest = _read(args.file)
    store = _store(args)
    try:
        version = _version(store, args.version)
    finally:
        store.dispose()
    name = f"version {version.version}"
    old = parse_manifest(version.source.encode("utf-8"), name)
    sys.stdout.writelines(
        difflib.unified_diff(
            version.source.splitlines(keepends=True),
            source.splitlines(keepends=True),
            fromfile=name,
            tofile=args.file,
        )
    )
    lines = changes(old, manifest)
    if not lines:
        print(f"the same policy as {name} ({manifest.digest})")
        return 0
    print(f"a different policy from {name}:")
    for line in lines:
        print(f"  {line}")
    return 1


def history(args: argparse.Namespace, _config: Config) -> int:
    store = _store(args)
    try:
        versions = store.policy_history()
    finally:
        store.dispose()
    if args.json:
        print(json.dumps([_meta(v) for v in versions], indent=2))
        return 0
    if not versions:
        print("no policy has been applied yet")
    for v in versions:
        why = f"  {v.reason}" if v.reason else ""
        print(
            f"{v.version:>4}  {iso_from_timestamp(v.applied_at)}  {v.digest}  {v.applied_by}{why}"
        )
    return 0


def _meta(version: PolicyVersion) -> dict[str, object]:
    return {
        "version": version.version,
        "digest": version.digest,
        "applied_at": iso_from_timestamp(version.applied_at),
        "applied_by": version.applied_by,
        "reason": version.reason,
    }
