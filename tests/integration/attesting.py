"""Shared by the attestation tests: drive a host's enrollment and attestation, and play a
compromised agent (the host's real TPM and client certificate, evidence altered on the way)."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.conftest import AttestServer, Host
from trusthook.agent.logstore import LogStore, read_boot_id
from trusthook.agent.serverclient import ServerClient, tls_context
from trusthook.agent.tpm import Tpm
from trusthook.common.eventlog import Record

Body = dict[str, Any]


def now() -> datetime:
    return datetime.now(UTC)


def wait_past(moment: datetime | str, bound: float = 30.0) -> None:
    """Return once this machine's clock, which the server on loopback reads too, is past
    ``moment`` (or the server's RFC 3339 timestamp): a deadline the server set, such as a
    nonce's ``expires_at``, has then passed for the server as well. A millisecond more covers
    the rounding of the timestamp; ``moment`` must be less than ``bound`` seconds away."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    target = moment + timedelta(milliseconds=1)
    remaining = (target - now()).total_seconds()
    assert remaining < bound, f"{moment} is {remaining:.1f}s away"
    while remaining > 0:
        time.sleep(min(remaining, 0.1))
        remaining = (target - now()).total_seconds()


def restart_attested(host: Host) -> dict[str, Any]:
    """Start the stopped agent of an enrolled host and wait until its start-up attestation
    has passed: the server has then verified every record in the log, and until the test asks
    no other attestation happens (make_host's interval), so records appended from here on are
    unverified. The agent's status."""
    status = host.agent.start_attested()
    assert status["error"] is None, status
    assert status["last_verdict"]["trusted"] is True, status
    return status


def enroll(
    host: Host,
    server: AttestServer,
    *extra: str,
    group: str = "lab",
    attributes: dict[str, str] | None = None,
) -> str:
    """Enroll ``host`` as an operator lets it in: the server queues an EK it does not know,
    the operator approves it into ``group`` with ``attributes``, and the host enrolls again."""
    argv = ("enroll", "--server", server.url, "--server-ca", str(server.ca_cert), *extra)
    result = host.cli(*argv)
    queued = NEW_EK_PENDING.search(result.stderr)
    if result.returncode == 1 and queued:
        server.approve(queued.group(1), group, attributes)
        result = host.cli(*argv)
    assert result.returncode == 0, result.stderr
    return result.stdout


NEW_EK_PENDING = re.compile(r"host ([0-9a-f]{64}) awaits operator approval: its EK is not")


def attest(host: Host) -> tuple[int, dict[str, Any]]:
    result = host.cli("attest", "--json")
    assert result.returncode in (0, 2), result.stderr
    return result.returncode, json.loads(result.stdout)


def checks(verdict: dict[str, Any]) -> list[str]:
    return [r["check"] for r in verdict["reasons"]]


def host_client(host: Host, server: AttestServer) -> ServerClient:
    """The host's own mTLS identity, as the agent saved it at enrollment, and its TPM request
    key (the agent's secret, read as root can): all a compromised host has."""
    d = host.config.state_dir / "attest"
    secret = (host.config.state_dir / "release-key.secret").read_bytes()

    def sign(digest: bytes) -> bytes:
        with Tpm(host.config.tcti, release_secret=secret) as tpm:
            return tpm.sign_request(digest)

    return ServerClient(
        server.url,
        tls_context(d / "server-ca.pem", d / "client.crt", d / "client.key"),
        signer=sign,
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Forger:
    host: Host
    server: AttestServer

    def records(self) -> list[Record]:
        return LogStore(self.host.config.state_dir / "eventlog", read_boot_id()).read().records

    def challenge(self, client: ServerClient) -> Body:
        return client.post("/v1/nonces")

    def evidence(self, challenge: Body, *, nonce: bytes | None = None) -> Body:
        issued = base64.b64decode(challenge["nonce"])
        tag = base64.b64decode(challenge["attributes_tag"])
        with Tpm(self.host.config.tcti) as tpm:
            quote = tpm.quote(challenge["pcrs"], nonce or issued)
            if tpm.read_attributes() != tag:  # as the agent writes it
                tpm.write_attributes(tag)
            attributes = tpm.certify_attributes(nonce or issued)
        after = challenge["verified_recnum"]
        return {
            "nonce": challenge["nonce"],
            "quote": {"attest": b64(quote.attest), "signature": b64(quote.signature)},
            "pcrs": {str(i): v.hex() for i, v in quote.pcr_values.items()},
            "boot_id": read_boot_id(),
            "events": [r.to_json() for r in self.records() if r.recnum > after],
            "attributes": {"attest": b64(attributes[0]), "signature": b64(attributes[1])},
        }

    def send(self, alter: Callable[[Body], None] = lambda body: None) -> Body:
        with host_client(self.host, self.server) as client:
            body = self.evidence(self.challenge(client))
            alter(body)
            return client.post("/v1/attestations", body, signed=True)


def begin_enrollment(tcti: str, server: AttestServer) -> tuple[ServerClient, Body]:
    """Start an enrollment with the TPM at ``tcti`` as the agent does, without an agent; the
    open client (the caller closes it) and the server's challenge."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    with Tpm(tcti) as tpm:
        request = {
            "hostname": "mallory",
            "ek_certificate": b64(tpm.ek_certificate()),
            "ek_public": b64(tpm.ek_public()),
            "ak_public": b64(tpm.ak_public()),
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        }
    client = ServerClient(server.url, tls_context(server.ca_cert))
    return client, client.post("/v1/enrollments", request)
