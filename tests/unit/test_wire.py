"""The client side of the agent protocol against answers our agent never sends.

A stand-in server on a real unix socket plays the misbehaving agent: our own agent cannot be
made to send these answers, which is the point of checking that the client refuses them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from trusthook.cli import main as cli_main
from trusthook.common.wire import exchange
from trusthook.errors import AgentRefusedError, AgentUnavailableError


@pytest.fixture
def fake_agent(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A unix socket that answers each connection with the next queued answer."""
    path = tmp_path / "agent.sock"
    answers: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while conn.recv(65536):
                    pass
                if answers:
                    conn.sendall(answers.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, answers
    stop.set()
    server.close()
    thread.join(timeout=5)


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (b"ok\n" + b"x" * 2000, AgentRefusedError, "answer is larger than 1000 bytes"),
        (b"garbage\n", AgentRefusedError, "sent a malformed answer"),
        (b"", AgentUnavailableError, "closed the connection unanswered"),
        (b"error disk on fire\n", AgentRefusedError, "^disk on fire$"),
    ],
)
def test_answers_the_client_refuses(
    fake_agent: tuple[Path, list[bytes]], answer: bytes, error: type[Exception], message: str
) -> None:
    path, answers = fake_agent
    answers.append(answer)
    with pytest.raises(error, match=message):
        exchange(str(path), b"{}\n", timeout=5, max_answer=1000)


def test_log_verify_refuses_a_malformed_snapshot(
    fake_agent: tuple[Path, list[bytes]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, answers = fake_agent
    answers.append(b'ok\n{"records": [], "pcr_value": "zz", "pcr": 23}')
    config = tmp_path / "trusthook.toml"
    config.write_text(f'[agent]\nsocket = "{path}"\n')
    assert cli_main(["--trusthook-config", str(config), "log", "verify"]) == 1
    assert capsys.readouterr().err.startswith("trusthook: the agent's snapshot is malformed")
