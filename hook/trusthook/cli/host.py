"""``trusthook enroll|attest|status``: this host and the attestation server, through the agent
(which holds the TPM)."""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path

from trusthook.common.config import Config
from trusthook.common.jsonread import FROM_AGENT
from trusthook.common.messages import (
    AgentHealth,
    EnrollParams,
    EnrollResult,
    HostStatus,
    StatusResult,
)
from trusthook.common.protocol import OP_ATTEST, OP_ENROLL, OP_STATUS, call

AGENT_EXCHANGE_TIMEOUT = 300.0  # enrollment creates keys: seconds on a hardware TPM


def enroll(args: argparse.Namespace, config: Config) -> int:
    params = EnrollParams(
        server=args.server,
        server_ca=Path(os.path.abspath(args.server_ca)),
        hostname=args.hostname or socket.gethostname(),
        note=args.note,
        reenroll=args.reenroll,
    )
    raw = call(
        str(config.socket), OP_ENROLL, timeout=AGENT_EXCHANGE_TIMEOUT, params=params.to_json()
    )
    result = EnrollResult.from_json(raw)
    verb = "re-enrolled" if result.reenrolled else "enrolled"
    print(f"{verb} with {result.server} as host {result.host_id}")
    return 0


def _print_verdict(verdict: HostStatus) -> int:
    host = f"{verdict.host_id} ({verdict.hostname}, group {verdict.group})"
    print(f"host      {host}")
    print(f"status    {'TRUSTED' if verdict.trusted else 'UNTRUSTED'} since {verdict.since}")
    if verdict.trusted:
        print(f"valid     until {verdict.valid_until}")
    for reason in verdict.reasons:
        print(f"reason    {reason}")
    return 0 if verdict.trusted else 2


def attest(args: argparse.Namespace, config: Config) -> int:
    raw = call(str(config.socket), OP_ATTEST, timeout=AGENT_EXCHANGE_TIMEOUT)
    verdict = HostStatus.from_json(raw, source=FROM_AGENT)
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2))
        return 0 if verdict.trusted else 2
    return _print_verdict(verdict)


def _health(health: AgentHealth) -> str:
    """The agent's own health in one line."""
    return (
        f"pid {health.pid} since {health.started_at}: {health.rss_bytes / (1 << 20):.1f} MiB"
        f" resident, {health.cpu_ms / 1000:.2f} s CPU, {health.open_fds} open files,"
        f" {health.threads} threads"
    )


def status(args: argparse.Namespace, config: Config) -> int:
    status = StatusResult.from_json(
        call(str(config.socket), OP_STATUS, timeout=config.hook_timeout)
    )
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    elif status.agent is not None:
        print(f"agent     {_health(status.agent)}")
    if status.enrollment is None:
        if not args.json:
            print("not enrolled: run 'trusthook enroll --server URL --server-ca FILE'")
        return 1
    attempt = status.attempt
    verdict = None if attempt is None else attempt.last_verdict
    error = None if attempt is None else attempt.error
    forked = None if attempt is None else attempt.audit_error
    if args.json:
        return 0 if verdict is not None and verdict.trusted and not error and not forked else 2
    print(f"server    {status.enrollment.server}")
    print(f"attempt   {'none yet' if attempt is None else attempt.last_attempt}")
    if error:
        print(f"error     {error}")
    if forked:
        print(f"audit     REWRITTEN: {forked}")
    elif attempt is not None and attempt.audit_size is not None:
        print(
            f"audit     the server's log is consistent with what this host saw, at size"
            f" {attempt.audit_size}"
        )
    if verdict is None:
        print("status    UNKNOWN: no verdict from the server yet")
        return 2
    code = _print_verdict(verdict)
    return 2 if error or forked else code
