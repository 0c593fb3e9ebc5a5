"""Requests to the agent from trusthook's own commands (docs/api.md).

The hook and the shim build their requests by hand (``hook``, ``prepare``: native/); everything
else goes through ``call``,
whose result the caller reads into its message (``trusthook.common.messages``).
"""

from __future__ import annotations

import json
from typing import Any

from trusthook.common.jsonobject import parse_object
from trusthook.common.wire import exchange
from trusthook.errors import AgentRefusedError

PROTOCOL_VERSION = 1
MAX_RESULT_BYTES = 1 << 30  # a snapshot carries the whole log of the boot
OP_HOOK = "hook"  # built by hand in native/trusthook_hook.c
OP_SNAPSHOT = "snapshot"
OP_ENROLL = "enroll"
OP_ATTEST = "attest"
OP_STATUS = "status"
OP_PREPARE = "prepare"  # built by hand in native/trusthook_runtime.c


def header(op: str, params: dict[str, object] | None = None) -> bytes:
    """The header line of a body-less request."""
    message: dict[str, object] = {"version": PROTOCOL_VERSION, "op": op}
    if params is not None:
        message["params"] = params
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def call(
    path: str, op: str, *, timeout: float, params: dict[str, object] | None = None
) -> dict[str, Any]:
    """Send a body-less request and return its result, a JSON object."""
    raw = exchange(path, header(op, params), timeout=timeout, max_answer=MAX_RESULT_BYTES)
    return parse_object(raw, "agent result", AgentRefusedError)
