"""Checkpoint and restore decided by the policy manifest (issue 11 §6, docs/policy.md §8), with
real parts: a swtpm host whose agent measures real runc launches, a real server over mTLS, the
real `trusthook-runtime` shim in front of the real runc. This machine's criu cannot checkpoint
(docs/policy.md §8), so an allowed checkpoint or restore shows as runc's own error coming back
(the shim exec'd it), and the restored container's createRuntime hook is driven with the OCI
state runc sends on restore (status "stopped"). Every refusal is played: a workload without
`restore = true`, a restore outside its placement, a container with no compliant launch, an
encrypted one (the shim's own check), a restore without an allowed decision, a tampered
restore (another root filesystem); each decision is in the audit log with its policy version.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.attesting import attest, checks, enroll
from tests.integration.conftest import SHIM, AttestServer, Host, make_host, new_swtpm, runc
from tests.integration.test_workload_policy import (
    apply,
    first_rootfs,
    launch,
    two_root_filesystems,
)
from trusthook.agent.bundles import own_hook_entry
from trusthook.agent.serverclient import ServerClient

pytestmark = pytest.mark.integration
DB = "shop/db"  # restore = true
WEB = "shop/web"  # restore = false
FAR = "shop/far"  # restore = true, placed where the host is not
# The store's queries run on both databases in the first test; the others judge the same way.
SQLITE_ONLY = pytest.mark.parametrize("server_backend", ["sqlite"])


def shim(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SHIM), *args], capture_output=True, text=True, check=False, env=host.env, timeout=120
    )


def policy(path: Path, rootfs: list[str]) -> Path:
    listed = json.dumps(rootfs)
    path.write_text(
        "format = 1\n"
        f'[[workload]]\nname = "{DB}"\nrootfs = {listed}\nrestore = true\n'
        'placement = ["region = eu-1"]\n'
        f'[[workload]]\nname = "{WEB}"\nrootfs = {listed}\n'
        f'[[workload]]\nname = "{FAR}"\nrootfs = {listed}\nrestore = true\n'
        'placement = ["region = us-1"]\n'
    )
    return path


def restore_bundle(bundle_factory: Any, workload: str, rootfs: Path | None = None) -> Path:
    """A bundle as the engine hands it to `runc restore`: the original's config, annotated,
    without trusthook's hook (the shim writes it)."""
    bundle: Path = bundle_factory()
    config = json.loads((bundle / "config.json").read_text())
    config["annotations"] = {"org.trusthook.workload": workload}
    if rootfs is not None:
        config["root"]["path"] = str(rootfs)
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def restored_state(name: str, bundle: Path, workload: str, pid: int) -> bytes:
    """The OCI state runc 1.1 writes to a restored container's createRuntime hook."""
    return json.dumps(
        {
            "ociVersion": "1.0.2-dev",
            "id": name,
            "status": "stopped",
            "pid": pid,
            "bundle": str(bundle),
            "annotations": {"org.trusthook.workload": workload},
        }
    ).encode()


def audit_events(server: AttestServer, *names: str) -> list[dict[str, Any]]:
    with ServerClient(server.url, server.operator()) as operator:
        note = operator.get("/v1/audit/checkpoint")["checkpoint"]
        size = int(note.split("\n")[1])  # tlog-checkpoint: origin, tree size, root
        entries = operator.get(f"/v1/audit/entries?start=0&end={size}")["entries"]
    return [e for e in entries if e["event"] in names]


def restore_hook(
    host: Host, name: str, bundle: Path, workload: str
) -> subprocess.CompletedProcess[bytes]:
    """Run trusthook's hook exactly as runc runs it for the restored container."""
    config = json.loads((bundle / "config.json").read_text())
    (entry,) = config["hooks"]["createRuntime"]
    sleeper = subprocess.Popen(["sleep", "60"])  # the restored process, as far as the hook sees
    try:
        return subprocess.run(
            [entry["path"], *entry["args"][1:]],
            input=restored_state(name, bundle, workload, sleeper.pid),
            capture_output=True,
            check=False,
            timeout=120,
        )
    finally:
        sleeper.kill()
        sleeper.wait()


def test_checkpoint_is_decided_by_the_policy_and_audited(
    host: Host, attest_server: AttestServer, bundle_factory: Any, tmp_path: Path
) -> None:
    enroll(host, attest_server, attributes={"region": "eu-1"})
    launch(host, bundle_factory, DB)
    assert attest(host)[0] == 0
    apply(attest_server, policy(tmp_path / "p.toml", [first_rootfs(host)]))
    db = launch(host, bundle_factory, DB)
    web = launch(host, bundle_factory, WEB)
    unknown = launch(host, bundle_factory, "shop/unknown")  # no workload: not compliant
    images = tmp_path / "images"

    # allowed: the shim execs runc, whose own error (the container ran and is gone) comes back
    result = shim(host, "checkpoint", "--image-path", str(images), db)
    assert result.returncode != 0
    assert "trusthook-runtime" not in result.stderr, result.stderr
    assert "container does not exist" in result.stderr, result.stderr

    result = shim(host, "checkpoint", "--image-path", str(images), web)
    assert result.returncode == 1
    assert result.stderr.startswith(f"trusthook-runtime: checkpoint of container {web} is refused")
    assert f"container {web} of workload {WEB} refused: the workload may not be restored" in (
        result.stderr
    )
    assert "(policy version 1)" in result.stderr and result.stderr.count("\n") == 1

    never = f"never-{uuid.uuid4().hex[:8]}"
    result = shim(host, "checkpoint", "--image-path", str(images), never)
    assert result.returncode == 1
    assert "has verified no launch of it on this host in this boot" in result.stderr
    result = shim(host, "checkpoint", "--image-path", str(images), unknown)
    assert result.returncode == 1
    assert "its last verified launch is not a compliant launch of a workload" in result.stderr

    allowed = audit_events(attest_server, "checkpoint_allowed")
    assert [(e["detail"]["container"], e["detail"]["policy_version"]) for e in allowed] == [(db, 1)]
    assert allowed[0]["detail"]["identity"] == DB and allowed[0]["detail"]["workload"] == DB
    refused = audit_events(attest_server, "checkpoint_refused")
    assert [e["detail"]["container"] for e in refused] == [web, never, unknown]
    assert {e["detail"]["check"] for e in refused} == {"checkpoint"}
    assert {e["detail"]["policy_version"] for e in refused} == {1}


@SQLITE_ONLY
def test_restore_is_decided_remeasured_and_judged_in_the_lineage(
    host: Host,
    attest_server: AttestServer,
    bundle_factory: Any,
    busybox_rootfs: Path,
    tmp_path: Path,
) -> None:
    changed, original, other = two_root_filesystems(
        host, attest_server, bundle_factory, busybox_rootfs, tmp_path
    )
    apply(attest_server, policy(tmp_path / "p.toml", [original, other]))
    launch(host, bundle_factory, DB)  # the instance that is checkpointed: created here
    images = tmp_path / "images"

    # refused: a workload without restore = true; outside its placement; no identity
    for workload, why in [
        (WEB, f"of workload {WEB} refused: the workload may not be restored"),
        (FAR, "it may not run at this host's location: placement 'region = us-1'"),
        ("", "annotations give it no workload identity"),
    ]:
        bundle = restore_bundle(bundle_factory, workload)
        name = f"r-{uuid.uuid4().hex[:8]}"
        result = shim(host, "restore", "--bundle", str(bundle), "--image-path", str(images), name)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(
            f"trusthook-runtime: restore of container {name} is refused"
        )
        assert why in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert runc("state", name).returncode != 0  # nothing started
        (entry,) = json.loads((bundle / "config.json").read_text())["hooks"]["createRuntime"]
        assert entry == own_hook_entry(host.config)

    # allowed: the shim execs runc, whose criu step fails on this machine
    bundle = restore_bundle(bundle_factory, DB)
    name = f"r-{uuid.uuid4().hex[:8]}"
    result = shim(host, "restore", "-d", "--bundle", str(bundle), "--image-path", str(images), name)
    assert result.returncode != 0 and "trusthook-runtime" not in result.stderr, result.stderr
    assert "criu" in result.stderr.lower(), result.stderr
    (entry,) = json.loads((bundle / "config.json").read_text())["hooks"]["createRuntime"]
    assert entry == own_hook_entry(host.config)

    # the restored container's hook: measured once, marked a restore; a second is refused
    hooked = restore_hook(host, name, bundle, DB)
    assert hooked.returncode == 0, hooked.stderr
    records, _ = host.snapshot()
    assert records[-1].event.container_id == name and records[-1].event.restore is True
    assert records[-1].to_json()["content"]["version"] == 3
    again = restore_hook(host, name, bundle, DB)
    assert again.returncode == 1
    assert b"no restore of it was allowed through trusthook-runtime" in again.stderr
    code, verdict = attest(host)
    assert code == 0 and verdict["trusted"] is True, verdict

    # tampered: allowed (the server cannot see the root yet), then measured with another root
    bundle = restore_bundle(bundle_factory, DB, rootfs=changed)
    tampered = f"r-{uuid.uuid4().hex[:8]}"
    args = ("restore", "--bundle", str(bundle), "--image-path", str(images), tampered)
    assert "trusthook-runtime" not in shim(host, *args).stderr
    assert restore_hook(host, tampered, bundle, DB).returncode == 0
    code, verdict = attest(host)
    assert code == 2 and checks(verdict) == ["workload"], verdict
    (reason,) = verdict["reasons"]
    assert (
        f"container {tampered} of workload {DB}: a tampered restore of {DB}" in (reason["message"])
    )
    assert "its root filesystem is not the one it was checkpointed with" in reason["message"]
    assert (reason["expected"], reason["got"]) == (original, other)

    with ServerClient(attest_server.url, attest_server.operator()) as operator:
        detail = operator.get(f"/v1/workloads/{DB}")
    moves = {i["container"]: (i["move"], i["compliant"]) for i in detail["instances"]}
    assert moves[name] == ("same_host", True) and moves[tampered] == ("tampered", False)
    allowed = audit_events(attest_server, "restore_allowed")
    assert [e["detail"]["container"] for e in allowed] == [name, tampered]
    assert {e["detail"]["policy_version"] for e in allowed} == {1}
    host_id = detail["instances"][0]["host_id"]
    assert {e["detail"]["checkpoint_host"] for e in allowed} == {host_id}
    refused = audit_events(attest_server, "restore_refused")
    assert len(refused) == 3 and {e["detail"]["check"] for e in refused} == {"restore"}


@SQLITE_ONLY
def test_a_restore_on_another_host_is_a_move_from_the_checkpointing_host(
    host: Host, attest_server: AttestServer, bundle_factory: Any, tmp_path: Path
) -> None:
    enroll(host, attest_server, attributes={"region": "eu-1"})
    launch(host, bundle_factory)
    assert attest(host)[0] == 0
    apply(attest_server, policy(tmp_path / "p.toml", [first_rootfs(host)]))
    launch(host, bundle_factory, DB)
    assert attest(host)[0] == 0
    b_tpm = new_swtpm(tmp_path / "tpm-b")
    (tmp_path / "b").mkdir()
    with b_tpm:
        b = make_host(b_tpm, tmp_path / "b")
        with b.agent:
            enroll(b, attest_server, attributes={"region": "eu-1"})
            bundle = restore_bundle(bundle_factory, DB)
            name = f"r-{uuid.uuid4().hex[:8]}"
            args = ("restore", "--bundle", str(bundle), "--image-path", str(tmp_path), name)
            assert "trusthook-runtime" not in shim(b, *args).stderr
            assert restore_hook(b, name, bundle, DB).returncode == 0
            code, verdict = attest(b)
    assert code == 0 and verdict["trusted"] is True, verdict
    with ServerClient(attest_server.url, attest_server.operator()) as operator:
        detail = operator.get(f"/v1/workloads/{DB}")
    (lineage,) = detail["lineages"]
    assert [i["move"] for i in detail["instances"]] == ["origin", "verified"]
    assert lineage["moves"] == {"verified": 1}
    (allowed,) = audit_events(attest_server, "restore_allowed")
    assert allowed["detail"]["checkpoint_host"] == lineage["host_id"]
    assert allowed["subject"]["id"] == detail["instances"][1]["host_id"] != lineage["host_id"]
