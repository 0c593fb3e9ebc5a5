"""Shared by the attestation tests: drive a host's enrollment and attestation, and play a
compromised agent (the host's real TPM and client certificate, evidence altered on the way)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.integration.conftest import AttestServer, Host
from trusthook.agent.logstore import LogStore, read_boot_id
from trusthook.agent.serverclient import ServerClient, tls_context
from trusthook.agent.tpm import Tpm
from trusthook.common.eventlog import Record

Body = dict[str, Any]


def now() -> datetime:
    return datetime.now(UTC)


def enroll(host: Host, server: AttestServer, *extra: str, group: str = "lab") -> str:
    result = host.cli(
        "enroll",
        "--server",
        server.url,
        "--server-ca",
        str(server.ca_cert),
        "--group",
        group,
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def attest(host: Host) -> tuple[int, dict[str, Any]]:
    result = host.cli("attest", "--json")
    assert result.returncode in (0, 2), result.stderr
    return result.returncode, json.loads(result.stdout)


def checks(verdict: dict[str, Any]) -> list[str]:
    return [r["check"] for r in verdict["reasons"]]


def host_client(host: Host, server: AttestServer) -> ServerClient:
    """The host's own mTLS identity, as the agent saved it at enrollment."""
    d = host.config.state_dir / "attest"
    return ServerClient(
        server.url, tls_context(d / "server-ca.pem", d / "client.crt", d / "client.key")
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
        with Tpm(self.host.config.tcti) as tpm:
            quote = tpm.quote(challenge["pcrs"], nonce or issued)
        after = challenge["verified_recnum"]
        return {
            "nonce": challenge["nonce"],
            "quote": {"attest": b64(quote.attest), "signature": b64(quote.signature)},
            "pcrs": {str(i): v.hex() for i, v in quote.pcr_values.items()},
            "boot_id": read_boot_id(),
            "events": [r.to_json() for r in self.records() if r.recnum > after],
        }

    def send(self, alter: Callable[[Body], None] = lambda body: None) -> Body:
        with host_client(self.host, self.server) as client:
            body = self.evidence(self.challenge(client))
            alter(body)
            return client.post("/v1/attestations", body)
