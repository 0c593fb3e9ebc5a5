"""``trusthook server policy``: a manifest is checked before anything is stored, each apply is
the next version (audited, in the audit log), a re-apply of the same meaning is refused, and the
versions read back verbatim, with their differences."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_admission import Server, make_server
from tests.unit.test_audit_server import config_file, signed_store
from trusthook.audit import EventType
from trusthook.cli import main
from trusthook.policy.manifest import parse_manifest

EXAMPLE = Path(__file__).parents[2] / "oci-config" / "trusthook-policy.toml"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path)
    yield s
    s.store.dispose()


def run(*args: str) -> int:
    return main(["server", "policy", *args])


def test_check_names_the_line_and_stores_nothing(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("zone != dmz", "zone =! dmz"))
    assert run("check", str(bad)) == 1
    assert f"{bad}:28: workload 'payments/api': placement 'zone =! dmz'" in capsys.readouterr().err
    config = config_file(server, tmp_path)
    assert run("apply", str(bad), "--config", str(config)) == 1
    assert server.store.policy_history() == []
    assert run("check", str(EXAMPLE)) == 0
    digest = parse_manifest(EXAMPLE.read_bytes(), "x").digest
    assert capsys.readouterr().out == f"OK: {EXAMPLE}: 2 workloads, digest {digest}\n"


def test_versions_apply_show_diff_history(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(config_file(server, tmp_path))
    assert run("show", "--config", config) == 1
    assert "no policy has been applied yet" in capsys.readouterr().err
    assert run("apply", str(EXAMPLE), "--config", config, "--reason", "first") == 0
    assert "applied: policy version 1, 2 workloads" in capsys.readouterr().out
    assert run("apply", str(EXAMPLE), "--config", config) == 1  # the same meaning again
    assert "version 1, is already sha256:" in capsys.readouterr().err
    second = tmp_path / "second.toml"
    second.write_text(
        "# reviewed by the officer\n"
        + EXAMPLE.read_text().replace('"payments-api"', '"payments-api", "pay/*"')
    )
    assert run("diff", str(second), "--config", config) == 1
    out = capsys.readouterr().out
    assert "+# reviewed by the officer" in out and "a different policy from version 1:" in out
    assert "workload 'payments/api': match: ['payments/api-*', 'payments-api'] ->" in out
    assert run("apply", str(second), "--config", config) == 0
    capsys.readouterr()
    assert run("diff", str(second), "--config", config) == 0
    assert "the same policy as version 2" in capsys.readouterr().out
    assert run("show", "--config", config, "--version", "1") == 0
    assert capsys.readouterr().out == EXAMPLE.read_text()  # verbatim, comments and all
    assert run("show", "--config", config, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 2 and shown["manifest"]["workloads"][0]["match"][-1] == "pay/*"
    assert run("history", "--config", config, "--json") == 0
    versions = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["reason"]) for v in versions] == [(1, "first"), (2, "")]
    assert run("show", "--config", config, "--version", "7") == 1
    assert "there is no policy version 7" in capsys.readouterr().err


def test_each_version_is_an_audit_entry(server: Server, tmp_path: Path) -> None:
    config = str(config_file(server, tmp_path))
    assert run("apply", str(EXAMPLE), "--config", config, "--reason", "go live") == 0
    store = signed_store(server)
    try:
        bundle = store.audit_export(since=None, until=None, from_size=None, now=2e9)
    finally:
        store.dispose()
    (entry,) = [e for e in bundle.entries if e.event is EventType.POLICY_VERSION]
    digest = parse_manifest(EXAMPLE.read_bytes(), "x").digest
    assert entry.detail["version"] == 1 and entry.detail["digest"] == digest
    assert entry.detail["reason"] == "go live" and entry.subject.kind.value == "operator"
