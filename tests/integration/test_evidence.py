"""Bad evidence, each refused with a specific reason. The test plays a compromised agent: the
host's real TPM and real client certificate, with the evidence altered on its way out."""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import secrets
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from tpm2_pytss import ESAPI, ESYS_TR

from tests.integration.attesting import (
    Body,
    Forger,
    b64,
    begin_enrollment,
    enroll,
    host_client,
    now,
    restart_attested,
    wait_past,
)
from tests.integration.conftest import AttestServer, Host, make_host, make_server, new_swtpm, runc
from trusthook._devenv.swtpm import Swtpm
from trusthook.agent.logstore import LogStore, read_boot_id
from trusthook.agent.serverclient import ServerClient, tls_context
from trusthook.agent.tpm import Tpm
from trusthook.common.eventlog import Record, parse_record
from trusthook.errors import ServerRefusedError, TrusthookError
from trusthook.server.ca import CertificateAuthority

pytestmark = pytest.mark.integration


@pytest.fixture
def forger(host: Host, attest_server: AttestServer, bundle_factory: Any) -> Iterator[Forger]:
    """An enrolled host with one launch recorded and verified; its agent stopped."""
    enroll(host, attest_server)
    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    assert runc("run", "--bundle", str(bundle), f"ev-{bundle.name}").returncode == 0
    assert host.cli("attest").returncode == 0
    host.agent.stop()
    yield Forger(host, attest_server)


NO_KEY = {"public": "", "attest": "", "signature": ""}  # refused before it is looked at


def only(verdict: Body, check: str) -> Body:
    assert verdict["trusted"] is False, verdict
    assert [r["check"] for r in verdict["reasons"]] == [check], verdict["reasons"]
    return dict(verdict["reasons"][0])


def test_honest_evidence_is_trusted(forger: Forger) -> None:
    verdict = forger.send()
    assert verdict["trusted"] is True, verdict
    assert verdict["verified_recnum"] == 0


def flip(text: str, index: int = -5) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 0x01
    return b64(bytes(raw))


def test_forged_signature(forger: Forger) -> None:
    def alter(body: Body) -> None:
        body["quote"]["signature"] = flip(body["quote"]["signature"])

    assert "not signed by this host" in only(forger.send(alter), "signature")["message"]


def test_altered_quote_fails_its_signature(forger: Forger) -> None:
    def alter(body: Body) -> None:
        body["quote"]["attest"] = flip(body["quote"]["attest"], 40)

    only(forger.send(alter), "signature")


def test_quote_from_another_tpm(forger: Forger, tmp_path: Path) -> None:
    other = new_swtpm(tmp_path / "other-tpm")
    with other, host_client(forger.host, forger.server) as client:
        challenge = client.post("/v1/nonces")
        with Tpm(other.tcti) as tpm:
            quote = tpm.quote(challenge["pcrs"], base64.b64decode(challenge["nonce"]))
        body = forger.evidence(challenge)
        body["quote"] = {"attest": b64(quote.attest), "signature": b64(quote.signature)}
        body["pcrs"] = {str(i): v.hex() for i, v in quote.pcr_values.items()}
        only(client.post("/v1/attestations", body, signed=True), "signature")


def test_replayed_nonce(forger: Forger) -> None:
    with host_client(forger.host, forger.server) as client:
        body = forger.evidence(client.post("/v1/nonces"))
        assert client.post("/v1/attestations", body, signed=True)["trusted"] is True
        reason = only(client.post("/v1/attestations", body, signed=True), "nonce")
    assert "already used" in reason["message"]


def test_unknown_nonce(forger: Forger) -> None:
    nonce = secrets.token_bytes(32)
    with host_client(forger.host, forger.server) as client:
        challenge = {**client.post("/v1/nonces"), "nonce": b64(nonce)}
        body = forger.evidence(challenge)
        reason = only(client.post("/v1/attestations", body, signed=True), "nonce")
    assert "not issued" in reason["message"]


def test_quote_over_another_nonce(forger: Forger) -> None:
    with host_client(forger.host, forger.server) as client:
        challenge = client.post("/v1/nonces")
        body = forger.evidence(challenge, nonce=secrets.token_bytes(32))
        only(client.post("/v1/attestations", body, signed=True), "nonce")


def test_expired_nonce(host: Host, tmp_path: Path, ek_bundle: Path) -> None:
    server = make_server(tmp_path / "srv", ek_bundle, nonce_ttl=1)
    with server.process:
        enroll(host, server)
        host.agent.stop()
        forger = Forger(host, server)
        with host_client(host, server) as client:
            challenge = client.post("/v1/nonces")
            wait_past(challenge["expires_at"])
            reason = only(
                client.post("/v1/attestations", forger.evidence(challenge), signed=True), "nonce"
            )
    assert "expired" in reason["message"]


def test_nonce_of_another_host(forger: Forger, tmp_path: Path) -> None:
    other_tpm = new_swtpm(tmp_path / "tpm-b")
    (tmp_path / "b").mkdir()
    with other_tpm:
        other = make_host(other_tpm, tmp_path / "b")
        with other.agent:
            enroll(other, forger.server)
            with host_client(other, forger.server) as client_b:
                challenge_b = client_b.post("/v1/nonces")
        with host_client(forger.host, forger.server) as client:
            mine = client.post("/v1/nonces")
            body = forger.evidence({**mine, "nonce": challenge_b["nonce"]})
            reason = only(client.post("/v1/attestations", body, signed=True), "nonce")
    assert "another host" in reason["message"]


def test_pcr_values_that_do_not_match_the_quote(forger: Forger) -> None:
    def alter(body: Body) -> None:
        body["pcrs"]["0"] = "11" * 32

    reason = only(forger.send(alter), "pcr_digest")
    assert reason["expected"] != reason["got"]


def test_truncated_log(forger: Forger, bundle_factory: Any) -> None:
    restart_attested(forger.host)  # before the launch: it stays unverified
    bundle = bundle_factory(hooks={"createRuntime": [forger.host.hook_entry()]})
    assert runc("run", "--bundle", str(bundle), f"tr-{bundle.name}").returncode == 0
    forger.host.agent.stop()

    def alter(body: Body) -> None:
        assert len(body["events"]) == 1
        body["events"] = []

    reason = only(forger.send(alter), "event_log")
    assert "does not reach the quoted PCR 23" in reason["message"]


def test_rewritten_record(forger: Forger, bundle_factory: Any) -> None:
    restart_attested(forger.host)  # before the launch: it stays unverified
    bundle = bundle_factory(hooks={"createRuntime": [forger.host.hook_entry()]})
    assert runc("run", "--bundle", str(bundle), f"rw-{bundle.name}").returncode == 0
    forger.host.agent.stop()

    def altered(body: Body) -> None:
        body["events"][0]["content"]["container_id"] = "innocent"

    assert "altered" in only(forger.send(altered), "event_log")["message"]

    def redigested(body: Body) -> None:
        record = parse_record(body["events"][0], "event")
        event = dataclasses.replace(record.event, container_id="innocent")
        body["events"][0] = Record.for_event(recnum=record.recnum, pcr=23, event=event).to_json()

    assert "rewritten" in only(forger.send(redigested), "event_log")["message"]


def test_reset_pcr_and_rewritten_history(forger: Forger) -> None:
    """Root resets PCR 23, empties the log and restarts the agent: locally consistent again,
    but it does not extend what the server verified."""
    with ESAPI(forger.host.config.tcti) as ectx:
        ectx.pcr_reset(ESYS_TR.PCR23)
    log = LogStore(forger.host.config.state_dir / "eventlog", read_boot_id()).path
    log.write_bytes(b"")
    started = forger.host.agent.start_attested()  # its own attestation is over before ours
    assert started["error"] is None, started
    assert (
        "record 0 (the last verified one)" in only(started["last_verdict"], "event_log")["message"]
    )
    result = forger.host.cli("attest", "--json")
    assert result.returncode == 2
    verdict = json.loads(result.stdout)
    reason = only(verdict, "event_log")
    assert "record 0 (the last verified one)" in reason["message"]
    assert reason["got"] != reason["expected"]


def test_tpm_state_rolled_back(forger: Forger, tmp_path: Path) -> None:
    """A TPM whose state is restored from an older copy: the reset count goes backwards."""
    tpm = forger.host.tpm
    tpm.stop()
    saved = tmp_path / "tpm-copy"
    shutil.copytree(tpm.state_dir, saved)

    def rebooted(body: Body) -> None:  # a reboot's new boot id (the same one: a TPM reset)
        body["boot_id"] = str(uuid.uuid4())

    for _ in range(2):  # two reboots; each is a new epoch, and an empty log for it is fine
        tpm.start()
        log = LogStore(forger.host.config.state_dir / "eventlog", read_boot_id()).path
        log.write_bytes(b"")
        assert forger.send(rebooted)["trusted"] is True
        tpm.stop()
    shutil.rmtree(tpm.state_dir)
    shutil.copytree(saved, tpm.state_dir)
    tpm.start()
    reason = only(forger.send(), "clock")
    assert "reset count went backwards" in reason["message"]


def _post_raw(server: AttestServer, host: Host, path: str, raw: bytes) -> tuple[int, Body]:
    d = host.config.state_dir / "attest"
    context = tls_context(d / "server-ca.pem", d / "client.crt", d / "client.key")
    conn = http.client.HTTPSConnection("127.0.0.1", server.process.config.port, context=context)
    try:
        conn.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 400, "body"),
        (b'{"nonce": "AA=="}', 400, "quote"),
        (b"x" * (5 << 20), 413, "larger than"),
    ],
)
def test_malformed_and_oversized_bodies(
    forger: Forger, raw: bytes, status: int, needle: str
) -> None:
    got, body = _post_raw(forger.server, forger.host, "/v1/attestations", raw)
    assert got == status, body
    assert needle in body["error"]["message"]


def test_malformed_evidence_fields(forger: Forger) -> None:
    def bad_b64(body: Body) -> None:
        body["quote"]["signature"] = "!!!"

    def bad_event(body: Body) -> None:
        body["events"] = [{"recnum": 0}]

    for alter, needle in ((bad_b64, "base64"), (bad_event, "events[0]")):
        with pytest.raises(ServerRefusedError, match=needle.replace("[", r"\[")):
            forger.send(alter)


def test_client_without_certificate(forger: Forger, tmp_path: Path) -> None:
    with ServerClient(forger.server.url, tls_context(forger.server.ca_cert)) as client:
        with pytest.raises(ServerRefusedError, match="client certificate"):
            client.post("/v1/nonces")
        with pytest.raises(ServerRefusedError, match="client certificate"):
            client.get("/v1/hosts")
    # a certificate from a CA the server does not know fails the TLS handshake
    rogue = CertificateAuthority.create("rogue", now())
    key, cert = rogue.issue_server_certificate(["client"], now(), timedelta(days=1))
    (tmp_path / "rogue.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "rogue.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    context = tls_context(forger.server.ca_cert, tmp_path / "rogue.crt", tmp_path / "rogue.key")
    with (
        ServerClient(forger.server.url, context) as client,
        pytest.raises(TrusthookError, match="client certificate") as refused,
    ):
        client.post("/v1/nonces")
    # the server's alert, or (when the close overtakes it) the handshake's end
    assert "refused this host's TLS client certificate" in str(refused.value) or (
        "closed the TLS connection during the handshake" in str(refused.value)
    ), refused.value
    # and the server says so, with the peer's address (asyncio alone logs it only in debug mode)
    log = forger.server.root / "server.log"
    deadline = time.monotonic() + 10
    while "refused a TLS handshake from 127.0.0.1:" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    assert "CERTIFICATE_VERIFY_FAILED" in log.read_text()


def test_wrong_credential_activation_answer(swtpm: Swtpm, attest_server: AttestServer) -> None:
    client, challenge = begin_enrollment(swtpm.tcti, attest_server)
    with client:
        path = f"/v1/enrollments/{challenge['enrollment_id']}/activation"
        with pytest.raises(ServerRefusedError, match="not in the same TPM"):
            client.post(path, {"secret": b64(os.urandom(32)), "request_key": NO_KEY})
        # one answer per enrollment: the right secret afterwards is too late
        with Tpm(swtpm.tcti) as tpm:
            secret = tpm.activate_credential(
                base64.b64decode(challenge["credential_blob"]),
                base64.b64decode(challenge["encrypted_secret"]),
            )
        with pytest.raises(ServerRefusedError, match="unknown, expired or already answered"):
            client.post(path, {"secret": b64(secret), "request_key": NO_KEY})
    assert len(secret) == 32  # the TPM did activate it: the credential was real
