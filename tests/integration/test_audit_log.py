"""The server's audit log with real parts: two server replicas (stores with their own
connection pools, as two server processes have) appending concurrently to one PostgreSQL get
every index once, with no gap, and the exported log verifies; a real server over HTTPS gives
hosts and operators the checkpoint and consistency proofs, and only operators the entries and
inclusion proofs (entries carry other hosts' ids and the golden values)."""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from tests.integration.attesting import enroll, host_client
from tests.integration.conftest import AttestServer, Host, fresh_database, make_server, runc
from tests.support.auditlog import rewrite
from tests.support.postgres import Postgres
from trusthook.agent.serverclient import ServerClient
from trusthook.audit import (
    AuditEntry,
    Bundle,
    EventType,
    VerifierKey,
    open_checkpoint,
    verify_bundle,
    verify_consistency,
    verify_inclusion,
)
from trusthook.errors import ServerRefusedError
from trusthook.server.auditlog import load_signer
from trusthook.server.config import load_server_config
from trusthook.server.run import Paths, open_store

pytestmark = pytest.mark.integration
PER_REPLICA = 150


def test_two_replicas_append_concurrently_without_gaps_or_duplicates(
    postgres: Postgres, ek_bundle: Path, tmp_path: Path
) -> None:
    server = make_server(tmp_path / "server", ek_bundle, fresh_database(postgres), "postgresql")
    config = load_server_config(server.config_path)
    replicas = [open_store(config), open_store(config)]
    start = threading.Barrier(len(replicas))
    failures: list[BaseException] = []

    def append(number: int) -> None:
        store = replicas[number]
        start.wait()
        try:
            for i in range(PER_REPLICA):
                store.record_event(
                    host_id=f"{number:02x}" * 32,
                    event_name="attested",
                    detail={"reasons": [], "replica": number, "n": i},
                    now=1_700_000_000 + i,
                )
                if i % 25 == 0:
                    store.audit_checkpoint(now=1_700_000_000 + i)  # signing races appending
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=append, args=(n,)) for n in range(len(replicas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    total = PER_REPLICA * len(replicas)
    engine = sqlalchemy.create_engine(config.database_url)
    with engine.connect() as conn:
        indexes = [r[0] for r in conn.execute(sqlalchemy.text("SELECT idx FROM audit_log"))]
    engine.dispose()
    assert sorted(indexes) == list(range(total))
    bundle = replicas[0].audit_export(since=None, until=None, from_size=None, now=1_800_000_000)
    for store in replicas:
        store.dispose()
    key = load_signer(Paths(config.state_dir).audit_key).verifier_key
    verified = verify_bundle(Bundle.from_bytes(bundle.to_bytes()), key=key)
    assert verified.checkpoint.size == total
    per_replica = [sum(e.detail["replica"] == n for e in bundle.entries) for n in (0, 1)]
    assert per_replica == [PER_REPLICA, PER_REPLICA]


def test_hosts_read_checkpoints_and_consistency_and_operators_read_entries(
    host: Host, attest_server: AttestServer
) -> None:
    enroll(host, attest_server)
    config = load_server_config(attest_server.config_path)
    key: VerifierKey = load_signer(Paths(config.state_dir).audit_key).verifier_key
    with host_client(host, attest_server) as client:
        first = open_checkpoint(client.get("/v1/audit/checkpoint")["checkpoint"], key)
        assert host.cli("attest").returncode == 0
        second = open_checkpoint(client.get("/v1/audit/checkpoint")["checkpoint"], key)
        old, new = first.checkpoint, second.checkpoint
        assert new.size > old.size
        proof = client.get(f"/v1/audit/consistency?old={old.size}&new={new.size}")["hashes"]
        verify_consistency(
            old_size=old.size,
            new_size=new.size,
            old_root=old.root,
            new_root=new.root,
            proof=[b64(h) for h in proof],
        )
        # what an agent asks for: the checkpoint and the proof from its own come with the nonce
        assert client.post("/v1/nonces")["audit"] is None  # not asked for
        watch = client.post(f"/v1/nonces?audit_size={old.size}")["audit"]
        watched = open_checkpoint(watch["checkpoint"], key).checkpoint
        assert watched.size >= new.size
        verify_consistency(
            old_size=old.size,
            new_size=watched.size,
            old_root=old.root,
            new_root=watched.root,
            proof=[b64(h) for h in watch["consistency"]],
        )
        beyond = client.post(f"/v1/nonces?audit_size={watched.size + 9}")["audit"]
        assert beyond["consistency"] == []  # no proof to a smaller tree: the host judges it
        with pytest.raises(ServerRefusedError, match="audit_size"):
            client.post("/v1/nonces?audit_size=-1")
        for path in (
            f"/v1/audit/entries?start=0&end={new.size}",
            "/v1/audit/inclusion?index=0&size=1",
        ):
            with pytest.raises(ServerRefusedError, match="are for operators"):
                client.get(path)
    with ServerClient(attest_server.url, attest_server.operator()) as operator:
        raw = operator.get(f"/v1/audit/entries?start=0&end={new.size}")["entries"]
        entries = [AuditEntry.from_json(e) for e in raw]
        assert [e.event.value for e in entries][-1] == "attested"
        last = new.size - 1
        proof = operator.get(f"/v1/audit/inclusion?index={last}&size={new.size}")["hashes"]
        verify_inclusion(
            leaf=entries[-1].leaf_hash(),
            index=last,
            size=new.size,
            proof=[b64(h) for h in proof],
            root=new.root,
        )
        with pytest.raises(ServerRefusedError, match="expected sizes within"):
            operator.get(f"/v1/audit/consistency?old=1&new={new.size + 5}")


def b64(text: str) -> bytes:
    return base64.b64decode(text)


def test_each_verified_launch_is_in_its_verdict_entry(
    host: Host, attest_server: AttestServer, bundle_factory: Any
) -> None:
    """A launch enters the log in the verdict entry of the appraisal that verified its log
    record: once, with what was measured, under that verdict; a later attestation adds no
    copy of it."""
    enroll(host, attest_server)
    names = []
    for n in range(2):
        bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
        names.append(f"audit-{n}-{bundle.name}")
        assert runc("run", "--bundle", str(bundle), names[-1]).returncode == 0
    assert host.cli("attest").returncode == 0
    assert host.cli("attest").returncode == 0
    records, _ = host.snapshot()
    key = load_signer(Paths(load_server_config(attest_server.config_path).state_dir).audit_key)
    with ServerClient(attest_server.url, attest_server.operator()) as operator:
        note = operator.get("/v1/audit/checkpoint")["checkpoint"]
        size = open_checkpoint(note, key.verifier_key).checkpoint.size
        raw = operator.get(f"/v1/audit/entries?start=0&end={size}")["entries"]
    entries = [AuditEntry.from_json(e) for e in raw]
    holding = [e for e in entries if "launches" in e.detail]
    assert [e.event for e in holding] == [EventType.ATTESTED]  # one appraisal verified both
    (verdict,) = holding
    assert verdict.detail["trusted"] is True
    launches = verdict.detail["launches"]
    assert [x["container"] for x in launches] == names
    for launch, record in zip(launches, records, strict=True):
        assert launch["recnum"] == record.recnum
        assert launch["rootfs_digest"] == record.event.rootfs_digest
        assert launch["launch_profile"] == record.event.launch_profile_digest
    verdicts = [e.index for e in entries if e.event is EventType.ATTESTED]
    assert verdicts[-2] == verdict.index  # not in the later attestation's verdict


@pytest.mark.parametrize(
    ("grown", "found"),
    [(3, "proof does not lead to the root"), (-2, "its size went back")],
    ids=["longer", "shorter"],
)
def test_a_host_detects_a_server_that_rewrote_its_log(
    host: Host, attest_server: AttestServer, grown: int, found: str
) -> None:
    """The server's operator rebuilds the log without its history (signed with the real key,
    every checkpoint of the new log well-formed), longer or shorter than what the host saw:
    the host's next attestation finds that the new checkpoint does not extend the one it
    kept, and says so in its status."""
    enroll(host, attest_server)
    assert host.cli("attest").returncode == 0
    status = host.cli("status")
    assert status.returncode == 0, status.stdout
    assert "consistent with what this host saw, at size" in status.stdout
    seen = int(status.stdout.split("at size")[1].split()[0])
    rewrite(attest_server.config_path, seen + grown)  # a different history
    assert host.cli("attest").returncode == 0  # the verdict itself is the server's
    status = host.cli("status")
    assert status.returncode == 2, status.stdout
    assert "audit     REWRITTEN: the attestation server's audit log was rewritten" in status.stdout
    assert found in status.stdout
    again = host.cli("attest")  # the kept checkpoint stays: it is reported every time
    assert again.returncode == 0 and host.cli("status").returncode == 2
