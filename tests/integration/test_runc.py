"""The measured launch under real runc, with the agent on a real swtpm."""

from __future__ import annotations

import concurrent.futures
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from trusthook.common.eventlog import replay, verify_against_pcr
from trusthook.measure.walk import measure_rootfs

from .conftest import SHIM, Host, runc

pytestmark = pytest.mark.integration


def _cid() -> str:
    return f"th-{uuid.uuid4().hex[:12]}"


def test_runc_run_with_hook_appends_one_record_that_replays_to_the_pcr(
    host: Host, bundle_factory: Any, busybox_rootfs: Path
) -> None:
    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    cid = _cid()
    result = runc("run", "--bundle", str(bundle), cid)
    assert result.returncode == 0, result.stderr
    records, pcr_value = host.snapshot()
    assert len(records) == 1
    event = records[0].event
    assert event.container_id == cid
    assert event.bundle == str(bundle)
    assert event.stage == "createRuntime"
    assert event.rootfs_digest == "sha256:" + measure_rootfs(busybox_rootfs).digest.hex()
    assert pcr_value == replay(records)
    assert pcr_value != bytes(32)
    verify = host.cli("log", "verify")
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith("OK: 1 records")


def test_log_verify_direct_reads_the_tpm_after_the_agent_stops(
    host: Host, bundle_factory: Any
) -> None:
    bundle = bundle_factory(
        hooks={
            "prestart": [
                {
                    **host.hook_entry(),
                    "args": ["trusthook-hook", *host.config.hook_args, "--stage", "prestart"],
                }
            ]
        }
    )
    assert runc("run", "--bundle", str(bundle), _cid()).returncode == 0
    host.agent.stop()
    verify = host.cli("log", "verify")
    assert verify.returncode == 0, verify.stderr
    assert "(tpm)" in verify.stdout
    show = host.cli("log", "show")
    assert "prestart" in show.stdout


def test_two_launches_of_one_bundle_share_the_launch_profile_digest(
    host: Host, bundle_factory: Any
) -> None:
    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    for _ in range(2):
        assert runc("run", "--bundle", str(bundle), _cid()).returncode == 0
    records, _ = host.snapshot()
    a, b = (r.event for r in records)
    assert a.container_id != b.container_id
    assert a.launch_profile_digest == b.launch_profile_digest
    assert a.rootfs_digest == b.rootfs_digest
    assert records[0].digest != records[1].digest


def test_twenty_concurrent_starts_are_each_measured_once_and_replay(
    host: Host, bundle_factory: Any
) -> None:
    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    ids = [_cid() for _ in range(20)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda cid: runc("run", "--bundle", str(bundle), cid), ids))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    records, pcr_value = host.snapshot()
    assert sorted(r.event.container_id for r in records) == sorted(ids)
    verify_against_pcr(records, host.config.pcr, pcr_value)


def _touch_bundle(host: Host, bundle_factory: Any, out: Path) -> Path:
    """A hooked bundle whose container creates ``out/ran``: proof that it started."""
    out.mkdir()
    mount = {"destination": "/out", "type": "bind", "source": str(out), "options": ["rbind", "rw"]}
    return bundle_factory(  # type: ignore[no-any-return]
        ["/bin/touch", "/out/ran"], hooks={"createRuntime": [host.hook_entry()]}, mounts=[mount]
    )


def test_container_does_not_start_when_the_agent_is_stopped(
    host: Host, bundle_factory: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    bundle = _touch_bundle(host, bundle_factory, out)
    host.agent.stop()
    result = runc("run", "--bundle", str(bundle), _cid())
    assert result.returncode != 0
    assert "is the trusthook agent running?" in result.stderr
    assert not (out / "ran").exists()


def test_an_image_annotation_too_long_for_a_record_is_refused_before_any_is_written(
    host: Host, bundle_factory: Any, tmp_path: Path
) -> None:
    """A record must fit the server's audit entry: an image reference of 5,000 bytes would
    make every attestation of the host fail after it. The container does not start, the
    one line names the annotation, the log is unchanged."""
    out = tmp_path / "out"
    bundle = _touch_bundle(host, bundle_factory, out)
    config = json.loads((bundle / "config.json").read_text())
    config["annotations"] = {"org.opencontainers.image.ref.name": "r" * 5000}
    (bundle / "config.json").write_text(json.dumps(config))
    result = runc("run", "--bundle", str(bundle), _cid())
    assert result.returncode != 0
    assert (
        "annotation org.opencontainers.image.ref.name is 5000 bytes, expected at most 1024"
        in result.stderr
    )
    assert not (out / "ran").exists()
    assert host.snapshot()[0] == []


def test_audit_mode_starts_the_container_and_says_it_is_unmeasured(
    swtpm: Any, bundle_factory: Any, tmp_path: Path
) -> None:
    from .conftest import make_host

    host = make_host(swtpm, tmp_path, mode="audit")
    out = tmp_path / "out"
    bundle = _touch_bundle(host, bundle_factory, out)
    result = runc("run", "--bundle", str(bundle), _cid())
    assert result.returncode == 0, result.stderr
    assert (out / "ran").exists()
    assert "--audit" in host.hook_entry()["args"]


def _state(bundle: Path, cid: str = "direct-1") -> bytes:
    return json.dumps(
        {"ociVersion": "1.0.2", "id": cid, "status": "creating", "pid": 1, "bundle": str(bundle)}
    ).encode()


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (b"", "state JSON on stdin is empty"),
        (b"{not json", "state JSON on stdin is not valid JSON"),
        (b"[]", "state JSON on stdin must be a JSON object, got list"),
        (
            b'{"id": "x", "status": "creating", "bundle": "relative"}',
            "'bundle' must be an absolute path",
        ),
        (b'{"id": "a/b", "status": "creating", "bundle": "/tmp"}', "forbidden characters"),
    ],
)
def test_malformed_state_is_refused_and_nothing_is_measured(
    host: Host, stdin: bytes, message: str
) -> None:
    result = host.run_hook(stdin)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert message in err
    assert err.count("\n") == 1
    assert host.snapshot()[0] == []


def test_missing_config_json_is_refused(host: Host, tmp_path: Path) -> None:
    bundle = tmp_path / "empty-bundle"
    bundle.mkdir()
    result = host.run_hook(_state(bundle))
    assert result.returncode == 1
    assert f"bundle {bundle} has no config.json" in result.stderr.decode()
    assert host.snapshot()[0] == []


def test_rootfs_symlink_to_host_etc_is_refused(host: Host, bundle_factory: Any) -> None:
    bundle = bundle_factory()
    config = json.loads((bundle / "config.json").read_text())
    config["root"]["path"] = "rootfs"
    (bundle / "config.json").write_text(json.dumps(config))
    (bundle / "rootfs").symlink_to("/etc")
    result = host.run_hook(_state(bundle))
    assert result.returncode == 1
    assert "is a symlink; refusing to follow it" in result.stderr.decode()
    assert host.snapshot()[0] == []


def test_runtime_shim_injects_the_hook_and_keeps_unknown_fields(
    host: Host, bundle_factory: Any
) -> None:
    bundle = bundle_factory()
    config = json.loads((bundle / "config.json").read_text())
    config["x-vendor-extension"] = {"keep": [1, 2, 3]}
    (bundle / "config.json").write_text(json.dumps(config))
    cid = _cid()
    result = runc("run", "--bundle", str(bundle), cid, binary=str(SHIM), env=host.env)
    assert result.returncode == 0, result.stderr
    after = json.loads((bundle / "config.json").read_text())
    assert after["x-vendor-extension"] == {"keep": [1, 2, 3]}
    assert [h["path"] for h in after["hooks"]["createRuntime"]] == [host.hook_entry()["path"]]
    records, _ = host.snapshot()
    assert [r.event.container_id for r in records] == [cid]


def test_runtime_shim_passes_other_subcommands_through(host: Host, tmp_path: Path) -> None:
    root = tmp_path / "runc-root"
    via_shim = runc("--root", str(root), "list", "--format", "json", binary=str(SHIM), env=host.env)
    direct = runc("--root", str(root), "list", "--format", "json")
    assert (via_shim.returncode, via_shim.stdout) == (direct.returncode, direct.stdout)
    version = runc("--version", binary=str(SHIM), env=host.env)
    assert version.stdout == runc("--version").stdout
