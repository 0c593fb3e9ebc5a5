"""Campaign ``server-kill``: SIGKILL the attestation server during enrollment, attestation and
key release, restart it on the same database, and look for half state there.

Every round injects one kill of each kind, in random order (the first enrollment comes first:
it makes the host, the others are re-enrollments). Enrollment, the agent's attestation and
the release are each killed at one of three points drawn at random (``_under_kill``):
anywhere within as long as the operation last took; shortly after the server stored its
challenge (a pending enrollment, a nonce, the agent's release record); or as the server
answers once its transaction committed (``proxy.Relay``: the answer is lost). Then:

- ``enroll``: while the agent enrolls (two requests, a TPM credential activation between).
  Then the host row and its ``enrolled``/``reenrolled`` audit row exist together or not at
  all; an enrollment the agent was told of is the one stored (its certificate's serial); a
  failed one left the agent's identity as it was; and a retry succeeds (``--reenroll`` when
  the server committed an enrollment whose answer was lost: the plain retry gets 409).
- ``attest-agent``: while the agent attests. The host's version moved by exactly its new
  verdict audit rows; an attestation the agent was told of has its audit row; the next one
  passes.
- ``attest-client``: while a client posts nonce after nonce and evidence (the host's own TPM
  and certificate, attesting.Forger), at a random moment among the first few. Then every
  recorded evidence is posted twice more: a nonce is accepted at most once over the whole
  history, never again once the database says it is spent, and a spend the client was told
  of is recorded.
- ``release``: while a container from the encrypted image starts (trusthook-runtime, the
  hook, the agent's release request). A container that ran got its keys, so the server's
  ``released`` audit row for it must exist; the host checks of ``checks.check_starts`` hold;
  then a retry starts.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.faults.checks import check_starts, restart_agent
from tests.faults.containers import Launcher, Outcome
from tests.faults.report import Report
from tests.faults.rig import Db, Rig, open_rig
from tests.integration.attesting import Forger, host_client
from trusthook.common.clock import iso_from_timestamp
from trusthook.common.protocol import OP_ATTEST, call
from trusthook.errors import TrusthookError

FAULTS = ("enroll", "attest-agent", "attest-client", "release")
JOIN_TIMEOUT = 300.0
ENROLLED = ("enrolled", "reenrolled")
VERDICTS = ("attested", "refused")


@dataclass
class Timing:
    """How long each operation last took without a fault: the window a kill is drawn from."""

    enroll: float = 0.5
    attest: float = 0.2
    exchange: float = 0.3  # a release: from its record in the log to the container's end


def run_campaign(
    work: Path,
    *,
    rounds: int,
    seed: int,
    database: str = "",
    backend: str = "sqlite",
    tpm_template: Path | None = None,
    ek_bundle: Path | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> Report:
    """``rounds`` rounds of one server SIGKILL of each kind (``FAULTS``)."""
    rng = random.Random(seed)  # noqa: S311 - kill points, not secrets
    report = Report(f"server-kill ({backend})", seed)
    with open_rig(
        work,
        tpm_template=tpm_template,
        ek_bundle=ek_bundle,
        database=database,
        backend=backend,
        enroll=False,
    ) as rig:
        launcher = Launcher(rig)
        timing = Timing()
        db = rig.db()
        try:
            for n in range(1, rounds + 1):
                began = time.monotonic()
                faults = list(FAULTS[1:])
                rng.shuffle(faults)
                faults.insert(0 if n == 1 else rng.randrange(len(FAULTS)), "enroll")
                for fault in faults:
                    FAULT_RUNS[fault](rig, db, launcher, timing, rng, report, n)
                    report.faults += 1
                    report.runs += 1
                report.rounds += 1
                progress(
                    f"{report.campaign} round {n}/{rounds}: {time.monotonic() - began:.1f}s,"
                    f" {len(report.violations)} violations so far"
                )
        finally:
            db.close()
    return report


def _in_background(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``work`` in a thread; its result or its TrusthookError lands in the dict."""
    result: dict[str, Any] = {}

    def run() -> None:
        began = time.monotonic()
        try:
            result["ok"] = work()
        except TrusthookError as e:
            result["error"] = str(e)
        result["seconds"] = time.monotonic() - began

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _kill_and_restart(
    rig: Rig,
    thread: threading.Thread,
    delay: float,
    after: Callable[[], bool] = lambda: True,
) -> None:
    """Once ``after()`` holds (or the operation ended), wait ``delay`` seconds, SIGKILL the
    server, wait for the operation to end, start the server again on the same database."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while thread.is_alive() and not after() and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    rig.kill_server()
    thread.join(JOIN_TIMEOUT)
    if thread.is_alive():
        raise RuntimeError("the operation under a killed server did not end")
    rig.server.process.start()


KILL_POINTS = ("anywhere", "after the challenge", "as it answers")


def _under_kill(
    rig: Rig,
    rng: random.Random,
    work: Callable[[], Any],
    *,
    window: float,
    challenged: Callable[[], bool],
    committed: Callable[[], bool],
) -> tuple[str, dict[str, Any]]:
    """Run ``work`` and SIGKILL the server once, at one of three points drawn at random:
    anywhere in the ``window`` it last took; within half of it after ``challenged()`` holds
    (the server stored a challenge: the answer to it is on its way); or, by the relay, as the
    server answers once ``committed()`` holds (its transaction committed, the client never
    hears of it). Then start the server again. The point and the result."""
    point = rng.choice(KILL_POINTS)
    if point == "as it answers":
        with rig.relay.armed(committed) as fired:
            thread, result = _in_background(work)
            thread.join(JOIN_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("the operation under a killed server did not end")
        if not fired.is_set():  # it ended without committing: kill the server now
            rig.kill_server()
        rig.server.process.start()
        return point, result
    thread, result = _in_background(work)
    if point == "anywhere":
        _kill_and_restart(rig, thread, rng.uniform(0, 1.2 * window))
    else:
        _kill_and_restart(rig, thread, rng.uniform(0, 0.6 * window), challenged)
    return point, result


def _enrolled(rig: Rig) -> bool:
    return (rig.host.config.state_dir / "attest" / "enrollment.json").exists()


# enrollment


def _enroll(
    rig: Rig,
    db: Db,
    launcher: Launcher,
    timing: Timing,
    rng: random.Random,
    report: Report,
    n: int,
) -> None:
    local = _enrolled(rig)
    serial = rig.client_serial()
    before = db.host(rig.host_id)
    admitted = db.admission(rig.host_id)
    after_id = db.last_audit_id()
    pending = db.enrollment_ids()

    def challenged() -> bool:
        return bool(db.enrollment_ids() - pending)

    def stored() -> bool:
        now = db.host(rig.host_id)
        return now is not None and (before is None or now["enrolled_at"] != before["enrolled_at"])

    point, result = _under_kill(
        rig,
        rng,
        lambda: rig.enroll(reenroll=local),
        window=timing.enroll,
        challenged=challenged,
        committed=stored,
    )
    report.outcomes[f"enroll: killed {point}"] += 1
    host = db.host(rig.host_id)
    rows = [r for r in db.audit_rows(rig.host_id, after_id) if r["event"] in ENROLLED]
    committed = host is not None and (
        before is None or host["enrolled_at"] != before["enrolled_at"]
    )
    if committed and host is not None:
        if [iso_from_timestamp(r["at"]) for r in rows] != [iso_from_timestamp(host["enrolled_at"])]:
            report.violation(n, f"enroll: host row stored with audit rows {rows}")
    elif rows:
        report.violation(n, f"enroll: audit rows {rows} for an enrollment that was not stored")
    admission = db.admission(rig.host_id)
    if admission is None or admitted is None or admission["state"] != "admitted":
        report.violation(n, f"enroll: the admission record is now {admission}")
    elif admission["version"] - admitted["version"] != len(rows):
        report.violation(
            n,
            f"enroll: admission version {admitted['version']} -> {admission['version']} with"
            f" {len(rows)} enrollments stored",
        )
    if "ok" in result:
        report.outcomes["enroll: answered before the kill"] += 1
        if host is None or rig.client_serial() != host["cert_serial"]:
            report.violation(
                n, "enroll: the enrollment the agent was told of is not the stored one"
            )
    else:
        state = "stored, answer lost" if committed else "not stored"
        report.outcomes[f"enroll: failed, {state}"] += 1
        if rig.client_serial() != serial:
            report.violation(n, f"enroll: failed ({result['error']}) but changed the agent's key")
    _retry_enrollment(rig, db, timing, report, n)


def _retry_enrollment(rig: Rig, db: Db, timing: Timing, report: Report, n: int) -> None:
    """Enroll again as an operator would: with --reenroll if the agent is enrolled, else
    without, then with it if the server says the host is enrolled already (it stored an
    enrollment whose answer was lost). The agent must then hold the stored certificate and
    attest."""
    local = _enrolled(rig)
    began = time.monotonic()
    try:
        rig.enroll(reenroll=local)
    except TrusthookError as e:
        if "already enrolled" not in str(e) or local:
            report.violation(n, f"enroll: the retry failed: {e}")
            return
        report.outcomes["enroll: retry needed --reenroll"] += 1
        try:
            rig.enroll(reenroll=True)
        except TrusthookError as again:
            report.violation(n, f"enroll: the retry with --reenroll failed: {again}")
            return
    timing.enroll = time.monotonic() - began
    host = db.host(rig.host_id)
    if host is None or rig.client_serial() != host["cert_serial"]:
        report.violation(n, "enroll: after the retry the agent's certificate is not the stored one")
    _attest_passes(rig, report, n, "enroll")


def _attest_passes(rig: Rig, report: Report, n: int, fault: str) -> None:
    try:
        verdict = call(str(rig.host.config.socket), OP_ATTEST, timeout=60)
    except TrusthookError as e:
        report.violation(n, f"{fault}: attestation after the restart failed: {e}")
        return
    if verdict.get("trusted") is not True:
        report.violation(n, f"{fault}: after the restart the host is untrusted: {verdict}")


# attestation by the agent


def _attest_agent(
    rig: Rig,
    db: Db,
    launcher: Launcher,
    timing: Timing,
    rng: random.Random,
    report: Report,
    n: int,
) -> None:
    before = db.host(rig.host_id)
    after_id = db.last_audit_id()
    socket = str(rig.host.config.socket)
    nonces = db.nonce_hashes(rig.host_id)

    def challenged() -> bool:
        return bool(db.nonce_hashes(rig.host_id) - nonces)

    def stored() -> bool:
        return any(r["event"] in VERDICTS for r in db.audit_rows(rig.host_id, after_id))

    point, result = _under_kill(
        rig,
        rng,
        lambda: call(socket, OP_ATTEST, timeout=60),
        window=timing.attest,
        challenged=challenged,
        committed=stored,
    )
    report.outcomes[f"attest-agent: killed {point}"] += 1
    host = db.host(rig.host_id)
    rows = [r for r in db.audit_rows(rig.host_id, after_id) if r["event"] in VERDICTS]
    if host is None or before is None:
        report.violation(n, "attest-agent: the host row is gone")
        return
    if host["version"] - before["version"] != len(rows):
        report.violation(
            n,
            f"attest-agent: host version {before['version']} -> {host['version']} with"
            f" {len(rows)} verdict audit rows",
        )
    if "ok" in result:
        report.outcomes["attest-agent: answered before the kill"] += 1
        timing.attest = result["seconds"]
        saved = {iso_from_timestamp(r["at"]) for r in rows}
        if result["ok"].get("last_attestation") not in saved:
            report.violation(n, "attest-agent: an acknowledged attestation has no audit row")
    else:
        state = "stored" if rows else "not stored"
        report.outcomes[f"attest-agent: failed, verdict {state}"] += 1
    _attest_passes(rig, report, n, "attest-agent")


# attestation by a client posting evidence, then every evidence replayed


@dataclass
class Posted:
    body: dict[str, Any]
    accepted: bool | None = None  # None: no answer

    @property
    def nonce(self) -> bytes:
        return base64.b64decode(self.body["nonce"])


def _nonce_accepted(answer: dict[str, Any]) -> bool:
    return not any(r.get("check") == "nonce" for r in answer.get("reasons", []))


def _attest_client(
    rig: Rig,
    db: Db,
    launcher: Launcher,
    timing: Timing,
    rng: random.Random,
    report: Report,
    n: int,
) -> None:
    rig.host.agent.stop()  # the client quotes with the host's TPM itself
    forger = Forger(rig.host, rig.server)
    posted: list[Posted] = []

    def post_until_killed() -> None:
        while True:
            with host_client(rig.host, rig.server) as client:
                body = forger.evidence(forger.challenge(client))
                entry = Posted(body)
                posted.append(entry)
                entry.accepted = _nonce_accepted(client.post("/v1/attestations", body, signed=True))

    thread, _ = _in_background(post_until_killed)
    _kill_and_restart(rig, thread, rng.uniform(0, 3.6 * timing.attest))
    report.outcomes["attest-client: evidence posted"] += len(posted)
    replays = 0
    for entry in posted:
        used = db.nonce_used(entry.nonce)
        if entry.accepted and used is not True:
            report.violation(n, f"attest-client: an accepted nonce is recorded as used={used}")
        accepted = 0
        for _ in range(2):
            with host_client(rig.host, rig.server) as client:
                accepted += _nonce_accepted(
                    client.post("/v1/attestations", entry.body, signed=True)
                )
            replays += 1
        if used is True and accepted:
            report.violation(n, f"attest-client: a spent nonce was accepted {accepted} more times")
        if accepted + bool(entry.accepted) > 1:
            report.violation(n, f"attest-client: a nonce was accepted {accepted + 1} times")
        report.outcomes[
            f"attest-client: nonce used={used} at restart, {accepted} replays accepted"
        ] += 1
    report.outcomes["attest-client: replays posted"] += replays
    restart_agent(rig, report, n)  # its start-up attestation passes again


# key release


def _release_recorded(rig: Rig, cid: str) -> Callable[[], bool]:
    """Whether the container's release record is in the log: the agent's exchange with the
    server (nonce, evidence, release request) begins."""
    path = rig.log_store.path
    base = path.stat().st_size if path.exists() else 0
    needle = cid.encode()

    def recorded() -> bool:
        try:
            with open(path, "rb") as f:
                f.seek(base)
                return needle in f.read()
        except FileNotFoundError:
            return False

    return recorded


def _release(
    rig: Rig,
    db: Db,
    launcher: Launcher,
    timing: Timing,
    rng: random.Random,
    report: Report,
    n: int,
) -> None:
    start = launcher.encrypted(f"fs{n:03}-{rng.getrandbits(24):06x}")
    after_id = db.last_audit_id()
    point, result = _under_kill(
        rig,
        rng,
        lambda: launcher.run(start),
        window=timing.exchange,
        challenged=_release_recorded(rig, start.cid),
        committed=lambda: start.cid in _released(db, rig, after_id),
    )
    report.outcomes[f"release: killed {point}"] += 1
    outcome: Outcome = result["ok"]
    released = _released(db, rig, after_id)
    if outcome.ran and start.cid not in released:
        report.violation(n, f"release: {start.cid} ran without a 'released' audit row")
    report.outcomes[
        f"release: {'ran' if outcome.ran else 'refused'}, audit row"
        f" {'written' if start.cid in released else 'not written'}"
    ] += 1
    check_starts(rig, launcher, report, n, [outcome], expected_failure="server")
    launcher.clean([start])
    retry = launcher.encrypted(f"fs{n:03}-retry-{rng.getrandbits(24):06x}")
    recorded = _release_recorded(rig, retry.cid)
    thread, result = _in_background(lambda: launcher.run(retry))
    deadline = time.monotonic() + JOIN_TIMEOUT
    while thread.is_alive() and not recorded() and time.monotonic() < deadline:
        time.sleep(0.001)
    exchange_began = time.monotonic()
    thread.join(JOIN_TIMEOUT)
    timing.exchange = time.monotonic() - exchange_began
    again: Outcome = result["ok"]
    if not again.ran:
        report.violation(n, f"release: the retry did not start: {again.stderr.strip()}")
    elif retry.cid not in _released(db, rig, after_id):
        report.violation(n, f"release: {retry.cid} ran without a 'released' audit row")
    check_starts(rig, launcher, report, n, [again], expected_failure="none")
    launcher.clean([retry])


def _released(db: Db, rig: Rig, after_id: int) -> set[str]:
    rows = db.audit_rows(rig.host_id, after_id)
    return {str(json.loads(r["detail"]).get("container")) for r in rows if r["event"] == "released"}


FAULT_RUNS = {
    "enroll": _enroll,
    "attest-agent": _attest_agent,
    "attest-client": _attest_client,
    "release": _release,
}
