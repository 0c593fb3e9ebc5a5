"""A fleet of software-simulated hosts against two server replicas on one PostgreSQL (issue 13,
"Scale"; load tests only). Prints p50/p99 latency, errors, server CPU per attestation (both
replicas, and PostgreSQL's apart) and the host count one core of server CPU sustains at the
interval.

Each simulated host is ``tests.softtpm``'s software TPM: an RSA-2048 EK with its own EK
certificate from a local EK CA the server is configured to trust, an AK and a P-256 request key.
It enrolls as the agent does (the server's MakeCredential answered by activating the credential
in software, the request key certified by the AK, a client certificate issued), then attests
every ``--interval`` seconds, each host at its own offset, on the connection it keeps from one
attestation to the next (``--keep-alive off``: a new one each time): a nonce that brings the
audit log's checkpoint and the consistency proof from the one it kept, which it checks as the
agent does, a TPM2_Quote of PCR 23 (an empty event log: the PCR at zero), the TPM2_NV_Certify of
its attribute index holding the tag the server issued, the request signed by the request key.
The structures are the TPM's wire formats, signed as a TPM signs them; the server verifies them
exactly as a real host's. The hosts share one AK (the server keeps one per host and does not
look for duplicates); each has its own EK, so its own host id. EK keys are generated once
(37 ms of CPU each) into ``/var/tmp/trusthook-bench/fleet-eks`` and reused by later runs.

Usage (root): .venv/bin/python -m bench.attestation.fleet [--hosts 10000] [--interval 60]
    [--seconds 180] [--workers 24] [--keep-alive on|off]
Everything runs on loopback; the servers and PostgreSQL are this run's own and are stopped
at the end.
"""

from __future__ import annotations

import argparse
import heapq
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tests.softtpm import Clock, SoftEk, SoftTpm, name_of
from tests.support.postgres import Postgres

from trusthook._devenv.serverproc import ServerProcess, write_server_config
from trusthook._devenv.swtpm import free_port_pair
from trusthook.agent.serverclient import ServerClient, tls_context
from trusthook.attest.attributes import index_name
from trusthook.attest.requestkey import enrollment_qualifying
from trusthook.audit import Checkpoint, VerifierKey, open_checkpoint, verify_consistency
from trusthook.common.messages import (
    ActivationRequest,
    AttestationRequest,
    EnrollmentChallenge,
    EnrollmentRequest,
    EnrollmentResult,
    HostStatus,
    NonceResponse,
)
from trusthook.errors import AuditLogError, TrusthookError

KEY_CACHE = Path("/var/tmp/trusthook-bench/fleet-eks")
CONTAINER_PCR = 23
ZERO = bytes(32)
TARGET_CPU_MS = 2.0


def _new_ek_key(path: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    Path(path).write_bytes(der)


def ek_keys(count: int, log: Callable[[str], None]) -> list[rsa.RSAPrivateKey]:
    """``count`` EK keys from the cache, generating the missing ones on every core."""
    KEY_CACHE.mkdir(parents=True, exist_ok=True)
    paths = [KEY_CACHE / f"{i:06d}.der" for i in range(count)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        log(f"generating {len(missing)} EK keys into {KEY_CACHE} (once)")
        with multiprocessing.Pool() as pool:
            pool.map(_new_ek_key, missing, chunksize=64)
    keys = []
    for path in paths:
        key = serialization.load_der_private_key(path.read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        keys.append(key)
    return keys


class EkCa:
    """A local EK CA: a root the servers trust, and one EK certificate per simulated host."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "fleet EK CA")])
        now = datetime.now(UTC)
        self.name = name
        self.root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, ek: rsa.RSAPrivateKey, index: int) -> bytes:
        now = datetime.now(UTC)
        subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"sim-ek-{index}")])
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(ek.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(self.key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )


@dataclass
class SimHost:
    """One simulated host: its software TPM, its files, and its TPM clock."""

    index: int
    ek: SoftEk
    tpm: SoftTpm
    ek_certificate: bytes
    directory: Path
    server: str
    boot_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    clock: int = 1000
    verified_recnum: int = -1
    audit_key: str = ""  # the server's audit-log key, from the enrollment
    checkpoint: Checkpoint | None = None  # the last audit checkpoint it verified
    client: ServerClient | None = None  # the connection it keeps (--keep-alive on)

    def enroll(self, ca_cert: Path) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"sim-{self.index}")])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        request = EnrollmentRequest(
            hostname=f"sim-{self.index}",
            note="",
            ek_certificate=self.ek_certificate,
            ek_public=self.ek.public,
            ak_public=self.tpm.ak_public,
            csr=csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            reenroll=False,
        )
        with ServerClient(self.server, tls_context(ca_cert), timeout=120) as client:
            challenge = EnrollmentChallenge.from_json(
                client.post("/v1/enrollments", request.to_json())
            )
            secret = self.ek.activate_credential(
                challenge.credential_blob, challenge.encrypted_secret, name_of(self.tpm.ak_public)
            )
            public, attest, signature = self.tpm.certify_request_key(
                enrollment_qualifying(challenge.enrollment_id)
            )
            activation = ActivationRequest(
                secret=secret, key_public=public, key_attest=attest, key_signature=signature
            )
            result = EnrollmentResult.from_json(
                client.post(
                    f"/v1/enrollments/{challenge.enrollment_id}/activation", activation.to_json()
                )
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "client.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (self.directory / "client.crt").write_bytes(result.certificate.encode())
        self.audit_key = result.audit_key

    def attest(self, ca_cert: Path, interval: float, *, keep_alive: bool) -> HostStatus:
        """An attestation as the agent makes it: a nonce that brings the audit checkpoint and
        the consistency proof from the one kept, checked as the agent checks them, then the
        evidence; on the connection kept from the last attestation, or on a new one."""
        if self.client is None:
            context = tls_context(
                ca_cert, self.directory / "client.crt", self.directory / "client.key"
            )
            self.client = ServerClient(
                self.server, context, timeout=120, signer=self.tpm.sign_request
            )
        try:
            return self._exchange(self.client, interval)
        finally:
            if not keep_alive:
                self.client.close()
                self.client = None

    def _exchange(self, c: ServerClient, interval: float) -> HostStatus:
        # retry: a nonce is harmless to ask for twice (a kept connection the server closed)
        size = 0 if self.checkpoint is None else self.checkpoint.size
        challenge = NonceResponse.from_json(c.post(f"/v1/nonces?audit_size={size}", retry=True))
        self._watch(challenge)
        values = {i: ZERO for i in challenge.pcrs}
        quote, signature = self.tpm.quote(values, challenge.nonce, Clock(self.clock, 1, 0))
        self.clock += int(interval * 1000)
        nv_attest, nv_signature = self.tpm.nv_certify(
            index_name(), challenge.attributes_tag, challenge.nonce
        )
        request = AttestationRequest(
            nonce=challenge.nonce,
            quote_attest=quote,
            quote_signature=signature,
            pcrs=values,
            boot_id=self.boot_id,
            events=(),
            attributes_attest=nv_attest,
            attributes_signature=nv_signature,
        )
        return HostStatus.from_json(c.post("/v1/attestations", request.to_json(), signed=True))

    def _watch(self, challenge: NonceResponse) -> None:
        """Check the nonce's audit checkpoint against the one kept, as the agent does."""
        if challenge.audit is None:
            raise AuditLogError("the server's nonce answer holds no audit checkpoint")
        new = open_checkpoint(challenge.audit.checkpoint, VerifierKey.parse(self.audit_key))
        old = self.checkpoint
        if old is not None and old != new.checkpoint:
            verify_consistency(
                old_size=old.size,
                new_size=new.checkpoint.size,
                old_root=old.root,
                new_root=new.checkpoint.root,
                proof=challenge.audit.consistency,
            )
        self.checkpoint = new.checkpoint


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    late: int = 0  # attestations that started more than 10% of the interval after they were due
    missed: int = 0  # due before the end, never started
    errors: dict[str, int] = field(default_factory=dict)
    untrusted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, what: str) -> None:
        with self.lock:
            self.errors[what] = self.errors.get(what, 0) + 1


def run_pool(workers: int, jobs: Sequence[Callable[[], None]]) -> None:
    """Run every job on ``workers`` threads."""
    queue = list(reversed(jobs))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                job = queue.pop()
            job()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def load(
    hosts: Sequence[SimHost],
    ca_cert: Path,
    args: argparse.Namespace,
) -> Results:
    """Every host attests every ``args.interval`` s from a random offset, for
    ``args.seconds``, on ``args.workers`` threads."""
    interval, seconds, workers = args.interval, args.seconds, args.workers
    keep_alive = args.keep_alive == "on"
    results = Results()
    start = time.monotonic()
    end = start + seconds
    due = [(start + random.uniform(0, interval), h.index) for h in hosts]
    heapq.heapify(due)
    by_index = {h.index: h for h in hosts}
    lock = threading.Lock()

    def worker() -> None:
        while time.monotonic() < end:  # bounded in time: what is due after is not started
            with lock:
                if not due or due[0][0] >= end:
                    return
                when, index = heapq.heappop(due)
            wait = when - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif -wait > interval / 10:
                with results.lock:
                    results.late += 1
            began = time.perf_counter()
            try:
                status = by_index[index].attest(ca_cert, interval, keep_alive=keep_alive)
            except TrusthookError as e:
                results.error(type(e).__name__ + ": " + str(e)[:80])
            else:
                with results.lock:
                    results.latencies.append(time.perf_counter() - began)
                    results.untrusted += not status.trusted
            with lock:
                heapq.heappush(due, (when + interval, index))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.missed = sum(1 for when, _ in due if when < end)
    return results


def _pid(server: ServerProcess) -> int:
    if server.proc is None:
        raise SystemExit("a server replica is not running")
    return server.proc.pid


def cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def postgres_processes(pg: Postgres) -> list[psutil.Process]:
    """The PostgreSQL server's processes (postmaster and its backends)."""
    pid_file = pg.data / "postmaster.pid"
    master = psutil.Process(int(pid_file.read_text().split()[0]))
    return [master, *master.children(recursive=True)]


def start_servers(work: Path, database: str, bundle: Path) -> list[ServerProcess]:
    """Two replicas of one server (one state directory: its CA and keys) on ``database``."""
    servers = []
    for replica in range(2):
        path = work / f"server-{replica}.toml"
        write_server_config(
            path,
            state_dir=work / "state",
            port=free_port_pair(),
            ek_ca_bundle=bundle,
            database=database,
            groups={"lab": {}},
            validity=3600,
            auto_admit="lab",
        )
        servers.append(ServerProcess(path, work / f"server-{replica}.log"))
    servers[0].init()
    for server in servers:
        server.start()
    return servers


def enroll_all(hosts: Sequence[SimHost], ca_cert: Path, workers: int) -> Results:
    errors = Results()

    def enroll(host: SimHost) -> Callable[[], None]:
        def job() -> None:
            try:
                host.enroll(ca_cert)
            except TrusthookError as e:
                errors.error(type(e).__name__ + ": " + str(e)[:80])

        return job

    run_pool(workers, [enroll(h) for h in hosts])
    return errors


@dataclass(frozen=True)
class Spent:
    """What a phase cost: attestations done, server CPU (both replicas), PostgreSQL's CPU."""

    server_cpu: float
    pg_cpu: float


def report(args: argparse.Namespace, results: Results, spent: Spent) -> None:
    done = len(results.latencies)
    wanted = args.hosts * args.seconds / args.interval
    print(
        f"{args.hosts} hosts every {args.interval:g} s for {args.seconds:g} s against 2 replicas"
        f" on one PostgreSQL, {args.workers} client threads, connections"
        f" {'kept' if args.keep_alive == 'on' else 'one per attestation'}, on"
        f" {os.cpu_count()} cores shared with the simulated hosts"
    )
    if not done:
        print(f"no attestation completed; errors {results.errors}")
        return
    lat = sorted(results.latencies)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    per = spent.server_cpu / done * 1000
    pg = spent.pg_cpu / done * 1000
    print(
        f"attestations {done} of {wanted:.0f} due ({done / args.seconds:.1f}/s), late"
        f" {results.late}, missed {results.missed}, untrusted {results.untrusted}, errors"
        f" {sum(results.errors.values())} {results.errors or ''}"
    )
    print(
        f"latency p50 {statistics.median(lat) * 1000:.1f} ms p99 {p99 * 1000:.1f} ms"
        " (nonce + attestation, as a host sees it)"
    )
    print(
        f"server CPU per attestation {per:.2f} ms (both replicas; target <= {TARGET_CPU_MS}),"
        f" PostgreSQL {pg:.2f} ms"
    )
    print(
        f"hosts one core of server CPU sustains at a {args.interval:g} s interval:"
        f" {args.interval * 1000 / per:,.0f} (from the CPU per attestation; with PostgreSQL's"
        f" on the same core {args.interval * 1000 / (per + pg):,.0f})",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10000)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--workers", type=int, default=24)
    parser.add_argument(
        "--keep-alive",
        choices=("on", "off"),
        default="on",
        help="each host keeps its connection from one attestation to the next, as the agent"
        " does (on), or opens one per attestation (off)",
    )
    args = parser.parse_args(argv)
    keys = ek_keys(args.hosts, lambda text: print(text, flush=True))
    work = Path(tempfile.mkdtemp(prefix="trusthook-fleet-"))
    with Postgres(Path(tempfile.mkdtemp(prefix="trusthook-fleet-pg-"))) as pg:
        ca = EkCa()
        bundle = work / "ek-ca.pem"
        bundle.write_bytes(ca.root.public_bytes(serialization.Encoding.PEM))
        servers = start_servers(work, pg.url, bundle)
        try:
            ak = SoftTpm()
            hosts = [
                SimHost(
                    index=i,
                    ek=SoftEk(key),
                    tpm=SoftTpm(ak=ak.ak),
                    ek_certificate=ca.issue(key, i),
                    directory=work / "hosts" / str(i),
                    server=servers[i % 2].url,
                )
                for i, key in enumerate(keys)
            ]
            ca_cert = servers[0].ca_cert
            server_procs = [psutil.Process(_pid(s)) for s in servers]
            cpu, began = cpu_seconds(server_procs), time.monotonic()
            failed = enroll_all(hosts, ca_cert, args.workers)
            cpu = cpu_seconds(server_procs) - cpu
            print(
                f"enrolled {len(hosts) - sum(failed.errors.values())} of {len(hosts)} hosts in"
                f" {time.monotonic() - began:.0f} s: server CPU {cpu / len(hosts) * 1000:.1f} ms"
                f" per enrollment; errors {failed.errors or 0}",
                flush=True,
            )
            server_cpu, pg_cpu = cpu_seconds(server_procs), cpu_seconds(postgres_processes(pg))
            results = load(hosts, ca_cert, args)
            for host in hosts:
                if host.client is not None:
                    host.client.close()
            spent = Spent(
                server_cpu=cpu_seconds(server_procs) - server_cpu,
                pg_cpu=cpu_seconds(postgres_processes(pg)) - pg_cpu,
            )
        finally:
            for server in servers:
                server.stop()
    report(args, results, spent)
    return 0 if results.latencies and not results.errors else 1


if __name__ == "__main__":
    sys.exit(main())
