"""Every launch appraised against the policy manifest (issue 11 §2-§3, docs/policy.md), with
real parts: a swtpm host whose agent measures real runc launches, a real server over mTLS, the
manifest applied with the real `trusthook server policy apply`. A compliant launch keeps the
host trusted; a launch of the workload with another root filesystem untrusts it (held until an
operator clears it, and the cleared host is not untrusted again by the replayed log); outside
its placement, the failed selector is named; an unknown launch is only reported under `audit`;
the launches and workloads read back over the API."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.attesting import attest, checks, enroll
from tests.integration.conftest import BIN, AttestServer, Host, make_host, new_swtpm, runc
from trusthook.agent.bundles import own_hook_entry
from trusthook.agent.serverclient import ServerClient

pytestmark = pytest.mark.integration
WORKLOAD = "shop/web"
# The store's launch, lineage and policy tables are exercised on both databases by the first
# test; the others judge launches, the same code whichever database holds them.
SQLITE_ONLY = pytest.mark.parametrize("server_backend", ["sqlite"])


def launch(
    host: Host, bundle_factory: Any, workload: str | None = None, rootfs: Path | None = None
) -> str:
    """A busybox container (or one of ``rootfs``) run by runc with the agent's hook,
    annotated as ``workload``."""
    own = own_hook_entry(host.config)  # as trusthook-runtime writes it: out of the profile
    bundle = bundle_factory(hooks={"createRuntime": [own]})
    config = json.loads((bundle / "config.json").read_text())
    if workload is not None:
        config["annotations"] = {"org.trusthook.workload": workload}
    if rootfs is not None:
        config["root"]["path"] = str(rootfs)
    (bundle / "config.json").write_text(json.dumps(config))
    name = f"wl-{uuid.uuid4().hex[:8]}"
    result = runc("run", "--bundle", str(bundle), name)
    assert result.returncode == 0, result.stderr
    return name


def two_root_filesystems(
    host: Host, server: AttestServer, bundle_factory: Any, busybox_rootfs: Path, tmp: Path
) -> tuple[Path, str, str]:
    """Enroll ``host`` in region eu-1 and run busybox and a changed copy of it (``tmp``'s
    changed-rootfs, returned): their root filesystem digests, as the host measured them."""
    changed = tmp / "changed-rootfs"
    shutil.copytree(busybox_rootfs, changed, symlinks=True)
    (changed / "etc").mkdir(exist_ok=True)
    (changed / "etc" / "motd").write_text("another build\n")
    enroll(host, server, attributes={"region": "eu-1"})
    launch(host, bundle_factory)
    launch(host, bundle_factory, rootfs=changed)
    assert attest(host)[0] == 0
    records, _ = host.snapshot()
    original, other = (r.event.rootfs_digest for r in records)
    return changed, original, other


def manifest(
    path: Path, *, rootfs: str, placement: str = "", unknown: str = "audit", match: str = ""
) -> Path:
    path.write_text(
        "format = 1\n"
        f'[defaults]\nunknown_launch = "{unknown}"\nviolation = "untrust"\n'
        f'[[workload]]\nname = "{WORKLOAD}"\n'
        + (f'match = ["{match}"]\n' if match else "")
        + f'rootfs = ["{rootfs}"]\n'
        + (f"placement = [{json.dumps(placement)}]\n" if placement else "")
    )
    return path


def server_cli(server: AttestServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "trusthook"), "server", *args, "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        check=False,
    )


def apply(server: AttestServer, path: Path) -> None:
    result = server_cli(server, "policy", "apply", str(path))
    assert result.returncode == 0, result.stderr


def first_rootfs(host: Host) -> str:
    records, _ = host.snapshot()
    return records[0].event.rootfs_digest


def test_launches_are_appraised_against_the_policy_in_force(
    host: Host, attest_server: AttestServer, bundle_factory: Any, tmp_path: Path
) -> None:
    enroll(host, attest_server, attributes={"region": "eu-1"})
    before = launch(host, bundle_factory, WORKLOAD)  # no policy yet: recorded, not appraised
    assert attest(host)[0] == 0
    busybox = first_rootfs(host)
    apply(attest_server, manifest(tmp_path / "v1.toml", rootfs=busybox, placement="region = eu-1"))
    compliant = launch(host, bundle_factory, WORKLOAD)
    unknown = launch(host, bundle_factory, "shop/other")  # audit: reported, still trusted
    code, verdict = attest(host)
    assert code == 0 and verdict["trusted"] is True, verdict
    with ServerClient(attest_server.url, attest_server.operator()) as operator:
        host_id = operator.get("/v1/hosts")["hosts"][0]["host_id"]
        launches = operator.get(f"/v1/hosts/{host_id}/launches")["launches"]
        assert [x["container"] for x in launches] == [unknown, compliant, before]
        assert [x["compliant"] for x in launches] == [False, True, None]
        assert [x["workload"] for x in launches] == [None, WORKLOAD, None]
        message = launches[0]["reasons"][0]["message"]
        assert message.endswith("is no workload of the policy manifest")
        assert launches[1]["policy_version"] == 1 and launches[1]["identity"] == WORKLOAD
        listed = operator.get("/v1/workloads")
        assert listed["policy_version"] == 1
        (summary,) = listed["workloads"]
        assert summary["name"] == WORKLOAD and summary["instances"] == 1
        detail = operator.get(f"/v1/workloads/{WORKLOAD}")
        assert detail["policy"]["rootfs"] == [busybox]
        assert [i["container"] for i in detail["instances"]] == [compliant]

    # version 2 pins another root filesystem: the same launch now breaks the workload's rules
    apply(attest_server, manifest(tmp_path / "v2.toml", rootfs="sha256:" + "0" * 64))
    tampered = launch(host, bundle_factory, WORKLOAD)
    code, verdict = attest(host)
    assert code == 2 and checks(verdict) == ["workload"], verdict
    (reason,) = verdict["reasons"]
    assert f"container {tampered} of workload {WORKLOAD}" in reason["message"]
    assert reason["expected"] == "sha256:" + "0" * 64 and reason["got"] == busybox
    code, verdict = attest(host)  # held: the container may still be running
    assert code == 2 and checks(verdict) == ["workload"], verdict
    assert "held since" in verdict["reasons"][0]["message"]
    result = server_cli(attest_server, "hosts", "clear", host_id, "--reason", "stopped it")
    assert result.returncode == 0, result.stderr
    code, verdict = attest(host)  # the log replays from record 0; seen launches stay judged
    assert code == 0 and verdict["trusted"] is True, verdict
    with ServerClient(attest_server.url, attest_server.operator()) as operator:
        launches = operator.get(f"/v1/hosts/{host_id}/launches")["launches"]
    assert [x["container"] for x in launches] == [tampered, unknown, compliant, before]
    assert launches[0]["compliant"] is False and launches[0]["policy_version"] == 2


@SQLITE_ONLY
def test_outside_its_placement_a_launch_names_the_failed_selector(
    host: Host, attest_server: AttestServer, bundle_factory: Any, tmp_path: Path
) -> None:
    enroll(host, attest_server, attributes={"region": "us-2", "pci": "true"})
    launch(host, bundle_factory, WORKLOAD)
    assert attest(host)[0] == 0
    path = manifest(
        tmp_path / "p.toml", rootfs=first_rootfs(host), placement="region in [eu-1, eu-2]"
    )
    apply(attest_server, path)
    name = launch(host, bundle_factory, WORKLOAD)
    code, verdict = attest(host)
    assert code == 2 and checks(verdict) == ["workload"], verdict
    (reason,) = verdict["reasons"]
    assert (
        f"container {name} of workload {WORKLOAD}: it may not run at this host's location:"
        in (reason["message"])
    )
    assert "placement 'region in [eu-1, eu-2]': the host's region is us-2" in reason["message"]


@SQLITE_ONLY
def test_an_unknown_launch_untrusts_the_host_under_untrust(
    host: Host, attest_server: AttestServer, bundle_factory: Any, tmp_path: Path
) -> None:
    enroll(host, attest_server)
    launch(host, bundle_factory)
    assert attest(host)[0] == 0
    pinned = first_rootfs(host)
    path = manifest(tmp_path / "u.toml", rootfs=pinned, unknown="untrust", match="shop/*")
    apply(attest_server, path)
    launch(host, bundle_factory)  # no identity, and the rootfs is no image digest: unknown
    code, verdict = attest(host)
    assert code == 2 and checks(verdict) == ["workload"], verdict
    assert "is no workload of the policy manifest" in verdict["reasons"][0]["message"]


@SQLITE_ONLY
def test_a_move_is_verified_against_how_the_instance_was_created(
    host: Host,
    attest_server: AttestServer,
    bundle_factory: Any,
    busybox_rootfs: Path,
    tmp_path: Path,
) -> None:
    """shop/web-1 is created on host A; launched on A2 (the same region) from the same root
    filesystem it is a verified move, from another (one the workload allows) a tampered one."""
    changed, original, other = two_root_filesystems(
        host, attest_server, bundle_factory, busybox_rootfs, tmp_path
    )
    path = tmp_path / "m.toml"
    path.write_text(
        f'format = 1\n[[workload]]\nname = "{WORKLOAD}"\nmatch = ["shop/web-*"]\n'
        f'rootfs = ["{original}", "{other}"]\nplacement = ["region = eu-1"]\n'
    )
    apply(attest_server, path)
    launch(host, bundle_factory, "shop/web-1")
    assert attest(host)[0] == 0
    a2_tpm = new_swtpm(tmp_path / "tpm-a2")
    (tmp_path / "a2").mkdir()
    with a2_tpm:
        a2 = make_host(a2_tpm, tmp_path / "a2")
        with a2.agent:
            enroll(a2, attest_server, attributes={"region": "eu-1"})
            launch(a2, bundle_factory, "shop/web-1")
            code, verdict = attest(a2)
            assert code == 0, verdict["reasons"]
            launch(a2, bundle_factory, "shop/web-1", rootfs=changed)
            code, verdict = attest(a2)
    assert code == 2 and checks(verdict) == ["workload"], verdict
    (reason,) = verdict["reasons"]
    assert (
        "a tampered move of shop/web-1: its root filesystem is not the one it was"
        in (reason["message"])
    )
    assert (reason["expected"], reason["got"]) == (original, other)
    with ServerClient(attest_server.url, attest_server.operator()) as operator:
        detail = operator.get(f"/v1/workloads/{WORKLOAD}")
    (lineage,) = detail["lineages"]
    assert lineage["identity"] == "shop/web-1" and lineage["rootfs_digest"] == original
    assert lineage["moves"] == {"verified": 1, "tampered": 1}
    assert [i["move"] for i in detail["instances"]] == ["origin", "verified", "tampered"]
    assert (
        detail["instances"][0]["host_id"] == lineage["host_id"] != detail["instances"][1]["host_id"]
    )
    shown = server_cli(attest_server, "workloads", "show", WORKLOAD)
    assert shown.returncode == 0, shown.stderr
    assert "shop/web-1: created " in shown.stdout
    assert "moves: 1 tampered, 1 verified" in shown.stdout
    assert "a tampered move of shop/web-1" in shown.stdout
    listed = server_cli(attest_server, "workloads", "list", "--json")
    assert json.loads(listed.stdout)["workloads"][0]["instances"] == 3
