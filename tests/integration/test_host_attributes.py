"""Host attributes bound to the TPM (docs/attestation.md §12) with real swtpm hosts and a real
server: the agent writes the tag the server issues into the attribute NV index, every
attestation certifies it, and a rewritten or copied index untrusts the host with its reason.
The test plays root on the host by writing the index itself while the agent is stopped."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tpm2_pytss import ESAPI, ESYS_TR, TPM2B_NV_PUBLIC, TPMA_NV

from tests.integration.attesting import attest, checks, enroll
from tests.integration.conftest import BIN, AttestServer, Host, make_host, new_swtpm
from trusthook.agent.tpm import Tpm
from trusthook.attest.attributes import NV_INDEX, attributes_tag, nv_public

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("server_backend", ["sqlite"])]


def host_id_of(host: Host) -> str:
    enrollment = json.loads((host.config.state_dir / "attest" / "enrollment.json").read_text())
    return str(enrollment["host_id"])


def as_root_on_the_host(host: Host, tag: bytes) -> None:
    """Write ``tag`` into the host's attribute index behind the agent's back."""
    host.agent.stop()
    with Tpm(host.config.tcti) as tpm:
        tpm.write_attributes(tag)
    host.agent.start_attested()


def index_of(host: Host) -> bytes | None:
    host.agent.stop()
    with Tpm(host.config.tcti) as tpm:
        contents = tpm.read_attributes()
    host.agent.start_attested()
    return contents


def server_cli(server: AttestServer, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "trusthook"), "server", *args, "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_index_holds_what_the_server_issued_and_follows_tagging(
    host: Host, attest_server: AttestServer
) -> None:
    enroll(host, attest_server, attributes={"region": "eu-1"})
    code, verdict = attest(host)
    assert code == 0, verdict["reasons"]
    host_id = host_id_of(host)
    assert index_of(host) == attributes_tag(host_id, "lab", {"region": "eu-1"})

    server_cli(attest_server, "hosts", "tag", host_id, "zone=a", "--reason", "racked")
    code, verdict = attest(host)
    assert code == 0, verdict["reasons"]
    assert index_of(host) == attributes_tag(host_id, "lab", {"region": "eu-1", "zone": "a"})


def test_a_rewritten_index_untrusts_the_host_until_it_is_enrolled_again(
    host: Host, attest_server: AttestServer
) -> None:
    enroll(host, attest_server, attributes={"country": "DE"})
    assert attest(host)[0] == 0
    host_id = host_id_of(host)
    as_root_on_the_host(host, attributes_tag(host_id, "lab", {"country": "FR"}))

    code, verdict = attest(host)
    assert code == 2 and checks(verdict) == ["attributes"], verdict
    (reason,) = verdict["reasons"]
    assert "holds other attributes than the operator assigned" in reason["message"]
    code, again = attest(host)  # the agent does not write over it: it stays visible
    assert code == 2 and checks(again) == ["attributes"], again
    status = host.cli("status")
    assert "attributes" in status.stdout and status.returncode == 2, status

    # the host cannot wash it away: its re-enrollment waits for an operator
    argv = ("enroll", "--server", attest_server.url, "--server-ca", str(attest_server.ca_cert))
    queued = host.cli(*argv, "--reenroll")
    assert queued.returncode == 1 and "awaits operator approval" in queued.stderr, queued
    attest_server.approve(host_id, "lab", {"country": "DE"})
    enroll(host, attest_server, "--reenroll")
    code, verdict = attest(host)
    assert code == 0, verdict["reasons"]
    assert index_of(host) == attributes_tag(host_id, "lab", {"country": "DE"})


def test_an_index_copied_from_another_host(
    host: Host, attest_server: AttestServer, tmp_path: Path
) -> None:
    enroll(host, attest_server, attributes={"zone": "dmz"})
    assert attest(host)[0] == 0
    other_tpm = new_swtpm(tmp_path / "tpm-b")
    (tmp_path / "b").mkdir()
    with other_tpm:
        other = make_host(other_tpm, tmp_path / "b")
        with other.agent:
            enroll(other, attest_server, attributes={"zone": "core"})
            assert attest(other)[0] == 0
            copied = index_of(other)
            assert copied is not None
    as_root_on_the_host(host, copied)

    code, verdict = attest(host)
    assert code == 2 and checks(verdict) == ["attributes"], verdict
    (reason,) = verdict["reasons"]
    assert "written for another host" in reason["message"]
    assert reason["got"] == copied.hex()
    assert reason["expected"] == attributes_tag(host_id_of(host), "lab", {"zone": "dmz"}).hex()


def test_an_index_redefined_otherwise_is_defined_again(
    host: Host, attest_server: AttestServer
) -> None:
    enroll(host, attest_server)
    assert attest(host)[0] == 0
    host.agent.stop()
    with ESAPI(host.config.tcti) as ectx:  # anyone holding its auth value may now write it
        ectx.nv_undefine_space(ectx.tr_from_tpmpublic(NV_INDEX), ESYS_TR.OWNER)
        weak = nv_public(written=False)
        weak.attributes = TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD | TPMA_NV.OWNERREAD
        ectx.nv_define_space(b"", TPM2B_NV_PUBLIC(nvPublic=weak), ESYS_TR.OWNER)
    host.agent.start_attested()
    code, verdict = attest(host)
    assert code == 0, verdict["reasons"]
    assert index_of(host) == attributes_tag(host_id_of(host), "lab", {})
