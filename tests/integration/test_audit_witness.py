"""``trusthook audit witness`` against a real server process over mutual TLS: it cosigns the
log's checkpoint, the log grows, it cosigns the larger one after checking the consistency
proof, and ``audit verify --witness-key`` accepts a bundle against the cosigned checkpoint.
Then the server's operator rewrites the log's history in the database (signed with the real
key, every checkpoint well-formed): the witness refuses the shorter log as a rollback and the
longer, different one as inconsistent, keeps its state, and saves the evidence."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import AttestServer
from tests.support.auditlog import grow, rewrite
from trusthook.audit import VerifierKey, WitnessKey, open_checkpoint, verify_cosignature
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


def test_a_witness_with_an_interval_keeps_cosigning_until_it_must_refuse(
    attest_server: AttestServer, tmp_path: Path
) -> None:
    """``run --interval``: a process that cosigns again each round, follows the log as it
    grows, and ends with status 2 on the first refusal (the log rewritten shorter), keeping
    the last checkpoint it cosigned."""
    config = load_server_config(attest_server.config_path)
    log_key = load_signer(Paths(config.state_dir).audit_key).verifier_key
    key, cert = operator_certificate(config, "witness", tmp_path / "operator")
    state = tmp_path / "witness"
    assert main(["audit", "witness", "init", "--state", str(state), "--name", "w.example/i"]) == 0
    grow(attest_server.config_path, 3)
    command = [
        sys.executable, "-m", "trusthook.cli", "audit", "witness", "run",
        "--state", str(state), "--server", attest_server.url, "--log-key", log_key.encode(),
        "--server-ca", str(attest_server.ca_cert), "--client-cert", str(cert),
        "--client-key", str(key), "--trust-on-first-use", "--interval", "0.2",
    ]  # fmt: skip
    witness = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = cosigned_size(state, log_key, above=0)
        grow(attest_server.config_path, 4)
        # a later round, on its own (one may fall while the log grows: wait for all 4)
        second = cosigned_size(state, log_key, above=first + 3)
        kept = open_checkpoint((state / "checkpoint").read_bytes(), log_key).checkpoint
        rewrite(attest_server.config_path, second - 2)
        out, err = witness.communicate(timeout=30)
    finally:
        if witness.poll() is None:
            witness.kill()
            witness.wait()
    assert witness.returncode == 2, err
    # a round may fall while the history is rewritten: any smaller size is the rollback
    found = re.search(rf"rollback: tree size got (\d+), expected at least {second}\b", err)
    assert found is not None and int(found[1]) < second, err
    rounds = [line for line in out.splitlines() if line.startswith("cosigned ")]
    assert len(rounds) >= 2  # each round printed its line: at least the two sizes waited for
    assert f"at tree size {second} (extends" in out
    # the tree it last cosigned (a later round may have cosigned it again, at a later time)
    assert open_checkpoint((state / "checkpoint").read_bytes(), log_key).checkpoint == kept


def cosigned_size(state: Path, key: VerifierKey, *, above: int) -> int:
    """The size of the witness's cosigned checkpoint once it is above ``above`` (30 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        path = state / "checkpoint"
        if path.exists():
            size = open_checkpoint(path.read_bytes(), key).checkpoint.size
            if size > above:
                return size
        time.sleep(0.05)
    raise AssertionError(f"the witness cosigned nothing above tree size {above} in 30 s")
