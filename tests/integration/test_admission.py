"""Operator-owned trust end to end: admission records, the approval queue, revocation, history
that survives re-enrollment, operator certificates, EK trust anchors. Real swtpm hosts and
agents, real server processes over mutual TLS on loopback, the operator's real CLI.

Each attack is played and refused with a specific reason: a host naming its own group, a
re-enrollment that would wash away a failed check, a revoked host, an operator certificate
the server did not record, an EK chain that ends at an intermediate."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tpm2_pytss import ESAPI, ESYS_TR

from tests.integration.attesting import Body, Forger, attest, b64, checks, enroll, host_client
from tests.integration.conftest import (
    BIN,
    SHIM,
    AttestServer,
    Host,
    make_host,
    make_server,
    runc,
)
from trusthook._devenv.bundle import write_bundle_config
from trusthook._devenv.ociimage import Entry, ImageSpec, build_image, busybox_entries, tar_bytes
from trusthook._devenv.serverproc import ZERO_PCR, write_server_config
from trusthook._devenv.swtpm import Swtpm
from trusthook.agent.logstore import LogStore, read_boot_id
from trusthook.agent.serverclient import ServerClient, tls_context
from trusthook.agent.tpm import Tpm
from trusthook.attest.identity import fingerprint
from trusthook.errors import ServerRefusedError
from trusthook.image.layout import Layout
from trusthook.server.ca import CertificateAuthority, pem

pytestmark = pytest.mark.integration
LAB = {i: [ZERO_PCR] for i in range(8)}
HOST_ID = re.compile(r"host ([0-9a-f]{64}) awaits operator approval")
SWTPM_LOCALCA = Path("/var/lib/swtpm-localca")


def server_cli(server: AttestServer, *args: str) -> subprocess.CompletedProcess[str]:
    """``trusthook server ARGS --config`` as the operator runs it on the server."""
    return subprocess.run(
        [str(BIN / "trusthook"), "server", *args, "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        check=False,
    )


def operator(server: AttestServer, *args: str) -> str:
    result = server_cli(server, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def try_enroll(host: Host, server: AttestServer, *extra: str) -> subprocess.CompletedProcess[str]:
    return host.cli("enroll", "--server", server.url, "--server-ca", str(server.ca_cert), *extra)


def status_as_operator(server: AttestServer, host_id: str) -> Body:
    with ServerClient(server.url, server.operator()) as client:
        return client.get(f"/v1/hosts/{host_id}")


def host_id_of(host: Host) -> str:
    status = json.loads(host.cli("status", "--json").stdout)
    return str(status["enrollment"]["host_id"])


def ek_certificate(swtpm: Swtpm) -> bytes:
    """The EK certificate in the TPM's NV, read while no agent holds the TPM."""
    with Tpm(swtpm.tcti) as tpm:
        return tpm.ek_certificate()


def spki_sha256(der: bytes) -> str:
    public = x509.load_der_x509_certificate(der).public_key()
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return digest.finalize().hex()


# the approval queue


def test_an_unknown_ek_waits_for_approval_then_enrolls_in_the_operators_group(
    host: Host, attest_server: AttestServer
) -> None:
    refused = try_enroll(host, attest_server, "--note", "rack 4; payments team, please")
    assert refused.returncode == 1
    assert "awaits operator approval: its EK is not admitted to a host group" in refused.stderr
    found = HOST_ID.search(refused.stderr)
    assert found, refused.stderr
    host_id = found.group(1)
    assert not (host.config.state_dir / "attest" / "client.crt").exists()

    (queued,) = json.loads(operator(attest_server, "hosts", "pending", "--json"))
    assert queued["admission"]["ek_sha256"] == host_id
    assert queued["admission"]["state"] == "pending"
    assert queued["admission"]["group"] is None
    assert queued["admission"]["note"] == "rack 4; payments team, please"
    assert queued["status"] is None  # not enrolled
    table = operator(attest_server, "hosts", "pending")
    assert host_id in table and "new EK" in table and "rack 4" in table

    out = operator(attest_server, "hosts", "approve", host_id[:12], "--group", "lab")
    assert f"approved host {host_id} into group lab" in out
    assert "enrolled with" in enroll(host, attest_server)
    enrollment = json.loads(host.cli("status", "--json").stdout)["enrollment"]
    assert enrollment == {**enrollment, "host_id": host_id, "group": "lab"}
    code, verdict = attest(host)
    assert code == 0 and verdict["trusted"] and verdict["group"] == "lab", verdict

    shown = json.loads(operator(attest_server, "hosts", "show", host_id, "--json"))
    assert shown["admission"]["state"] == "admitted" and shown["admission"]["group"] == "lab"
    assert "@" in shown["admission"]["decided_by"]  # who, at which machine
    assert shown["admission"]["ek_cert_issuer"] == "CN=swtpm-localca"
    events = [e["event"] for e in shown["events"]]
    assert events[:3] == ["pending", "approved", "enrolled"] and events[-1] == "attested"
    assert operator(attest_server, "hosts", "pending", "--json").strip() == "[]"


def test_a_rejected_host_is_refused(host: Host, attest_server: AttestServer) -> None:
    host_id = HOST_ID.search(try_enroll(host, attest_server).stderr)
    assert host_id
    operator(attest_server, "hosts", "reject", host_id.group(1), "--reason", "not our hardware")
    again = try_enroll(host, attest_server)
    assert again.returncode == 1
    assert "was refused admission" in again.stderr and "not our hardware" in again.stderr
    assert not (host.config.state_dir / "attest" / "client.crt").exists()
    # a decided request cannot be approved; only an explicit admission brings it back
    late = server_cli(attest_server, "hosts", "approve", host_id.group(1), "--group", "lab")
    assert late.returncode == 1
    assert "got state rejected, expected pending" in late.stderr
    # and without a reason no rejection is recorded
    bare = server_cli(attest_server, "hosts", "reject", host_id.group(1))
    assert bare.returncode == 2 and "--reason" in bare.stderr


def test_hosts_are_pre_registered_by_ek_certificate_or_by_hash(
    swtpm: Swtpm, tmp_path: Path, ek_bundle: Path
) -> None:
    der = ek_certificate(swtpm)
    (tmp_path / "host").mkdir()
    host = make_host(swtpm, tmp_path / "host")
    by_cert = make_server(tmp_path / "by-cert", ek_bundle)
    by_hash = make_server(tmp_path / "by-hash", ek_bundle)
    ek_pem = tmp_path / "ek.pem"
    ek_pem.write_bytes(pem(x509.load_der_x509_certificate(der)))
    with host.agent, by_cert.process, by_hash.process:
        out = operator(
            by_cert, "hosts", "admit", "--ek-cert", str(ek_pem), "--group", "lab",
            "--attribute", "location=dc1/rack4", "--reason", "new rack",
        )  # fmt: skip
        assert f"admitted host {spki_sha256(der)} to group lab" in out
        again = server_cli(by_cert, "hosts", "admit", "--ek-cert", str(ek_pem), "--group", "lab")
        assert again.returncode == 1 and "already admitted to group lab" in again.stderr
        first = try_enroll(host, by_cert)
        assert first.returncode == 0, first.stderr  # no queue: the operator said so first
        shown = json.loads(operator(by_cert, "hosts", "show", spki_sha256(der), "--json"))
        admission = shown["admission"]
        assert admission["attributes"] == {"location": "dc1/rack4"}
        assert admission["reason"] == "new rack"
        serial = format(x509.load_der_x509_certificate(der).serial_number, "x")
        assert admission["ek_cert_serial"] == serial

        operator(by_hash, "hosts", "admit", "--ek-sha256", spki_sha256(der), "--group", "lab")
        second = try_enroll(host, by_hash, "--reenroll")  # the agent is enrolled elsewhere
        assert second.returncode == 0, second.stderr
        assert attest(host)[0] == 0


# the group is the operator's


@dataclass
class Scene:
    """A server with two groups and an image released to each, and a host admitted to lab."""

    server: AttestServer
    host: Host
    layout: Path
    lab_image: str
    payments_image: str
    tmp: Path

    def run(self, ref: str) -> subprocess.CompletedProcess[str]:
        bundle = self.tmp / f"bundle-{uuid.uuid4().hex[:8]}"
        (bundle / "rootfs").mkdir(parents=True)
        config = write_bundle_config(bundle, ["/bin/cat", "/app/secret.txt"])
        config["annotations"] = {
            "org.trusthook.image.layout": str(self.layout),
            "org.trusthook.image.ref": ref,
        }
        (bundle / "config.json").write_text(json.dumps(config))
        cid = f"adm-{uuid.uuid4().hex[:8]}"
        return runc("run", "--bundle", str(bundle), cid, binary=str(SHIM), env=self.host.env)


def _trusthook(*args: str) -> str:
    result = subprocess.run(
        [str(BIN / "trusthook"), *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def scene(swtpm: Swtpm, ek_bundle: Path, tmp_path: Path) -> Iterator[Scene]:
    groups = {"lab": LAB, "payments": LAB}
    server = make_server(tmp_path / "server", ek_bundle, groups=groups)
    config = str(server.config_path)
    _trusthook("server", "keys", "create", "images", "--config", config)
    public = tmp_path / "images.pub.pem"
    public.write_text(_trusthook("server", "keys", "public", "images", "--config", config))
    layout = tmp_path / "encrypted"
    digests = {}
    for ref in ("lab", "payments"):
        app = [
            Entry(name="app/", kind=b"5", mode=0o755),
            Entry(name="app/secret.txt", data=f"the {ref} secret\n".encode()),
        ]
        spec = ImageSpec(layers=[tar_bytes(busybox_entries()), tar_bytes(app)], compression="gzip")
        build_image(tmp_path / "plain", ref, spec)
        _trusthook("image", "encrypt", f"{tmp_path / 'plain'}:{ref}", f"{layout}:{ref}",
                   "--recipient", str(public))  # fmt: skip
        digests[ref] = Layout.open(layout).resolve(ref).digest
    write_server_config(
        server.config_path,
        state_dir=server.process.config.state_dir,
        port=server.process.config.port,
        ek_ca_bundle=ek_bundle,
        groups=groups,
        releases=[(digests["lab"], ["lab"], ["any"]), (digests["payments"], ["payments"], ["any"])],
    )
    (tmp_path / "host").mkdir()
    host = make_host(swtpm, tmp_path / "host")
    policy = "".join(f'[[image]]\nmanifest = "{d}"\n' for d in digests.values())
    server.process.start()
    host.agent.start()
    try:
        enroll(host, server, group="lab")
        (host.config.state_dir / "image-policy.toml").write_text('mode = "enforce"\n' + policy)
        yield Scene(
            server=server,
            host=host,
            layout=layout,
            lab_image=digests["lab"],
            payments_image=digests["payments"],
            tmp=tmp_path,
        )
    finally:
        host.agent.stop()
        server.process.stop()


@contextlib.contextmanager
def enrollment_request(host: Host) -> Iterator[dict[str, Any]]:
    """An enrollment request as the host's agent would send it, made from its TPM while the
    agent is stopped (it holds the TPM); the agent runs again afterwards."""
    host.agent.stop()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    try:
        with Tpm(host.config.tcti) as tpm:
            request = {
                "hostname": "mallory",
                "ek_certificate": b64(tpm.ek_certificate()),
                "ek_public": b64(tpm.ek_public()),
                "ak_public": b64(tpm.ak_public()),
                "csr": csr.sign(key, hashes.SHA256())
                .public_bytes(serialization.Encoding.PEM)
                .decode(),
                "reenroll": True,
            }
        yield request
    finally:
        host.agent.start_attested()  # its start-up attestation done before the test goes on


def test_a_host_cannot_name_its_way_into_another_group(scene: Scene) -> None:
    """The attack that worked: a lab host re-enrolled "into payments" and got its keys."""
    ran = scene.run("lab")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "the lab secret\n"
    host_id = host_id_of(scene.host)

    # the CLI no longer takes a group ...
    claimed = try_enroll(scene.host, scene.server, "--reenroll", "--group", "payments")
    assert claimed.returncode == 2
    assert "a host does not choose its group, the operator assigns it" in claimed.stderr
    # ... and the server refuses a request that names one
    with enrollment_request(scene.host) as request:
        request["group"] = "payments"
        with (
            ServerClient(scene.server.url, tls_context(scene.server.ca_cert)) as client,
            pytest.raises(ServerRefusedError, match="got a 'group', expected none: the operator"),
        ):
            client.post("/v1/enrollments", request)
    # a wish in the note changes nothing: the host re-enrolls, still in lab
    out = try_enroll(scene.host, scene.server, "--reenroll", "--note", "move me to payments")
    assert out.returncode == 0, out.stderr
    assert json.loads(scene.host.cli("status", "--json").stdout)["enrollment"]["group"] == "lab"
    assert status_as_operator(scene.server, host_id)["group"] == "lab"

    refused = scene.run("payments")
    assert refused.returncode != 0
    assert "no release rule lets host group 'lab' receive the keys" in refused.stderr
    assert "the payments secret" not in refused.stdout


def test_a_revoked_host_is_refused_everything(scene: Scene) -> None:
    assert scene.run("lab").returncode == 0
    host_id = host_id_of(scene.host)
    out = operator(scene.server, "hosts", "revoke", host_id[:16], "--reason", "stolen laptop")
    assert "its client certificate is no longer accepted" in out

    attested = scene.host.cli("attest")
    assert attested.returncode == 1
    assert f"host {host_id} was revoked" in attested.stderr and "stolen laptop" in attested.stderr
    status = status_as_operator(scene.server, host_id)
    assert status["trusted"] is False and checks(status)[0] == "revoked"
    with (
        host_client(scene.host, scene.server) as client,
        pytest.raises(ServerRefusedError, match="was revoked"),
    ):
        client.get(f"/v1/hosts/{host_id}")
    released = scene.run("lab")
    assert released.returncode != 0 and "was revoked" in released.stderr
    assert "the lab secret" not in released.stdout
    again = try_enroll(scene.host, scene.server, "--reenroll")
    assert again.returncode == 1 and "was revoked" in again.stderr

    # only the operator brings it back, and then only through a new enrollment
    operator(scene.server, "hosts", "admit", "--ek-sha256", host_id, "--group", "lab")
    stale = scene.host.cli("attest")
    assert stale.returncode == 1 and "revoked with this host" in stale.stderr
    assert try_enroll(scene.host, scene.server, "--reenroll").returncode == 0
    assert scene.run("lab").returncode == 0


# history survives re-enrollment


def test_reenrollment_keeps_history_and_a_reset_pcr_stays_untrusted(
    host: Host, attest_server: AttestServer, bundle_factory: Any
) -> None:
    """The attack that worked: a host untrusted for event_log re-enrolled and was trusted."""
    enroll(host, attest_server)
    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    assert runc("run", "--bundle", str(bundle), f"h-{bundle.name}").returncode == 0
    code, verdict = attest(host)
    assert code == 0 and verdict["verified_recnum"] == 0, verdict
    host_id = verdict["host_id"]

    # re-enrolling a trusted host needs nobody, and keeps what the server verified
    assert "re-enrolled" in enroll(host, attest_server, "--reenroll")
    kept = status_as_operator(attest_server, host_id)
    assert kept["verified_recnum"] == 0 and checks(kept) == ["not_attested"]
    code, verdict = attest(host)
    assert code == 0 and verdict["verified_recnum"] == 0, verdict

    # root resets the container PCR and empties the log: event_log, for the rest of the epoch
    host.agent.stop()
    with ESAPI(host.config.tcti) as ectx:
        ectx.pcr_reset(ESYS_TR.PCR23)
    LogStore(host.config.state_dir / "eventlog", read_boot_id()).path.write_bytes(b"")
    host.agent.start_attested()
    code, verdict = attest(host)
    assert code == 2 and checks(verdict) == ["event_log"], verdict

    # re-enrolling does not wash that away: it waits for an operator
    queued = try_enroll(host, attest_server, "--reenroll", "--note", "fresh start please")
    assert queued.returncode == 1
    assert f"re-enrollment of host {host_id} awaits operator approval" in queued.stderr
    status = status_as_operator(attest_server, host_id)
    assert checks(status) == ["pending", "event_log"]
    table = operator(attest_server, "hosts", "pending")
    assert "re-enrollment, was lab" in table and "fresh start please" in table
    operator(attest_server, "hosts", "approve", host_id, "--group", "lab", "--reason", "ok")
    assert try_enroll(host, attest_server, "--reenroll").returncode == 0
    for _ in range(2):  # the new enrollment, and another attestation: still untrusted
        code, verdict = attest(host)
        assert code == 2 and checks(verdict) == ["event_log"], verdict

    # an operator who has looked at the host clears it; the next attestation is a new baseline
    bare = server_cli(attest_server, "hosts", "clear", host_id)
    assert bare.returncode == 2 and "--reason" in bare.stderr
    operator(attest_server, "hosts", "clear", host_id, "--reason", "reimaged, checked by ops")
    cleared = status_as_operator(attest_server, host_id)
    assert checks(cleared) == ["not_attested"] and "reimaged" in cleared["reasons"][0]["message"]
    code, verdict = attest(host)
    assert code == 0 and verdict["trusted"], verdict
    shown = json.loads(operator(attest_server, "hosts", "show", host_id, "--json"))
    assert "cleared" in [e["event"] for e in shown["events"]]


def test_an_event_log_failure_holds_through_passing_attestations(
    host: Host, attest_server: AttestServer, bundle_factory: Any
) -> None:
    """One tampered submission, then honest ones in the same TPM epoch: still untrusted."""
    enroll(host, attest_server)
    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    assert runc("run", "--bundle", str(bundle), f"t-{bundle.name}").returncode == 0
    host.agent.stop()
    forger = Forger(host, attest_server)

    def truncated(body: Body) -> None:
        body["events"] = []

    assert checks(forger.send(truncated)) == ["event_log"]
    honest = forger.send()
    assert checks(honest) == ["event_log"] and "held since" in honest["reasons"][0]["message"]
    assert honest["verified_recnum"] == 0  # the log itself verified: only the hold remains
    operator(attest_server, "hosts", "clear", honest["host_id"], "--reason", "a test")
    assert forger.send()["trusted"] is True


# what a host may see


def test_a_host_reading_its_own_status_gets_no_golden_values(
    host: Host, tmp_path: Path, ek_bundle: Path
) -> None:
    golden = "ab" * 32
    server = make_server(tmp_path / "srv", ek_bundle, groups={"strict": {0: [golden]}})
    with server.process:
        enroll(host, server, group="strict")
        code, verdict = attest(host)
        assert code == 2 and checks(verdict) == ["golden_pcr"]
        with host_client(host, server) as client:
            own = client.get(f"/v1/hosts/{verdict['host_id']}")
            listed = client.get("/v1/hosts")["hosts"]
        operators = status_as_operator(server, verdict["host_id"])
    for seen in (verdict, own, listed[0]):
        assert golden not in json.dumps(seen)
        assert seen["reasons"][0]["expected"] is None
    assert operators["reasons"][0]["expected"] == golden


# operator certificates


def test_only_recorded_unrevoked_operator_certificates_are_accepted(
    attest_server: AttestServer, tmp_path: Path
) -> None:
    out = tmp_path / "certs"
    operator(attest_server, "operator-cert", "issue", "alice", "--out", str(out))
    alice = tls_context(attest_server.ca_cert, out / "alice.crt", out / "alice.key")
    with ServerClient(attest_server.url, alice) as client:
        assert client.get("/v1/hosts") == {"hosts": []}
    (listed,) = json.loads(operator(attest_server, "operator-cert", "list", "--json"))
    assert listed["name"] == "alice" and listed["revoked_at"] is None

    # a certificate the server's CA signed but the server never recorded: refused
    ca = CertificateAuthority.load_dir(attest_server.process.config.state_dir / "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    ghost = ca.issue_client_certificate(
        csr.public_bytes(serialization.Encoding.PEM),
        "operator:alice",  # even under a recorded name
        datetime.now(UTC),
        timedelta(days=1),
    )
    (tmp_path / "ghost.crt").write_bytes(pem(ghost))
    (tmp_path / "ghost.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = tls_context(attest_server.ca_cert, tmp_path / "ghost.crt", tmp_path / "ghost.key")
    with (
        ServerClient(attest_server.url, context) as client,
        pytest.raises(ServerRefusedError, match="is not one this server recorded issuing"),
    ):
        client.get("/v1/hosts")

    revoked = operator(attest_server, "operator-cert", "revoke", "alice", "--reason", "left")
    assert f"revoked operator certificate {listed['serial']} (alice)" in revoked
    with (
        ServerClient(attest_server.url, alice) as client,
        pytest.raises(ServerRefusedError, match=r"operator certificate [0-9a-f]+ \(alice\) was"),
    ):
        client.get("/v1/hosts")
    twice = server_cli(attest_server, "operator-cert", "revoke", listed["serial"])
    assert twice.returncode == 1 and "no unrevoked operator certificate" in twice.stderr


# EK trust anchors


def test_an_intermediate_without_its_root_is_no_trust_anchor(host: Host, tmp_path: Path) -> None:
    intermediate = SWTPM_LOCALCA / "issuercert.pem"
    bundle = tmp_path / "intermediate-only.pem"
    bundle.write_bytes(intermediate.read_bytes())
    server = make_server(tmp_path / "srv", bundle)
    with server.process:
        refused = try_enroll(host, server)
        assert refused.returncode == 1
        assert "EK certificate chain ends at CN=swtpm-localca, which is not a trust anchor" in (
            refused.stderr
        )
        assert operator(server, "hosts", "list", "--json").strip() == "[]"  # nothing queued
    # the operator may name it an anchor explicitly
    anchor = fingerprint(x509.load_pem_x509_certificate(intermediate.read_bytes()))
    text = server.config_path.read_text()
    line = f'ek_ca_bundle = "{bundle}"\n'
    server.config_path.write_text(text.replace(line, f'{line}ek_ca_anchors = ["{anchor}"]\n'))
    with server.process:
        assert "awaits operator approval" in try_enroll(host, server).stderr
        enroll(host, server)


# auto-admission, for labs


def test_auto_admit_admits_unknown_eks_and_says_so(
    host: Host, tmp_path: Path, ek_bundle: Path
) -> None:
    server = make_server(
        tmp_path / "srv", ek_bundle, extra_toml='[admission]\nauto_admit = "lab"\n'
    )
    with server.process:
        assert "[admission] auto_admit is ON" in server.process.output()
        first = try_enroll(host, server)
        assert first.returncode == 0, first.stderr
        assert "auto-admitted to group 'lab'" in server.process.output()
        host_id = host_id_of(host)
        shown = json.loads(operator(server, "hosts", "show", host_id, "--json"))
    assert shown["admission"]["decided_by"] == "auto_admit"
    assert [e["event"] for e in shown["events"]][:2] == ["auto_admitted", "enrolled"]
