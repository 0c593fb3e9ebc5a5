"""The compiled ``trusthook-hook`` (native/trusthook_hook.c) against peers the test runs on a
real unix socket: what it sends, and how it turns every answer (and no answer) into an exit
status and one line. The agent itself answering it is tested in tests/integration. The program
is the installed one, or ``$TRUSTHOOK_HOOK_PROGRAM`` (scripts/test-native-sanitized points it
at an ASan + UBSan build)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.peers import nobody_listening

PROGRAM = os.environ.get("TRUSTHOOK_HOOK_PROGRAM") or str(
    Path(sys.executable).parent / "trusthook-hook"
)
MAX = 1 << 20
USAGE = "usage: trusthook-hook [--socket PATH] [--timeout SECONDS] [--stage STAGE] [--audit]"
STATE = b'{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":7,"bundle":"/b"}'


@dataclass
class Peer:
    """A listener on ``path`` that reads one request to its end and answers ``answer(request)``
    (None: close without answering; ``hang``: never answer)."""

    path: Path
    answer: Callable[[bytes], bytes | None] = lambda request: b"ok\n{}"
    hang: bool = False
    requests: list[bytes] = field(default_factory=list)

    def serve(self) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen(8)
        self._server = server
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
                request = b"".join(chunks)
                self.requests.append(request)
                if self.hang:
                    time.sleep(3)  # the hook gives up before
                    continue
                answer = self.answer(request)
                if answer is not None:
                    conn.sendall(answer)

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture
def peer(agent_dir: Path) -> Iterator[Peer]:
    p = Peer(agent_dir / "agent.sock")
    p.serve()
    yield p
    p.close()


def hook(
    *args: str, stdin: bytes = STATE, socket_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [PROGRAM, *(["--socket", str(socket_path)] if socket_path else []), *args]
    result = subprocess.run(argv, input=stdin, capture_output=True, check=False, timeout=60)
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode(),
        result.stderr.decode("utf-8", "replace"),
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    return result.stderr.rstrip("\n")


def test_it_sends_a_header_and_the_state_verbatim(peer: Peer) -> None:
    for args, audit, stage in (
        ((), False, "createRuntime"),
        (("--stage", "prestart", "--audit"), True, "prestart"),
        (("--stage=createRuntime", "--timeout=2.5"), False, "createRuntime"),
    ):
        result = hook(*args, socket_path=peer.path)
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        header, _, body = peer.requests[-1].partition(b"\n")
        assert json.loads(header) == {"audit": audit, "op": "hook", "stage": stage, "version": 1}
        assert body == STATE


def test_a_state_of_the_largest_size_passes_and_one_byte_more_is_refused(peer: Peer) -> None:
    assert hook(stdin=b" " * MAX, socket_path=peer.path).returncode == 0
    assert peer.requests[-1].endswith(b" " * MAX)
    result = hook(stdin=b" " * (MAX + 1), socket_path=peer.path)
    assert result.returncode == 1
    assert one_line(result) == f"trusthook-hook: state JSON on stdin is larger than {MAX} bytes"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nope"], f"unknown argument '--nope'; {USAGE}"),
        (["--audit=yes"], f"unknown argument '--audit=yes'; {USAGE}"),
        (["--stage", "poststop"], "--stage must be one of createRuntime, prestart, got 'poststop'"),
        (["--timeout", "-1"], "--timeout must be a number of seconds > 0, got '-1'"),
        (["--timeout", "nan"], "--timeout must be a number of seconds > 0, got 'nan'"),
        (["--timeout", "inf"], "--timeout must be a number of seconds > 0, got 'inf'"),
        (["--timeout", "1e9"], "--timeout must be a number of seconds > 0, got '1e9'"),
        (["--timeout", "2s"], "--timeout must be a number of seconds > 0, got '2s'"),
        (["--timeout"], "--timeout must be a number of seconds > 0, got ''"),
    ],
)
def test_bad_arguments_refuse_and_audit_mode_forgives_them(
    argv: list[str], message: str, peer: Peer
) -> None:
    result = hook(*argv, socket_path=peer.path)
    assert result.returncode == 1 and one_line(result) == f"trusthook-hook: {message}"
    forgiven = hook("--audit", *argv, socket_path=peer.path)
    assert forgiven.returncode == 0
    assert (
        one_line(forgiven) == f"trusthook-hook: audit mode, container starts unmeasured: {message}"
    )
    assert peer.requests == []  # a bad argument never reaches the agent


def test_help_names_the_usage() -> None:
    result = hook("--help")
    assert result.returncode == 0 and result.stdout.splitlines()[0] == USAGE


@pytest.mark.parametrize(
    ("answer", "code", "line"),
    [
        (b"ok\n{}", 0, None),
        (b"ok\n", 0, None),
        (b"error launch refused: image not allowed", 1, "launch refused: image not allowed"),
        (b"error x\nmore", 1, "x"),
        (b"okay\n{}", 1, "trusthook agent on {path} sent a malformed answer"),
        (b"hello", 1, "trusthook agent on {path} sent a malformed answer"),
        (None, 1, "trusthook agent on {path} closed the connection unanswered"),
    ],
)
def test_answers(peer: Peer, answer: bytes | None, code: int, line: str | None) -> None:
    peer.answer = lambda request: answer
    result = hook(socket_path=peer.path)
    assert result.returncode == code
    if line is None:
        assert result.stderr == ""
    else:
        assert one_line(result) == "trusthook-hook: " + line.format(path=peer.path)


def test_the_agents_refusal_is_final_in_audit_mode(peer: Peer) -> None:
    peer.answer = lambda request: b"error mode 'audit' is not this host's"
    result = hook("--audit", socket_path=peer.path)
    assert result.returncode == 1 and one_line(result) == (
        "trusthook-hook: mode 'audit' is not this host's"
    )


def test_an_unmeasured_answer_is_decoded_into_one_line(peer: Peer) -> None:
    reason = 'measuring failed: "rootfs" \u00e9 \U0001f600 \\ tab\tnew\nline \x01'
    answer = json.dumps({"unmeasured": reason}, separators=(",", ":"))  # as the agent writes it
    peer.answer = lambda request: b"ok\n" + answer.encode()
    result = hook("--audit", socket_path=peer.path)
    assert result.returncode == 0
    assert one_line(result) == (
        "trusthook-hook: audit mode, container starts unmeasured: measuring failed:"
        ' "rootfs" \u00e9 \U0001f600 \\ tab new line ?'
    )


def test_answers_up_to_the_limit(peer: Peer) -> None:
    peer.answer = lambda request: b"ok\n" + b" " * (MAX - 3)
    assert hook(socket_path=peer.path).returncode == 0
    peer.answer = lambda request: b"ok\n" + b" " * (MAX - 2)
    result = hook(socket_path=peer.path)
    assert result.returncode == 1
    assert (
        one_line(result) == f"trusthook-hook: trusthook agent's answer is larger than {MAX} bytes"
    )


def test_an_agent_that_does_not_answer_times_out(peer: Peer) -> None:
    peer.hang = True
    result = hook("--timeout", "0.3", socket_path=peer.path)
    assert result.returncode == 1
    assert (
        one_line(result)
        == f"trusthook-hook: trusthook agent on {peer.path} did not answer within 0.3s"
    )
    audit = hook("--timeout", "0.3", "--audit", socket_path=peer.path)
    assert (
        audit.returncode == 0 and "container starts unmeasured: trusthook agent on" in audit.stderr
    )


def test_no_agent(agent_dir: Path) -> None:
    missing = agent_dir / "agent.sock"
    result = hook(socket_path=missing)
    assert result.returncode == 1 and one_line(result) == (
        f"trusthook-hook: agent socket {missing} does not exist; is the trusthook agent running?"
    )
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(missing))
    stale.close()  # the file stays, nothing listens
    result = hook(socket_path=missing)
    assert result.returncode == 1 and one_line(result) == (
        f"trusthook-hook: nothing listens on agent socket {missing}; is the trusthook agent"
        " running?"
    )
    audit = hook("--audit", socket_path=missing)
    assert audit.returncode == 0 and "container starts unmeasured: nothing listens" in audit.stderr


def test_a_socket_directory_others_can_write_is_refused(agent_dir: Path, peer: Peer) -> None:
    agent_dir.chmod(0o1777)
    result = hook(socket_path=peer.path)
    assert result.returncode == 1 and one_line(result) == (
        f"trusthook-hook: agent socket directory {agent_dir} is not root's alone (owner uid 0,"
        " mode 1777); refusing to talk to an agent there"
    )
    assert peer.requests == []


def test_a_peer_that_is_not_root_is_refused_even_in_audit_mode(agent_dir: Path) -> None:
    path = agent_dir / "agent.sock"
    with nobody_listening(path):
        for args in ((), ("--audit",)):
            result = hook(*args, socket_path=path)
            assert result.returncode == 1 and one_line(result) == (
                f"trusthook-hook: the process listening on agent socket {path} runs as uid"
                " 65534, not root; refusing to talk to it"
            )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(answer=st.binary(max_size=300) | st.builds(lambda b: b"ok\n" + b, st.binary(max_size=200)))
def test_any_answer_ends_in_a_status_and_at_most_one_line(peer: Peer, answer: bytes) -> None:
    peer.answer = lambda request: answer
    for args in ((), ("--audit",)):
        result = hook(*args, socket_path=peer.path)
        assert result.returncode in (0, 1)
        assert result.stderr.count("\n") <= 1, result.stderr
