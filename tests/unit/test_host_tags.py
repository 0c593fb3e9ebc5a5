"""``trusthook server hosts tag``: an operator changes an admitted host's attributes (its
location and tags, which placement selectors read), audited; a mistake changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_admission import HOST, Server, decided, events, make_server
from tests.unit.test_audit_server import config_file
from trusthook.cli import main
from trusthook.errors import ConflictError, UsageError


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path)
    s.admin.admit(ek_sha256=HOST, group="lab", attributes={"region": "eu-1"}, decision=decided())
    yield s
    s.store.dispose()


def attributes(server: Server) -> dict[str, str]:
    admission = server.store.get_admission(HOST)
    assert admission is not None
    return dict(admission.attributes)


def test_tag_sets_and_removes_audited(server: Server) -> None:
    server.admin.tag(HOST, attributes={"rack": "r7"}, remove=[], decision=decided("racked"))
    assert attributes(server) == {"region": "eu-1", "rack": "r7"}
    server.admin.tag(HOST, attributes={"region": "eu-2"}, remove=["rack"], decision=decided())
    assert attributes(server) == {"region": "eu-2"}
    assert events(server)[-2:] == ["tagged", "tagged"]


@pytest.mark.parametrize(
    ("set_", "remove", "error", "message"),
    [
        ({}, ["zone"], UsageError, "--remove zone: the host has no attribute 'zone'"),
        ({"region": "x"}, ["region"], UsageError, "the same command also sets it"),
        ({"region": "eu-1"}, [], ConflictError, "already has exactly these attributes"),
    ],
)
def test_mistakes_change_nothing(
    server: Server,
    set_: dict[str, str],
    remove: list[str],
    error: type[Exception],
    message: str,
) -> None:
    before = events(server)
    with pytest.raises(error, match=message):
        server.admin.tag(HOST, attributes=set_, remove=remove, decision=decided())
    assert attributes(server) == {"region": "eu-1"} and events(server) == before


def test_only_an_admitted_host_is_tagged(server: Server) -> None:
    server.admin.revoke(HOST, decision=decided())
    with pytest.raises(ConflictError, match="cannot tag host .*got state revoked"):
        server.admin.tag(HOST, attributes={"rack": "r7"}, remove=[], decision=decided())


def test_the_command(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(config_file(server, tmp_path))
    argv = ["server", "hosts", "tag", HOST[:12], "zone=dmz", "--config", config]
    assert main([*argv, "--reason", "moved"]) == 0
    assert capsys.readouterr().out == f"tagged: host {HOST}: region=eu-1 zone=dmz\n"
    assert main(["server", "hosts", "tag", HOST[:12], "--reason", "x", "--config", config]) == 1
    assert "give KEY=VALUE to set or --remove KEY" in capsys.readouterr().err
    assert main([*argv[:4], "bad key=1", "--reason", "x", "--config", config]) == 1
    assert "--attribute: got 'bad key=1'" in capsys.readouterr().err
