"""Admission without a TPM or a network: the service's enrollment decisions, the operator's
commands and the conditional writes under them, on a real SQLite store. Enrollments are put in
the store as ``begin_enrollment`` leaves them (their credential answer known), so each test
plays only the part after the TPM has proven itself."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.softtpm import SoftTpm
from trusthook.attest.appraise import HostState
from trusthook.attest.requestkey import enrollment_qualifying
from trusthook.attest.verdict import Reason
from trusthook.errors import (
    AdmissionError,
    AuthError,
    ConflictError,
    NotFoundError,
    StorageError,
    UsageError,
)
from trusthook.server import api, driversql
from trusthook.server.admin import Decision, HostAdmin
from trusthook.server.admission import AdmissionState
from trusthook.server.config import parse_server_config
from trusthook.server.records import HostRecord
from trusthook.server.run import (
    init_server,
    load_ca,
    operator_certificate,
    revoke_operator_certificates,
)
from trusthook.server.service import ServerService
from trusthook.server.status import status_of
from trusthook.server.store import Store
from trusthook.server.trust import Hold

HOST = "ab" * 32
OTHER = "ab" * 4 + "cd" * 28  # shares HOST's first 8 hex digits
AK = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # one: RSA keygen is slow
EVENT_LOG = Reason(check="event_log", message="the log does not reach the PCR")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _csr() -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(_key(), hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _ek_certificate() -> bytes:
    """A stand-in EK certificate: after activation, only its serial and issuer are read."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vendor EK CA")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x1234)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


@dataclass
class Server:
    service: ServerService
    store: Store
    admin: HostAdmin
    config_data: dict[str, Any]
    state_dir: Path

    def enroll(self, host_id: str = HOST, *, reenroll: bool = False, note: str = "") -> Any:
        """Answer a pending enrollment of ``host_id`` rightly: the part after the TPM."""
        secret = secrets.token_bytes(32)
        tpm = SoftTpm(ak=AK)
        request = api.EnrollmentRequest(
            hostname="node-1",
            note=note,
            ek_certificate=api.b64(_ek_certificate()),
            ek_public=api.b64(b"ek"),
            ak_public=api.b64(tpm.ak_public),
            csr=_csr(),
            reenroll=reenroll,
        )
        enrollment_id = secrets.token_hex(16)
        now = datetime.now(UTC).timestamp()
        self.store.add_enrollment(
            enrollment_id=enrollment_id,
            host_id=host_id,
            request=request.model_dump(),
            secret_hash=hashlib.sha256(secret).digest(),
            expires=now + 60,
            now=now,
        )
        public, attest, signature = tpm.certify_request_key(enrollment_qualifying(enrollment_id))
        key = api.CertifiedKey(
            public=api.b64(public), attest=api.b64(attest), signature=api.b64(signature)
        )
        return self.service.finish_enrollment(
            enrollment_id, api.ActivationRequest(secret=api.b64(secret), request_key=key)
        )

    def host(self, host_id: str = HOST) -> HostRecord:
        found = self.store.get_host(host_id)
        assert found is not None
        return found

    def refuse(self, host_id: str = HOST) -> None:
        """The host's last appraisal failed event_log (and holds it), as ``attest`` stores it."""
        host = self.host(host_id)
        verified = HostState(reset_count=3, restart_count=0, boot_id="b", verified_recnum=7)
        failed = replace(host, state=verified)
        now = datetime.now(UTC).timestamp()
        hold = Hold(reasons=(EVENT_LOG,), epoch=(3, 0), since=now)
        updated = failed.with_verdict(
            state=verified, reasons=(EVENT_LOG,), held=hold, now=now, valid_until=None
        )
        assert self.store.save_verdict(host, updated)


def decided(reason: str = "checked") -> Decision:
    return Decision(by="alice@console", reason=reason, now=datetime.now(UTC).timestamp())


def make_server(tmp_path: Path, **admission: str) -> Server:
    data: dict[str, Any] = {
        "server": {"state_dir": str(tmp_path / "state")},
        "groups": {"lab": {}, "payments": {}},
        "admission": admission,
    }
    config = parse_server_config(data)
    init_server(config)
    store = Store(config.database_url)
    service = ServerService(config=config, store=store, ca=load_ca(config), ek_roots=())
    return Server(service, store, HostAdmin(config, store), data, tmp_path / "state")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path)
    yield s
    s.store.dispose()


def events(server: Server, host_id: str = HOST) -> list[str]:
    return [e.event for e in server.store.audit_events(host_id, 50)]


def certificate_of(result: api.EnrollmentResult) -> x509.Certificate:
    return x509.load_pem_x509_certificate(result.certificate.encode())


# the approval queue


def test_an_unknown_ek_is_queued_not_enrolled(server: Server) -> None:
    with pytest.raises(AdmissionError, match=f"host {HOST} awaits operator approval") as e:
        server.enroll(note="rack 4")
    assert e.value.check == "pending"
    assert f"trusthook server hosts approve {HOST} --group GROUP" in e.value.message
    assert server.store.get_host(HOST) is None
    queued = server.store.get_admission(HOST)
    assert queued is not None
    assert (queued.state, queued.group, queued.hostname, queued.note) == (
        AdmissionState.PENDING,
        None,
        "node-1",
        "rack 4",
    )
    assert (queued.ek_cert_serial, queued.ek_cert_issuer) == ("1234", "CN=vendor EK CA")
    with pytest.raises(AdmissionError, match="awaits operator approval"):
        server.enroll(note="still waiting")  # asking again is no decision: audited once
    assert server.store.get_admission(HOST).note == "still waiting"  # type: ignore[union-attr]
    assert events(server) == ["pending"]


def test_approved_the_host_enrolls_in_the_operators_group(server: Server) -> None:
    with pytest.raises(AdmissionError):
        server.enroll()
    approved = server.admin.approve(
        HOST[:8], group="payments", attributes={"location": "dc1"}, decision=decided()
    )
    assert approved.reenroll_grant is False  # not enrolled yet: nothing to re-enroll
    result = server.enroll()
    assert result.group == "payments" and result.host_id == HOST
    host = server.host()
    assert (host.group, host.admitted, host.cert_serial) == (
        "payments",
        True,
        format(certificate_of(result).serial_number, "x"),
    )
    assert host.admission is not None and host.admission.attributes == {"location": "dc1"}
    assert events(server) == ["pending", "approved", "enrolled"]
    assert server.service.authenticate(certificate_of(result)) == host


def test_a_rejected_host_stays_out(server: Server) -> None:
    with pytest.raises(AdmissionError):
        server.enroll()
    server.admin.reject(HOST, decision=decided("unknown vendor"))
    with pytest.raises(AdmissionError, match="refused admission .*: unknown vendor") as e:
        server.enroll()
    assert e.value.check == "rejected"
    with pytest.raises(ConflictError, match="got state rejected, expected pending"):
        server.admin.approve(HOST, group="lab", attributes={}, decision=decided())
    server.admin.admit(ek_sha256=HOST, group="lab", attributes={}, decision=decided())
    assert server.enroll().group == "lab"


def test_auto_admit_admits_an_unknown_ek_and_records_who(tmp_path: Path) -> None:
    server = make_server(tmp_path, auto_admit="lab")
    assert server.enroll().group == "lab"
    admission = server.store.get_admission(HOST)
    assert admission is not None and admission.decided_by == "auto_admit"
    assert events(server) == ["auto_admitted", "enrolled"]
    # what an operator decided is not overridden: a revoked EK is not auto-admitted again
    server.admin.revoke(HOST, decision=decided("gone"))
    with pytest.raises(AdmissionError, match="was revoked"):
        server.enroll(reenroll=True)


# history survives re-enrollment


def test_reenrollment_keeps_the_verified_history(server: Server) -> None:
    server.admin.admit(ek_sha256=HOST, group="lab", attributes={}, decision=decided())
    first = server.enroll()
    host = server.host()
    verified = HostState(reset_count=3, restart_count=1, boot_id="b", clock=99, verified_recnum=7,
                         verified_pcr=b"\x01" * 32)  # fmt: skip
    now = datetime.now(UTC).timestamp()
    trusted = replace(host, state=verified).with_verdict(
        state=verified, reasons=(), held=None, now=now, valid_until=now + 60
    )
    assert server.store.save_verdict(host, trusted)
    second = server.enroll(reenroll=True)  # trusted: no operator needed
    again = server.host()
    assert again.state == verified
    assert (again.trusted, [r.check for r in again.reasons]) == (False, ["not_attested"])
    assert again.cert_serial == format(certificate_of(second).serial_number, "x")
    with pytest.raises(AuthError, match="replaced by a later enrollment"):
        server.service.authenticate(certificate_of(first))


def test_reenrolling_a_refused_host_waits_for_an_operator_and_changes_nothing(
    server: Server,
) -> None:
    server.admin.admit(ek_sha256=HOST, group="lab", attributes={}, decision=decided())
    enrolled = certificate_of(server.enroll())
    server.refuse()
    before = server.host()
    with pytest.raises(AdmissionError, match=f"re-enrollment of host {HOST} awaits") as e:
        server.enroll(reenroll=True, note="please")
    assert e.value.check == "pending"
    # its old certificate no longer works either: the host is pending again
    with pytest.raises(AdmissionError, match="re-enrollment of host"):
        server.service.authenticate(enrolled)
    assert server.host().state == before.state and server.host().held == before.held
    status = status_of(server.host(), datetime.now(UTC).timestamp(), operator=True)
    assert [r.check for r in status.reasons] == ["pending", "event_log"]

    # an approval lets exactly one re-enrollment through, and it keeps the failed check
    assert server.admin.approve(HOST, group="lab", attributes={}, decision=decided()).reenroll_grant
    server.enroll(reenroll=True)
    after = server.host()
    assert (after.state, after.reasons, after.held) == (before.state, before.reasons, before.held)
    assert after.admission is not None and after.admission.reenroll_grant is False
    with pytest.raises(AdmissionError, match="re-enrollment of host"):
        server.enroll(reenroll=True)

    # an operator's clear is what lifts it: the next attestation starts a new baseline
    server.admin.approve(HOST, group="lab", attributes={}, decision=decided())
    cleared = server.admin.clear(HOST, decision=decided("reimaged"))
    assert (cleared.state, cleared.held) == (HostState(), None)
    assert [r.check for r in cleared.reasons] == ["not_attested"]
    assert "reimaged" in cleared.reasons[0].message
    assert "cleared" in events(server)


def test_a_revocation_between_decision_and_write_wins(server: Server) -> None:
    """The enrollment read the record as admitted; an operator revoked it before the write:
    the conditional write fails, the service decides again, and refuses."""
    server.admin.admit(ek_sha256=HOST, group="lab", attributes={}, decision=decided())
    enroll_host = server.store.enroll_host

    def revoked_first(*args: Any, **kwargs: Any) -> bool:
        server.admin.revoke(HOST, decision=decided("stolen"))
        server.store.enroll_host = enroll_host  # type: ignore[method-assign]
        return enroll_host(*args, **kwargs)

    server.store.enroll_host = revoked_first  # type: ignore[method-assign]
    with pytest.raises(AdmissionError, match="was revoked at .*: stolen"):
        server.enroll()
    assert server.store.get_host(HOST) is None


def test_a_stale_admission_write_is_refused(server: Server) -> None:
    server.admin.admit(ek_sha256=HOST, group="lab", attributes={}, decision=decided())
    record = server.store.get_admission(HOST)
    assert record is not None
    first = replace(record, group="payments", version=record.version + 1)
    assert server.store.change_admission(first, event="approved", detail={}, now=1.0)
    assert not server.store.change_admission(first, event="approved", detail={}, now=1.0)


# revocation


def test_a_revoked_host_is_refused_and_reported_untrusted(server: Server) -> None:
    server.admin.admit(ek_sha256=HOST, group="lab", attributes={}, decision=decided())
    certificate = certificate_of(server.enroll())
    server.admin.revoke(HOST[:10], decision=decided("stolen laptop"))
    with pytest.raises(AdmissionError, match=f"host {HOST} was revoked at .*: stolen laptop") as e:
        server.service.authenticate(certificate)
    assert e.value.check == "revoked"
    status = status_of(server.host(), datetime.now(UTC).timestamp(), operator=True)
    assert status.trusted is False and status.reasons[0].check == "revoked"
    with pytest.raises(ConflictError, match="got state revoked, expected admitted or pending"):
        server.admin.revoke(HOST, decision=decided())
    # admitted again, the old certificate stays dead: only a new enrollment brings it back
    server.admin.admit(ek_sha256=HOST, group="lab", attributes={}, decision=decided())
    with pytest.raises(AuthError, match="revoked with this host"):
        server.service.authenticate(certificate)
    assert server.service.authenticate(certificate_of(server.enroll(reenroll=True))) is not None


# the operator's commands


def test_host_references_and_groups_are_checked(server: Server) -> None:
    server.admin.admit(ek_sha256=HOST, group="lab", attributes={}, decision=decided())
    server.admin.admit(ek_sha256=OTHER, group="lab", attributes={}, decision=decided())
    assert server.admin.resolve(HOST[:9]).ek_sha256 == HOST
    with pytest.raises(UsageError, match="names more than one host"):
        server.admin.resolve(HOST[:8])
    for bad in ("abc", "zz" * 8, "ab%" + "0" * 8):
        with pytest.raises(UsageError, match="expected its EK hash"):
            server.admin.resolve(bad)
    with pytest.raises(NotFoundError, match="no host whose EK hash starts with ffffffff"):
        server.admin.resolve("ffffffff")
    with pytest.raises(UsageError, match="expected a configured group"):
        server.admin.admit(ek_sha256="ee" * 32, group="nope", attributes={}, decision=decided())
    with pytest.raises(ConflictError, match="already admitted to group lab"):
        server.admin.admit(ek_sha256=HOST, group="payments", attributes={}, decision=decided())
    with pytest.raises(NotFoundError, match="not enrolled: nothing to clear"):
        server.admin.clear(HOST, decision=decided())


def test_operator_certificates_are_recorded_and_revocable(server: Server, tmp_path: Path) -> None:
    config = parse_server_config(server.config_data)
    _, cert_path = operator_certificate(config, "scheduler", tmp_path / "out", by="alice")
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert server.service.authenticate(certificate) is None  # an operator
    unrecorded = load_ca(config).issue_client_certificate(
        _csr().encode(), "operator:scheduler", datetime.now(UTC), timedelta(days=1)
    )
    with pytest.raises(AuthError, match="is not one this server recorded issuing"):
        server.service.authenticate(unrecorded)
    (revoked,) = revoke_operator_certificates(config, "scheduler", by="alice", reason="left")
    assert revoked.serial == format(certificate.serial_number, "x")
    with pytest.raises(AuthError, match=r"\(scheduler\) was revoked at"):
        server.service.authenticate(certificate)
    with pytest.raises(NotFoundError, match="no unrevoked operator certificate"):
        revoke_operator_certificates(config, revoked.serial.upper(), by="alice", reason="")
    with pytest.raises(UsageError, match="operator name"):
        operator_certificate(config, "../etc", tmp_path / "out")


def test_the_schema_of_an_older_server_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:  # the hosts table as a server before admission made it
        conn.exec_driver_sql("CREATE TABLE hosts (host_id VARCHAR(64) PRIMARY KEY)")
    engine.dispose()
    old = Store(url)
    with pytest.raises(StorageError, match="table hosts got no column .*there is no migration"):
        old.create_schema()
    old.dispose()


def test_a_host_reads_the_same_through_the_drivers_cursor_as_through_core(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """get_host authenticates every host request through sqlite3's cursor (driversql); the
    record, booleans and all, is the one Core's path reads, and an unknown host is None."""
    with pytest.raises(AdmissionError):
        server.enroll()  # queued for the operator
    server.admin.approve(
        HOST[:8], group="payments", attributes={"location": "dc1"}, decision=decided()
    )
    server.enroll()
    server.refuse()  # reasons, a hold and a verified state to read back
    unknown = "cd" * 32
    fast = server.host()
    assert server.store.get_host(unknown) is None
    monkeypatch.setattr(driversql, "DRIVERS", ())
    core = Store(server.service._config.database_url)
    assert core.get_host(HOST) == fast and core.get_host(unknown) is None
    assert fast.held is not None and fast.trusted is False and fast.admission is not None
    core.dispose()
