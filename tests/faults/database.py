"""Campaigns ``postgres-restart`` and ``sqlite-full``: the server's database goes away under
traffic, and comes back.

Traffic is what a host and an operator send: nonce, quote (the host's own TPM) and evidence,
again and again, and the operator's ``GET /v1/hosts``. Each round: traffic flows; the fault
(PostgreSQL stopped, fast or immediate, on its port held meanwhile; or the SQLite database's
own small tmpfs filled to the last byte); at least three requests fail; the fault is undone;
traffic must pass again without anyone restarting the server. Then:

- every answer during the outage is a success or a 503 whose ``error`` names the ``storage``
  check in one line that names the database (and, for SQLite, says it is full); no
  connection failed, no 500; the server process is the one that was started;
- nothing acknowledged is lost: every attestation answered 200 has its audit row, every
  nonce answered 201 (still unexpired) is in the database, and a nonce issued before the
  outage is accepted after it; SQLite's ``integrity_check`` is ``ok``.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import http.client
import json
import os
import random
import signal
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy

from tests.faults.report import Report
from tests.faults.rig import Db, Rig, open_rig, tmpfs
from tests.integration.attesting import Forger
from tests.integration.conftest import holding_port
from tests.support.postgres import Postgres
from trusthook.agent.serverclient import tls_context
from trusthook.agent.tpm import Tpm
from trusthook.attest.requestkey import SIGNATURE_HEADER, request_digest
from trusthook.common import b64
from trusthook.common.clock import iso_from_timestamp

DEADLINE = 60.0  # seconds for traffic to flow, to recover
FAIL_DEADLINE = 300.0  # for requests to fail: SQLite writes on into room left in its WAL
FAILURES = 3  # failed answers seen before the fault is undone
PACE = 0.02  # seconds between two rounds of requests, to leave the server some CPU
SQLITE_VOLUME = "16m"
ATTEST = "POST /v1/attestations"
NONCE = "POST /v1/nonces"


class Http:
    """HTTPS requests answered with their status and JSON body, whatever the status (the
    agent's ServerClient turns errors into exceptions; here the status is the point)."""

    def __init__(
        self, url: str, context: Any, signer: Callable[[bytes], bytes] | None = None
    ) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 443
        self._context = context
        self._signer = signer

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, signed: bool = False
    ) -> tuple[int, dict[str, Any]]:
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        if signed and self._signer is not None and payload is not None:
            headers[SIGNATURE_HEADER] = b64.encode(
                self._signer(request_digest(method, path, payload))
            )
        conn = http.client.HTTPSConnection(
            self._host, self._port, context=self._context, timeout=30
        )
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        data = json.loads(raw) if raw else {}
        return response.status, data if isinstance(data, dict) else {"answer": data}


def host_http(rig: Rig) -> Http:
    """The host's client certificate and TPM request key, as tests/integration/attesting.py
    ``host_client`` has them."""
    d = rig.host.config.state_dir / "attest"
    secret = (rig.host.config.state_dir / "release-key.secret").read_bytes()

    def sign(digest: bytes) -> bytes:
        with Tpm(rig.host.config.tcti, release_secret=secret) as tpm:
            return bytes(tpm.sign_request(digest))

    context = tls_context(d / "server-ca.pem", d / "client.crt", d / "client.key")
    return Http(rig.server.url, context, sign)


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic()
    request: str
    status: int | None  # None: no HTTP answer at all
    body: dict[str, Any]
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Traffic:
    """One thread sending the host's attestations and the operator's reads, back to back."""

    host: Http
    operator: Http
    forger: Forger
    answers: list[Answer] = field(default_factory=list)
    nonces: list[tuple[bytes, str]] = field(default_factory=list)  # acknowledged, expires_at
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def call(
        self, client: Http, method: str, path: str, body: dict[str, Any] | None = None
    ) -> Answer:
        try:
            status, data = client.request(method, path, body, signed=path == "/v1/attestations")
            answer = Answer(time.monotonic(), f"{method} {path}", status, data)
        except (OSError, http.client.HTTPException) as e:
            answer = Answer(time.monotonic(), f"{method} {path}", None, {}, str(e) or repr(e))
        self.answers.append(answer)
        return answer

    def nonce(self) -> Answer:
        answer = self.call(self.host, "POST", "/v1/nonces", {})
        if answer.status == 201:
            self.nonces.append((base64.b64decode(answer.body["nonce"]), answer.body["expires_at"]))
        return answer

    def _run(self) -> None:
        while not self._stop.is_set():
            challenge = self.nonce()
            if challenge.status == 201:
                self.call(
                    self.host, "POST", "/v1/attestations", self.forger.evidence(challenge.body)
                )
            self.call(self.operator, "GET", "/v1/hosts")
            self._stop.wait(PACE)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def count(self, since: float, *, ok: bool, request: str | None = None) -> int:
        return sum(
            1
            for a in list(self.answers)
            if a.at >= since and a.ok == ok and (request is None or a.request == request)
        )


def wait_until(condition: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@dataclass(frozen=True)
class Fault:
    """How one round breaks the database and mends it, and what its 503 must say."""

    name: str
    inject: Callable[[], None]
    recover: Callable[[], None]
    words: tuple[str, ...]  # in the 503's message


def _clear_503(answer: Answer, words: tuple[str, ...]) -> bool:
    error = answer.body.get("error")
    if answer.status != 503 or not isinstance(error, dict):
        return False
    message = error.get("message")
    return (
        error.get("check") == "storage"
        and isinstance(message, str)
        and "\n" not in message
        and 0 < len(message) <= 500
        and all(w in message.lower() for w in words)
    )


def _outage(rig: Rig, traffic: Traffic, fault: Fault, report: Report, n: int) -> None:
    proc = rig.server.process.proc
    pid = proc.pid if proc is not None else None
    db = rig.db()
    after_id = db.last_audit_id()
    kept = traffic.nonce()  # acknowledged before the outage, used after it
    began = time.monotonic()
    traffic.start()
    try:
        if not wait_until(lambda: traffic.count(began, ok=True, request=ATTEST) >= 2):
            report.violation(n, f"{fault.name}: traffic did not flow before the fault")
        injected = time.monotonic()
        fault.inject()
        report.faults += 1
        failed = wait_until(lambda: traffic.count(injected, ok=False) >= FAILURES, FAIL_DEADLINE)
        if not failed:
            report.violation(n, f"{fault.name}: no request failed while the database was away")
        recovered_at = time.monotonic()
        fault.recover()
        back = wait_until(lambda: traffic.count(recovered_at, ok=True, request=ATTEST) >= 2)
    finally:
        traffic.stop()
    if not back:
        report.violation(n, f"{fault.name}: the server did not recover by itself")
    first = next(
        (a.at for a in traffic.answers if a.at >= recovered_at and a.ok and a.request == ATTEST),
        None,
    )
    if first is not None:
        report.note(n, f"{fault.name}: attestations passed again {first - recovered_at:.2f}s after")
    _check_answers(traffic, fault, report, n, injected, first)
    proc = rig.server.process.proc
    if proc is None or proc.poll() is not None or proc.pid != pid:
        report.violation(n, f"{fault.name}: the server process died")
    _check_kept(rig, traffic, kept, db, after_id, fault, report, n)
    db.close()


def _check_answers(
    traffic: Traffic, fault: Fault, report: Report, n: int, injected: float, first: float | None
) -> None:
    report.runs += len(traffic.answers)
    for a in traffic.answers:
        during = a.at >= injected and (first is None or a.at < first)
        phase = "during the outage" if during else "outside the outage"
        status = "no answer" if a.status is None else str(a.status)
        report.outcomes[f"{fault.name}: {a.request} {phase}: {status}"] += 1
        if a.ok:
            continue
        if not during:
            report.violation(n, f"{fault.name}: {a.request} failed outside the outage: {a}")
        elif not _clear_503(a, fault.words):
            report.violation(n, f"{fault.name}: {a.request} got no clear 503: {a.status} {a}")
    messages = {
        str(a.body.get("error", {}).get("message")) for a in traffic.answers if a.status == 503
    }
    for message in sorted(messages)[:3]:
        report.note(n, f"{fault.name}: 503 said: {message}")


def _check_kept(
    rig: Rig,
    traffic: Traffic,
    kept: Answer,
    db: Db,
    after_id: int,
    fault: Fault,
    report: Report,
    n: int,
) -> None:
    """Nothing acknowledged is lost: attestations (their audit rows), nonces (their rows),
    and the nonce issued before the outage still works."""
    stored = {
        iso_from_timestamp(r["at"])
        for r in db.audit_rows(rig.host_id, after_id)
        if r["event"] in ("attested", "refused")
    }
    for a in traffic.answers:
        if a.request == ATTEST and a.ok and a.body.get("last_attestation") not in stored:
            report.violation(n, f"{fault.name}: an acknowledged attestation has no audit row")
    now = time.time()
    for nonce, expires_at in traffic.nonces:
        if datetime.fromisoformat(expires_at).timestamp() > now and db.nonce_used(nonce) is None:
            report.violation(n, f"{fault.name}: an acknowledged nonce is not in the database")
    if kept.status != 201:
        report.violation(n, f"{fault.name}: no nonce before the outage: {kept}")
        return
    answer = traffic.call(
        traffic.host, "POST", "/v1/attestations", traffic.forger.evidence(kept.body)
    )
    reasons = answer.body.get("reasons", [])
    if not answer.ok or answer.body.get("trusted") is not True:
        report.violation(
            n, f"{fault.name}: the nonce issued before the outage was refused after it: {reasons}"
        )


def _traffic(rig: Rig, operator: Any) -> Traffic:
    return Traffic(host_http(rig), Http(rig.server.url, operator), Forger(rig.host, rig.server))


# PostgreSQL


def _database(pg: Postgres) -> str:
    name = f"faults_{os.getpid()}_{random.getrandbits(32):08x}"
    engine = sqlalchemy.create_engine(pg.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{pg.url.rsplit('/', 1)[0]}/{name}"


def postgres_restart_campaign(
    work: Path,
    *,
    rounds: int,
    seed: int,
    tpm_template: Path | None = None,
    ek_bundle: Path | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> Report:
    """``rounds`` PostgreSQL outages under traffic: stopped fast (SIGINT) or immediately
    (SIGQUIT: crash recovery at the next start), on its port held until it starts again."""
    rng = random.Random(seed)  # noqa: S311 - kill points, not secrets
    report = Report("postgres-restart", seed)
    pg = Postgres(Path(tempfile.mkdtemp(prefix="trusthook-faults-pg-")))
    pg.start()
    try:
        database = _database(pg)
        with open_rig(
            work,
            tpm_template=tpm_template,
            ek_bundle=ek_bundle,
            database=database,
            backend="postgresql",
        ) as rig:
            rig.host.agent.stop()  # the traffic quotes with the host's TPM itself
            operator = rig.server.operator()
            held = contextlib.ExitStack()

            def stop(sig: int) -> None:
                pg.stop(sig)
                held.enter_context(holding_port(pg.port))

            def start() -> None:
                try:
                    pg.start()
                finally:
                    held.close()

            for n in range(1, rounds + 1):
                sig = rng.choice([signal.SIGINT, signal.SIGQUIT])
                name = "fast stop" if sig == signal.SIGINT else "immediate stop"
                fault = Fault(
                    name=f"PostgreSQL {name}",
                    inject=functools.partial(stop, sig),
                    recover=start,
                    words=("database",),
                )
                _outage(rig, _traffic(rig, operator), fault, report, n)
                report.rounds += 1
                progress(
                    f"postgres-restart round {n}/{rounds}: {len(report.violations)} violations"
                )
    finally:
        pg.cleanup()
    return report


# SQLite on a full volume


def fill(directory: Path) -> Path:
    """A file that takes every free byte of ``directory``'s filesystem."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 4096, 512, 1):
            block = b"\0" * chunk
            while True:
                try:
                    if os.write(fd, block) < chunk:
                        break
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return path


def integrity(database: Path) -> str:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def sqlite_full_campaign(
    work: Path,
    *,
    rounds: int,
    seed: int,
    tpm_template: Path | None = None,
    ek_bundle: Path | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> Report:
    """``rounds`` times: the SQLite database's tmpfs filled under traffic, then emptied."""
    report = Report("sqlite-full", seed)
    volume = work / "sqlite-volume"
    with tmpfs(volume, SQLITE_VOLUME):
        database = volume / "trusthook.db"
        with open_rig(
            work / "rig",
            tpm_template=tpm_template,
            ek_bundle=ek_bundle,
            database=f"sqlite:///{database}",
        ) as rig:
            rig.host.agent.stop()
            operator = rig.server.operator()
            filler: list[Path] = []
            for n in range(1, rounds + 1):
                fault = Fault(
                    name="SQLite volume full",
                    inject=lambda: filler.append(fill(volume)),
                    recover=lambda: filler.pop().unlink(),
                    words=("database", "full"),
                )
                _outage(rig, _traffic(rig, operator), fault, report, n)
                check = integrity(database)
                if check != "ok":
                    report.violation(n, f"SQLite integrity_check after the outage: {check}")
                report.rounds += 1
                progress(f"sqlite-full round {n}/{rounds}: {len(report.violations)} violations")
            for path in filler:
                path.unlink()
    return report
