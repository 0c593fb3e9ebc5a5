"""TPM resets and restarts under a running host, with real swtpm, agent and server.

The confirmed attack: after an untrusted extend of the container PCR, the host's TPM is reset
(swtpm stopped and started on the same state, as a root user can) and the agent restarted; the
TPM counts moved but the host did not reboot (same boot id), so it must stay untrusted. The
agent itself must survive a TPM restart (its AK handle went stale), and a log that no longer
replays to the PCR must reach the server at once while launches are refused."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from tpm2_pytss import ESAPI, ESYS_TR

from tests.integration.attesting import attest, checks, enroll
from tests.integration.conftest import AttestServer, Host, runc

pytestmark = pytest.mark.integration


def launch(host: Host, bundle_factory: Any, n: int = 1) -> None:
    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    for i in range(n):
        run = runc("run", "--bundle", str(bundle), f"rs-{i}-{bundle.name}")
        assert run.returncode == 0, run.stderr


def attested_with_launches(host: Host, server: AttestServer, bundle_factory: Any, n: int) -> None:
    """Enroll, launch ``n`` containers and have the server verify them."""
    enroll(host, server)
    launch(host, bundle_factory, n)
    code, verdict = attest(host)
    assert code == 0 and verdict["trusted"], verdict
    assert verdict["verified_recnum"] == n - 1


def only_reason(verdict: dict[str, Any], check: str) -> str:
    assert verdict["trusted"] is False, verdict
    assert checks(verdict) == [check], verdict["reasons"]
    return str(verdict["reasons"][0]["message"])


def test_tpm_reset_under_the_running_host_stays_untrusted(
    host: Host, attest_server: AttestServer, bundle_factory: Any
) -> None:
    attested_with_launches(host, attest_server, bundle_factory, 1)
    extend = subprocess.run(
        ["tpm2_pcrextend", "-T", host.tpm.tcti, "23:sha256=" + "ab" * 32],
        capture_output=True,
        text=True,
        check=False,
    )
    assert extend.returncode == 0, extend.stderr
    host.agent.stop()
    host.tpm.restart()  # the same TPM state: a TPM reset, PCR 23 zero again, the same boot
    status = host.agent.start_attested()
    # Locally the reset is indistinguishable from a crash before the first extend
    # (docs/eventlog.md §4, the known limit): the agent removes the record and the log replays.
    assert "record 0 (container rs-0-" in host.agent.output()
    assert host.cli("log", "verify").returncode == 0
    assert status["error"] is None, status
    message = only_reason(status["last_verdict"], "clock")
    assert "the TPM was reset under a running host" in message
    for _ in range(2):
        code, verdict = attest(host)
        assert code == 2
        assert "the TPM was reset under a running host" in only_reason(verdict, "clock")


def test_agent_survives_a_tpm_restart(
    host: Host, attest_server: AttestServer, bundle_factory: Any
) -> None:
    """Only swtpm restarts: the agent's AK handle is stale. Its next quote recreates the AK
    and succeeds; the server refuses the new epoch (same boot id), and the agent refuses to
    record launches onto the log the reset PCR no longer replays."""
    attested_with_launches(host, attest_server, bundle_factory, 1)
    host.tpm.restart()
    for _ in range(2):
        code, verdict = attest(host)
        assert code == 2  # a verdict, not an error: the quote succeeded
        assert "the TPM was reset under a running host" in only_reason(verdict, "clock")
    assert host.agent.output().count("the TPM was restarted: recreating its keys") == 1
    status = host.cli("status", "--json")
    assert json.loads(status.stdout)["error"] is None, status.stdout

    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    refused = runc("run", "--bundle", str(bundle), f"after-restart-{bundle.name}")
    assert refused.returncode != 0
    assert "the PCR is all zeros but the log holds 1 records" in refused.stderr
    assert "reboot the host" in refused.stderr
    verify = host.cli("log", "verify")
    assert verify.returncode == 1
    assert "record 0: log diverges from PCR 23; the PCR is all zeros" in verify.stderr


def test_agent_starts_on_a_diverged_log_and_reports_it(
    host: Host, attest_server: AttestServer, bundle_factory: Any
) -> None:
    """Two records and a reset PCR (TPM2_PCR_Reset: the TPM counts do not move): the agent
    starts anyway, its start-up attestation turns the host untrusted at once, and every launch
    is refused until a reboot."""
    attested_with_launches(host, attest_server, bundle_factory, 2)
    host.agent.stop()
    with ESAPI(host.tpm.tcti) as ectx:
        ectx.pcr_reset(ESYS_TR.PCR23)
    status = host.agent.start_attested()
    assert "event log diverges from PCR 23" in host.agent.output()
    assert status["error"] is None, status
    assert "does not reach the quoted PCR 23" in only_reason(status["last_verdict"], "event_log")
    code, verdict = attest(host)
    assert code == 2
    only_reason(verdict, "event_log")

    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    for i in range(2):
        refused = runc("run", "--bundle", str(bundle), f"diverged-{i}-{bundle.name}")
        assert refused.returncode != 0
        assert "the PCR is all zeros but the log holds 2 records" in refused.stderr
    verify = host.cli("log", "verify")
    assert verify.returncode == 1
    assert "record 0: log diverges from PCR 23; the PCR is all zeros" in verify.stderr
    records, pcr_value = host.snapshot()
    assert (len(records), pcr_value) == (2, bytes(32))
