"""Fault injection with real processes (issue 14 §6), a few rounds of each campaign in
``tests/faults``: SIGKILL the agent during 50 concurrent container starts, SIGKILL the server
during enrollment, attestation and key release (SQLite and PostgreSQL), restart PostgreSQL and
fill SQLite's volume under traffic. The full campaigns (20 rounds and more) run from the
command line: ``python -m tests.faults CAMPAIGN --rounds N --seed S`` (docs/robustness.md).

The seeds are fixed, so a failure names the kill points to replay; TRUSTHOOK_FAULT_SEED
draws others."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.faults import agent_kill, database, server_kill
from tests.faults.report import Report
from tests.faults.rig import transient_objects
from tests.integration.conftest import Host
from trusthook.common.protocol import OP_ENROLL, call
from trusthook.errors import AgentRefusedError

pytestmark = pytest.mark.integration


def _seed(default: int) -> int:
    return int(os.environ.get("TRUSTHOOK_FAULT_SEED", default))


def _clean(report: Report) -> None:
    assert report.faults > 0, report.summary()
    assert report.violations == [], report.summary()


def test_agent_killed_during_concurrent_starts(
    tmp_path: Path, tpm_template: Path, ek_bundle: Path
) -> None:
    report = agent_kill.run_campaign(
        tmp_path, rounds=3, seed=_seed(14), tpm_template=tpm_template, ek_bundle=ek_bundle
    )
    _clean(report)
    assert (report.rounds, report.runs, report.faults) == (3, 150, 3)
    assert report.outcomes["started (plain)"] > 0, report.summary()


def test_server_killed_during_enrollment_attestation_and_release(
    tmp_path: Path, tpm_template: Path, ek_bundle: Path, database: str, server_backend: str
) -> None:
    report = server_kill.run_campaign(
        tmp_path,
        rounds=1,
        seed=_seed(14),
        database=database,
        backend=server_backend,
        tpm_template=tpm_template,
        ek_bundle=ek_bundle,
    )
    _clean(report)
    assert report.faults == len(server_kill.FAULTS)


def test_postgresql_restarted_under_traffic(
    tmp_path: Path, tpm_template: Path, ek_bundle: Path
) -> None:
    report = database.postgres_restart_campaign(
        tmp_path, rounds=1, seed=_seed(14), tpm_template=tpm_template, ek_bundle=ek_bundle
    )
    _clean(report)


def test_sqlite_volume_full_under_traffic(
    tmp_path: Path, tpm_template: Path, ek_bundle: Path
) -> None:
    report = database.sqlite_full_campaign(
        tmp_path, rounds=1, seed=_seed(14), tpm_template=tpm_template, ek_bundle=ek_bundle
    )
    _clean(report)


def test_the_agent_after_a_killed_one_flushes_the_tpm_objects_it_left(host: Host) -> None:
    """A killed agent leaves its AK loaded (swtpm has no resource manager to flush it); the
    next agent must flush it, or after two kills the TPM has no slot left for its keys."""
    params: dict[str, Any] = {
        "server": "https://127.0.0.1:1",  # nothing listens: enrollment fails after the AK loads
        "server_ca": str(host.root / "no-ca.pem"),
        "hostname": "h",
        "note": "",
        "reenroll": False,
    }
    (host.root / "no-ca.pem").write_text("")
    with pytest.raises(AgentRefusedError):
        call(str(host.config.socket), OP_ENROLL, timeout=60, params=params)
    host.agent.stop(signal.SIGKILL)
    assert transient_objects(host.tpm.tcti) != []  # what the killed agent left
    host.agent.start()
    host.agent.stop()  # an orderly stop flushes what this agent loaded itself
    assert transient_objects(host.tpm.tcti) == []
