"""``trusthook server workloads list|show``: the answers of ``GET /v1/workloads[/{name}]``,
read from the server's database (docs/policy.md §9)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trusthook.common.config import Config
from trusthook.server import workloads
from trusthook.server.config import load_server_config
from trusthook.server.policy import Policies
from trusthook.server.store import Store


def _store(args: argparse.Namespace) -> Store:
    return Store(load_server_config(Path(args.config)).database_url)


def list(args: argparse.Namespace, _config: Config) -> int:
    store = _store(args)
    try:
        answer = workloads.workload_list(store, Policies(store).in_force())
    finally:
        store.dispose()
    if args.json:
        print(json.dumps(answer.model_dump(), indent=2))
        return 0
    print(f"policy version {answer.policy_version or 'none applied'}")
    for w in answer.workloads:
        where = "in the policy" if w.in_policy else "NOT in the policy"
        print(
            f"{w.name}  {where}  {w.instances} instances, {w.non_compliant} not compliant,"
            f" on {len(w.hosts)} hosts  last {w.last_seen or '-'}"
        )
    return 0


def show(args: argparse.Namespace, _config: Config) -> int:
    store = _store(args)
    try:
        answer = workloads.workload_detail(store, Policies(store).in_force(), args.name)
    finally:
        store.dispose()
    if args.json:
        print(json.dumps(answer.model_dump(), indent=2))
        return 0
    s = answer.summary
    plural = "" if s.instances == 1 else "s"
    print(f"workload {s.name}: {s.instances} instance{plural}, {s.non_compliant} not compliant")
    for lineage in answer.lineages:
        moves = ", ".join(f"{n} {kind}" for kind, n in sorted(lineage.moves.items())) or "none"
        print(
            f"  {lineage.identity}: created {lineage.created_at} on {lineage.hostname}"
            f" ({lineage.host_id[:16]}), rootfs {lineage.rootfs_digest}; moves: {moves}"
        )
    for i in answer.instances:
        state = "compliant" if i.compliant else "NOT compliant" if i.compliant is False else "-"
        print(f"  {i.at}  {i.hostname} ({i.host_id[:16]})  {i.container}  {i.move or '-'}  {state}")
        for r in i.reasons:
            print(f"      {r.message}")
    return 0
