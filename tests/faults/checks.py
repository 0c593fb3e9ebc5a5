"""The invariants checked on the host after a fault: the log replays to the PCR, no container
ran unmeasured, a start that could not reach the agent failed, no tmpfs root or container is
left behind. Each broken one is a violation in the report; what is left is cleaned up so the
next round starts clean."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence

from tests.faults.containers import Launcher, Outcome
from tests.faults.report import Report
from tests.faults.rig import (
    Rig,
    flush_transient_objects,
    mounts_under,
    transient_objects,
    unmount,
)
from trusthook.agent.bundles import HOOK_STAGE
from trusthook.common.eventlog import RELEASE_STAGE, verify_against_pcr
from trusthook.errors import EventLogError


def check_log(rig: Rig, report: Report, round_: int) -> tuple[Counter[str], set[str]]:
    """The agent's log replays to the PCR, through the agent and through ``trusthook log
    verify``; the containers measured (how often) and those whose keys were asked for."""
    records, pcr_value = rig.host.snapshot()
    try:
        verify_against_pcr(records, rig.host.config.pcr, pcr_value)
    except EventLogError as e:
        report.violation(round_, f"the event log does not replay to the PCR: {e}")
    verify = rig.host.cli("log", "verify")
    if verify.returncode != 0:
        report.violation(round_, f"trusthook log verify failed: {verify.stderr.strip()}")
    measured = Counter(r.event.container_id for r in records if r.event.stage == HOOK_STAGE)
    released = {r.event.container_id for r in records if r.event.stage == RELEASE_STAGE}
    return measured, released


def check_starts(
    rig: Rig,
    launcher: Launcher,
    report: Report,
    round_: int,
    outcomes: Sequence[Outcome],
    *,
    expected_failure: str,
) -> None:
    """Every container that ran has exactly one measurement record (and, from the encrypted
    image, its release record, and it saw the image's content); every start runc reported as
    failed left no running process; a failure is explained by ``expected_failure`` (the fault:
    "agent" or "server"; "none": no failure is expected). Then the leftovers: tmpfs roots,
    root directories, containers."""
    measured, released = check_log(rig, report, round_)
    for o in outcomes:
        cid, kind = o.start.cid, "encrypted" if o.start.encrypted else "plain"
        if measured[cid] > 1:
            report.violation(round_, f"container {cid} was measured {measured[cid]} times")
        if o.returncode is None:
            report.violation(round_, f"runc run of {cid} did not finish")
            continue
        if o.unreachable and (o.returncode == 0 or o.ran):
            report.violation(round_, f"{cid}'s hook could not reach the agent, yet it started")
        if o.ran:
            report.outcomes[f"started ({kind})"] += 1
            if measured[cid] == 0:
                report.violation(round_, f"container {cid} ({kind}) ran without a measurement")
            if o.start.encrypted and cid not in released:
                report.violation(round_, f"container {cid} ran without a release record")
            if o.start.encrypted and o.saw != launcher.encrypted_marker:
                report.violation(round_, f"container {cid} saw {o.saw!r}, not the image")
            if o.returncode != 0:
                report.violation(round_, f"runc failed ({o.returncode}) but {cid} ran")
            continue
        if o.returncode == 0:
            report.violation(round_, f"runc reported success but {cid} ({kind}) never ran")
            continue
        explained = _explained(o, expected_failure)
        report.outcomes[f"refused ({kind}): {explained or 'unexplained'}"] += 1
        if explained is None:
            last = o.stderr.strip().splitlines()[-1:] or ["(no output)"]
            report.violation(round_, f"start of {cid} ({kind}) failed unexplained: {last[0]}")
    check_leftovers(rig, launcher, report, round_)


def _explained(outcome: Outcome, fault: str) -> str | None:
    if outcome.unreachable:
        return "agent unreachable"
    if fault == "server" and "attestation server" in outcome.stderr:
        return "attestation server unreachable"
    return None


def check_leftovers(rig: Rig, launcher: Launcher, report: Report, round_: int) -> None:
    """No tmpfs root mounted, no root directory, no container left; each removed if found."""
    for point in mounts_under(rig.roots):
        report.violation(round_, f"a tmpfs root is still mounted at {point}")
        with contextlib.suppress(OSError):
            unmount(point)
    if rig.roots.exists():
        for entry in rig.roots.iterdir():
            report.violation(round_, f"a root directory is left: {entry}")
            with contextlib.suppress(OSError):
                entry.rmdir()
    for cid in launcher.leftover_containers():
        report.violation(round_, f"runc still has container {cid}")
        launcher.delete(cid)


def restart_agent(rig: Rig, report: Report, round_: int) -> None:
    """Start the agent again and wait for its start-up attestation, which must pass: a crash
    of the agent must not cost the host its trust. What its recovery repaired is counted."""
    log_path = rig.host.agent.log_path
    offset = log_path.stat().st_size if log_path.exists() else 0
    status = rig.host.agent.start_attested(timeout=120)
    with open(log_path, "rb") as f:
        f.seek(offset)
        output = f.read().decode(errors="replace")
    for line in output.splitlines():
        if "event log repaired" not in line:
            continue
        if "cut off mid-write" in line:
            report.outcomes["recovery: a torn record removed"] += 1
        elif "never extended" in line:
            report.outcomes["recovery: a record appended but not extended removed"] += 1
        else:
            report.outcomes["recovery: other repair"] += 1
    verdict = status.get("last_verdict") or {}
    if status.get("error") is not None or verdict.get("trusted") is not True:
        reasons = [r.get("message") for r in verdict.get("reasons", [])]
        report.violation(
            round_,
            f"after the agent restarted the host is not trusted: {status.get('error')} {reasons}",
        )


class TpmObjects:
    """A killed agent cannot flush the transient objects it loaded (its AK and keys), and
    without a resource manager (swtpm, /dev/tpm0) they stay in the TPM, which holds three: the
    agent after it must flush them at its start (docs/robustness.md), or it runs out of object
    slots. Checked after every kill that leaves any: the next agent is started and stopped in
    an orderly way (it flushes its own objects then), and whatever is still loaded was never
    flushed, a violation; then flushed here, as /dev/tpmrm0 would, so that the other invariants
    are still checked."""

    def after_kill(self, rig: Rig, report: Report, round_: int) -> None:
        tcti = rig.host.tpm.tcti
        leaked = transient_objects(tcti)
        report.outcomes["transient TPM objects left by a killed agent"] += len(leaked)
        if not leaked:
            return
        rig.host.agent.start()
        rig.host.agent.stop()
        remaining = transient_objects(tcti)
        if remaining:
            report.violation(
                round_,
                f"the killed agent left {len(leaked)} transient objects in the TPM and the"
                f" agent started after it did not flush them ({len(remaining)} still loaded"
                " after it stopped): without a resource manager the TPM runs out of object"
                " slots ('out of memory for object contexts') and launches fail",
            )
            flush_transient_objects(tcti)
