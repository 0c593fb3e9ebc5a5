"""``trusthook-hook``: the OCI hook (createRuntime or prestart) run on every container start.

It passes the OCI state from stdin to the node agent, which parses it, measures the container
and records it. Everything the hook does is set by its arguments, which the runtime config
records (and so measures): ``--socket PATH``, ``--timeout SECONDS``, ``--stage STAGE``,
``--audit``. Fails closed: any failure is one line on stderr and exit status 1, and the runtime
does not start the container. The hook's request carries its mode, which the agent refuses
unless it is the host's own (``hook.mode``): audit mode is the host's setting, never the
bundle's. With ``--audit``, a failure to reach the agent is logged and the container starts;
whatever the agent answers is final (in audit mode it answers that the container starts
unmeasured when measuring fails).

Imports only ``sys`` and trusthook's ``_socket``-only wire module: this runs on every start.
"""

from __future__ import annotations

import sys

from trusthook.common.wire import MAX_MESSAGE_BYTES, STAGES, exchange
from trusthook.errors import AgentRefusedError, TrusthookError, UsageError

DEFAULT_SOCKET = "/run/trusthook/agent.sock"
DEFAULT_TIMEOUT = 30.0
UNMEASURED = b'{"unmeasured":"'  # the agent's answer in audit mode when measuring failed
USAGE = "usage: trusthook-hook [--socket PATH] [--timeout SECONDS] [--stage STAGE] [--audit]"


class HookArgs:
    """The hook's parsed arguments."""

    def __init__(self, argv: list[str]) -> None:
        self.socket = DEFAULT_SOCKET
        self.timeout = DEFAULT_TIMEOUT
        self.stage = "createRuntime"
        self.audit = False
        it = iter(argv)
        for arg in it:
            name, eq, value = arg.partition("=")
            if name == "--audit" and not eq:
                self.audit = True
                continue
            if name not in ("--socket", "--timeout", "--stage"):
                raise UsageError(f"unknown argument {arg!r}; {USAGE}")
            if not eq:
                value = next(it, "")
            if name == "--socket":
                self.socket = value
            elif name == "--stage":
                if value not in STAGES:
                    raise UsageError(f"--stage must be one of {', '.join(STAGES)}, got {value!r}")
                self.stage = value
            else:
                self.timeout = _positive(value)


def _positive(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 1e9:  # also refuses nan and inf
        raise UsageError(f"--timeout must be a number of seconds > 0, got {value!r}")
    return seconds


def request(stage: str, state: bytes, *, audit: bool) -> bytes:
    """The hook's request: a header naming the stage (from a fixed list, so no escaping is
    needed) and the hook's mode, then the OCI state exactly as the runtime wrote it."""
    mode = b"true" if audit else b"false"
    return b'{"audit":%s,"op":"hook","stage":"%s","version":1}\n' % (mode, stage.encode()) + state


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    audit = "--audit" in argv  # bad arguments in audit mode are forgiven too
    try:
        args = HookArgs(argv)
        state = sys.stdin.buffer.read(MAX_MESSAGE_BYTES + 1)
        if len(state) > MAX_MESSAGE_BYTES:
            raise UsageError(f"state JSON on stdin is larger than {MAX_MESSAGE_BYTES} bytes")
        result = exchange(
            args.socket, request(args.stage, state, audit=audit), timeout=args.timeout
        )
    except AgentRefusedError as e:  # the agent decided: whatever the hook's own mode says
        print(f"trusthook-hook: {e}", file=sys.stderr)
        return 1
    except TrusthookError as e:  # no agent to ask: the hook's mode decides
        if audit:
            _unmeasured(str(e))
            return 0
        print(f"trusthook-hook: {e}", file=sys.stderr)
        return 1
    if result.startswith(UNMEASURED):  # the host is in audit mode and measuring failed
        import json  # noqa: PLC0415 - only on the audit path

        _unmeasured(str(json.loads(result).get("unmeasured")))
    return 0


def _unmeasured(reason: str) -> None:
    import syslog  # noqa: PLC0415 - only on the audit path

    message = f"trusthook-hook: audit mode, container starts unmeasured: {reason}"
    syslog.syslog(syslog.LOG_WARNING, message)
    print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
