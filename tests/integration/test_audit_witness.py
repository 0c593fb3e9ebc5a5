"""``trusthook audit witness`` against a real server process over mutual TLS: it cosigns the
log's checkpoint, the log grows, it cosigns the larger one after checking the consistency
proof, and ``audit verify --witness-key`` accepts a bundle against the cosigned checkpoint.
Then the server's operator rewrites the log's history in the database (signed with the real
key, every checkpoint well-formed): the witness refuses the shorter log as a rollback and the
longer, different one as inconsistent, keeps its state, and saves the evidence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import AttestServer
from tests.support.auditlog import grow, rewrite
from trusthook.audit import WitnessKey, open_checkpoint, verify_cosignature
from trusthook.cli import main
from trusthook.server.auditlog import load_signer
from trusthook.server.config import load_server_config
from trusthook.server.run import Paths, operator_certificate

pytestmark = pytest.mark.integration


def test_a_witness_cosigns_a_growing_log_and_refuses_a_rewritten_one(
    attest_server: AttestServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_server_config(attest_server.config_path)
    log_key = load_signer(Paths(config.state_dir).audit_key).verifier_key
    key, cert = operator_certificate(config, "witness", tmp_path / "operator")
    state = tmp_path / "witness"

    assert main(["audit", "witness", "init", "--state", str(state), "--name", "w.example/1"]) == 0
    witness_key = WitnessKey.parse(capsys.readouterr().out)
    assert (state / "witness.key").stat().st_mode & 0o777 == 0o600
    assert WitnessKey.parse((state / "witness.vkey").read_text()) == witness_key
    assert main(["audit", "witness", "init", "--state", str(state), "--name", "w.example/1"]) == 1
    assert "already holds a witness" in capsys.readouterr().err

    run = [
        "audit",
        "witness",
        "run",
        "--state",
        str(state),
        "--server",
        attest_server.url,
        "--log-key",
        log_key.encode(),
        "--server-ca",
        str(attest_server.ca_cert),
        "--client-cert",
        str(cert),
        "--client-key",
        str(key),
        "--once",
    ]
    grow(attest_server.config_path, 5)
    assert main(run) == 1  # no state yet, and no basis given
    assert "no checkpoint to start from" in capsys.readouterr().err
    assert main([*run, "--trust-on-first-use"]) == 0
    out = capsys.readouterr().out
    assert "(nothing: trusted on first use)" in out
    first = open_checkpoint((state / "checkpoint").read_bytes(), log_key).checkpoint
    assert f"at tree size {first.size} " in out
    verify_cosignature((state / "checkpoint").read_bytes(), witness_key)

    assert main(run) == 0  # nothing new: the same tree, cosigned again
    assert f"at tree size {first.size} (the same tree as" in capsys.readouterr().out

    grow(attest_server.config_path, 7)
    assert main(run) == 0
    out = capsys.readouterr().out
    cosigned = (state / "checkpoint").read_bytes()
    second = open_checkpoint(cosigned, log_key).checkpoint
    assert second.size >= first.size + 7
    assert (
        f"at tree size {second.size} (extends the checkpoint it last cosigned, tree size"
        f" {first.size})" in out
    )
    verify_cosignature(cosigned, witness_key)

    # an auditor who trusts the witness checks a bundle against its cosigned checkpoint
    grow(attest_server.config_path, 2)
    bundle = tmp_path / "bundle.json"
    export = ["audit", "export", "--config", str(attest_server.config_path)]
    assert main([*export, "--from-size", str(second.size), str(bundle)]) == 0
    capsys.readouterr()
    verify = ["audit", "verify", str(bundle), "--trusted-checkpoint", str(state / "checkpoint")]
    assert main([*verify, "--witness-key", witness_key.encode()]) == 0
    out = capsys.readouterr().out
    assert f"extends  the trusted checkpoint at tree size {second.size}" in out
    assert f"witness  {witness_key.label} cosigned the trusted checkpoint" in out
    other = tmp_path / "other"
    assert main(["audit", "witness", "init", "--state", str(other), "--name", "w.example/2"]) == 0
    stranger = capsys.readouterr().out.strip()
    assert main([*verify, "--witness-key", witness_key.encode(), "--witness-key", stranger]) == 1
    err = capsys.readouterr().err
    assert "trusted checkpoint: checkpoint cosignatures got" in err
    assert "expected one by the witness w.example/2+" in err
    assert len(err.strip().splitlines()) == 1

    # a second witness starts from the checkpoint the first cosigned
    start = ["--state", str(other), "--trusted-checkpoint", str(state / "checkpoint")]
    assert main([*run[:3], *start, *run[5:]]) == 0
    assert (
        f"(extends the trusted checkpoint it was given, tree size {second.size})"
        in capsys.readouterr().out
    )
    verify_cosignature((other / "checkpoint").read_bytes(), WitnessKey.parse(stranger))

    # the operator rewrites the history, shorter: a rollback
    rewrite(attest_server.config_path, second.size - 3)
    assert main(run) == 2
    err = capsys.readouterr().err
    assert (
        f"refused the log's checkpoint: rollback: tree size got {second.size - 3}, expected at"
        f" least {second.size}" in err
    )
    assert len(err.strip().splitlines()) == 1
    assert (state / "checkpoint").read_bytes() == cosigned  # the state is kept
    notes, record = evidence(state, err)
    assert record["reason"] == "rollback"
    assert notes["previous.note"] == cosigned.decode()

    # then longer than what the witness cosigned, but not its extension: inconsistent
    grow(attest_server.config_path, 10, "ef")
    assert main(run) == 2
    err = capsys.readouterr().err
    assert (
        f"inconsistent: tree size {second.size + 7} does not extend the checkpoint it last"
        f" cosigned, tree size {second.size}" in err
    )
    assert (state / "checkpoint").read_bytes() == cosigned
    notes, record = evidence(state, err)
    assert record["reason"] == "inconsistent" and record["old_size"] == second.size
    assert record["consistency_proof"]  # what the server answered, for the auditor
    latest = open_checkpoint(notes["latest.note"], log_key).checkpoint
    assert latest.size == second.size + 7
    assert notes["previous.note"] == cosigned.decode()


def evidence(state: Path, err: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The notes and the refusal record in the evidence directory the refusal line names."""
    directory = Path(err.strip().rsplit(" ", 1)[1])
    assert directory.parent == state and directory.name.startswith("evidence-")
    files = {p.name: p.read_text() for p in directory.iterdir()}
    assert set(files) == {"latest.note", "previous.note", "refusal.json"}
    record: dict[str, Any] = json.loads(files.pop("refusal.json"))
    return files, record
