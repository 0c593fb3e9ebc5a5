"""The TPM request key (docs/attestation.md §10) against a real server on swtpm. The attacker
holds the host's mTLS client certificate and key (files under <state_dir>/attest/), not the
agent's secret: evidence it posts is refused as ``request_signature``, the host's status is
untouched and the refusal is audited; a signature lifted onto other bytes is refused too. At
enrollment, a request key certified for another enrollment, or a software key sent with the
certification of the TPM's, is refused before a client certificate is issued."""

from __future__ import annotations

import base64
import http.client
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.attesting import Body, Forger, b64, begin_enrollment, enroll, host_client
from tests.integration.conftest import AttestServer, Host
from tests.softtpm import ecc_public, ecdsa_signature
from trusthook._devenv.swtpm import Swtpm
from trusthook.agent.serverclient import ServerClient, Signer, tls_context
from trusthook.agent.tpm import Tpm, request_key_template
from trusthook.attest.requestkey import SIGNATURE_HEADER, enrollment_qualifying, request_digest
from trusthook.errors import ServerRefusedError
from trusthook.server.config import load_server_config
from trusthook.server.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture
def forger(host: Host, attest_server: AttestServer) -> Iterator[Forger]:
    """An enrolled, trusted host; its agent stopped."""
    enroll(host, attest_server)
    assert host.cli("attest").returncode == 0
    host.agent.stop()
    yield Forger(host, attest_server)


def thief_client(forger: Forger, signer: Signer | None = None) -> ServerClient:
    """The host's client certificate and key, and no request key (``signer``: its own)."""
    d = forger.host.config.state_dir / "attest"
    context = tls_context(d / "server-ca.pem", d / "client.crt", d / "client.key")
    return ServerClient(forger.server.url, context, signer=signer)


def audit(forger: Forger, host_id: str) -> list[Any]:
    config = load_server_config(forger.server.config_path)
    store = Store(config.database_url)
    try:
        return store.audit_events(host_id, 50)
    finally:
        store.dispose()


def host_id(forger: Forger) -> str:
    enrollment = json.loads((forger.host.config.state_dir / "attest/enrollment.json").read_text())
    return str(enrollment["host_id"])


def status(forger: Forger) -> Body:
    with host_client(forger.host, forger.server) as client:
        return client.get(f"/v1/hosts/{host_id(forger)}")


def test_signed_evidence_is_trusted(forger: Forger) -> None:
    assert forger.send()["trusted"] is True


def test_evidence_with_only_the_stolen_client_key_is_refused(forger: Forger) -> None:
    before = status(forger)
    with thief_client(forger) as client:
        body = forger.evidence(forger.challenge(client))  # nonces need only the certificate
        with pytest.raises(ServerRefusedError, match="request_signature|has no Trusthook"):
            client.post("/v1/attestations", body)
    after = status(forger)
    assert (after["trusted"], after["last_attestation"]) == (True, before["last_attestation"])
    refused = [e for e in audit(forger, host_id(forger)) if e.event == "request_refused"]
    assert len(refused) == 1 and refused[0].detail["path"] == "/v1/attestations", refused


def test_evidence_signed_by_a_software_key_is_refused(forger: Forger) -> None:
    mine = ec.generate_private_key(ec.SECP256R1())
    with thief_client(forger, lambda digest: ecdsa_signature(mine, digest)) as client:
        body = forger.evidence(forger.challenge(client))
        with pytest.raises(ServerRefusedError, match="not signed by this host's TPM request key"):
            client.post("/v1/attestations", body, signed=True)


def test_a_signature_moved_onto_altered_evidence_is_refused(forger: Forger) -> None:
    """The thief saw one signed request (its signature header) and sends it on other bytes."""
    with host_client(forger.host, forger.server) as client:
        body = forger.evidence(forger.challenge(client))
    payload = json.dumps(body, separators=(",", ":")).encode()
    secret = (forger.host.config.state_dir / "release-key.secret").read_bytes()
    with Tpm(forger.host.config.tcti, release_secret=secret) as tpm:
        signature = tpm.sign_request(request_digest("POST", "/v1/attestations", payload))
    body["boot_id"] = "another-boot"
    altered = json.dumps(body, separators=(",", ":")).encode()
    got, answer = post_raw(forger, "/v1/attestations", altered, base64.b64encode(signature))
    assert got == 403, answer
    assert answer["error"]["check"] == "request_signature", answer
    got, answer = post_raw(forger, "/v1/attestations", payload, base64.b64encode(signature))
    assert (got, answer.get("trusted")) == (200, True), answer  # the bytes it was made for


def post_raw(forger: Forger, path: str, raw: bytes, signature: bytes) -> tuple[int, Body]:
    d = forger.host.config.state_dir / "attest"
    context = tls_context(d / "server-ca.pem", d / "client.crt", d / "client.key")
    port = forger.server.process.config.port
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
    try:
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature.decode()}
        conn.request("POST", path, body=raw, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


SECRET = b"S" * 32


def activate(swtpm: Swtpm, challenge: Body, qualifying: bytes, *, swap: bool = False) -> Body:
    with Tpm(swtpm.tcti, release_secret=SECRET) as tpm:
        secret = tpm.activate_credential(
            base64.b64decode(challenge["credential_blob"]),
            base64.b64decode(challenge["encrypted_secret"]),
        )
        public, attest, signature = tpm.certify_request_key(qualifying)
    if swap:  # the TPM's key certified, a software key sent
        public = ecc_public(
            request_key_template(bytes(32)), ec.generate_private_key(ec.SECP256R1())
        )
    key = {"public": b64(public), "attest": b64(attest), "signature": b64(signature)}
    return {"secret": b64(secret), "request_key": key}


@pytest.mark.parametrize(
    ("qualifying", "swap", "message"),
    [
        (lambda _: secrets.token_bytes(32), False, "made for another request"),
        (enrollment_qualifying, True, "names another key"),
    ],
)
def test_an_uncertified_request_key_is_refused_at_enrollment(
    swtpm: Swtpm, attest_server: AttestServer, qualifying: Any, swap: bool, message: str
) -> None:
    client, challenge = begin_enrollment(swtpm.tcti, attest_server)
    with client:
        path = f"/v1/enrollments/{challenge['enrollment_id']}/activation"
        body = activate(swtpm, challenge, qualifying(challenge["enrollment_id"]), swap=swap)
        with pytest.raises(ServerRefusedError, match=f"request key: .*{message}"):
            client.post(path, body)


def test_a_certified_request_key_passes_to_admission(
    swtpm: Swtpm, attest_server: AttestServer
) -> None:
    """The same exchange done right gets past the key check, to the operator's queue."""
    client, challenge = begin_enrollment(swtpm.tcti, attest_server)
    with client:
        path = f"/v1/enrollments/{challenge['enrollment_id']}/activation"
        body = activate(swtpm, challenge, enrollment_qualifying(challenge["enrollment_id"]))
        with pytest.raises(ServerRefusedError, match="awaits operator approval"):
            client.post(path, body)
