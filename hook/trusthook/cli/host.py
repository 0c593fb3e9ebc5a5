"""``trusthook enroll|attest|status``: this host and the attestation server, through the agent
(which holds the TPM)."""

from __future__ import annotations

import argparse
import json
import os
import socket
from typing import Any

from trusthook.common.config import Config
from trusthook.common.protocol import OP_ATTEST, OP_ENROLL, OP_STATUS, call

AGENT_EXCHANGE_TIMEOUT = 300.0  # enrollment creates keys: seconds on a hardware TPM


def enroll(args: argparse.Namespace, config: Config) -> int:
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


def attest(args: argparse.Namespace, config: Config) -> int:
    verdict = call(str(config.socket), OP_ATTEST, timeout=AGENT_EXCHANGE_TIMEOUT)
    if args.json:
        print(json.dumps(verdict, indent=2))
        return 0 if verdict.get("trusted") is True else 2
    return _print_verdict(verdict)


def status(args: argparse.Namespace, config: Config) -> int:
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
