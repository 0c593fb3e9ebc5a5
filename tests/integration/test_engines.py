"""Each real engine measures its containers: crun directly, podman with the hooks.d file, and
``docker run --runtime trusthook`` against a dockerd this test starts."""

from __future__ import annotations

import contextlib
import json
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import dockerd as devenv_dockerd
from trusthook.common.eventlog import verify_against_pcr

from .conftest import SHIM, Host, runc

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
PODMAN_IMAGE = "localhost/busybox:trusthook"
DOCKER_IMAGE = "busybox:trusthook"


def _engine_run(engine: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``ENGINE run --rm --network none ARGS`` with its output captured."""
    return subprocess.run(
        [*engine, "run", "--rm", "--network", "none", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def _tar(rootfs: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        tar.add(rootfs, arcname=".")
    return dest


def _two_launches_of_one_image_were_measured(host: Host) -> None:
    """Two records that replay to the PCR: two containers, one rootfs, one launch profile."""
    records, pcr_value = host.snapshot()
    assert len(records) == 2
    verify_against_pcr(records, 23, pcr_value)
    a, b = (r.event for r in records)
    assert a.container_id != b.container_id
    assert a.rootfs_digest == b.rootfs_digest
    assert a.launch_profile_digest == b.launch_profile_digest


def test_crun_run_with_hook_is_measured(host: Host, bundle_factory: Any) -> None:
    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    cid = f"crun-{uuid.uuid4().hex[:8]}"
    result = runc("run", "--bundle", str(bundle), cid, binary="crun")
    assert result.returncode == 0, result.stderr
    records, pcr_value = host.snapshot()
    assert [r.event.container_id for r in records] == [cid]
    verify_against_pcr(records, 23, pcr_value)


def test_crun_refuses_to_start_when_the_hook_fails(host: Host, bundle_factory: Any) -> None:
    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    host.agent.stop()
    result = runc("run", "--bundle", str(bundle), f"crun-{uuid.uuid4().hex[:8]}", binary="crun")
    assert result.returncode != 0


def test_runtime_shim_with_crun_as_the_real_runtime(host: Host, bundle_factory: Any) -> None:
    text = host.config_path.read_text().replace("[runtime]\n", '[runtime]\npath = "crun"\n')
    host.config_path.write_text(text)
    host.agent.stop()  # the agent tells the shim which runtime to run: it reads it at start
    host.agent.start()
    bundle = bundle_factory()
    cid = f"crun-{uuid.uuid4().hex[:8]}"
    result = runc("run", "--bundle", str(bundle), cid, binary=str(SHIM), env=host.env)
    assert result.returncode == 0, result.stderr
    assert [r.event.container_id for r in host.snapshot()[0]] == [cid]


@pytest.fixture
def podman(host: Host, busybox_rootfs: Path, tmp_path: Path) -> Iterator[list[str]]:
    """podman with private storage and the shipped hooks.d file pointed at this host."""
    with podman_cli(host, busybox_rootfs, tmp_path) as cmd:
        yield cmd


@contextlib.contextmanager
def podman_cli(host: Host, busybox_rootfs: Path, tmp_path: Path) -> Iterator[list[str]]:
    """podman with private storage, a busybox image, the hooks.d file pointed at ``host``."""
    hooks_dir = tmp_path / "hooks.d"
    hooks_dir.mkdir()
    shipped = json.loads((REPO / "oci-config" / "hooks.d" / "trusthook.json").read_text())
    shipped["hook"]["path"] = str(host.hook_entry()["path"])
    shipped["hook"]["args"] = ["trusthook-hook", *host.config.hook_args, "--stage", "createRuntime"]
    (hooks_dir / "trusthook.json").write_text(json.dumps(shipped))
    short = uuid.uuid4().hex[:8]
    runroot = Path(f"/run/thp-{short}")  # podman refuses a runroot longer than 50 characters
    cmd = [
        "podman",
        "--root",
        str(tmp_path / "podman-root"),
        "--runroot",
        str(runroot),
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
        "--hooks-dir",
        str(hooks_dir),
    ]
    tar = _tar(busybox_rootfs, tmp_path / "busybox.tar")
    subprocess.run([*cmd, "import", str(tar), PODMAN_IMAGE], check=True, capture_output=True)
    yield cmd
    subprocess.run([*cmd, "rm", "--all", "--force"], check=False, capture_output=True)
    subprocess.run([*cmd, "rmi", "--all", "--force"], check=False, capture_output=True)
    subprocess.run(
        ["umount", "-R", "-l", str(tmp_path / "podman-root")], check=False, capture_output=True
    )
    subprocess.run(["rm", "-rf", "--one-file-system", str(runroot)], check=False)


@pytest.mark.parametrize("runtime", ["crun", "runc"])
def test_podman_with_hooks_d_measures_and_profiles_match(
    host: Host, podman: list[str], runtime: str
) -> None:
    names = [f"pod-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        result = _engine_run(
            podman, "--runtime", runtime, *ULIMITS, "--name", name, PODMAN_IMAGE, "/bin/true"
        )
        assert result.returncode == 0, result.stderr
    _two_launches_of_one_image_were_measured(host)


def test_podman_container_does_not_start_without_the_agent(host: Host, podman: list[str]) -> None:
    host.agent.stop()
    result = _engine_run(podman, *ULIMITS, PODMAN_IMAGE, "/bin/echo", "should-not-run")
    assert result.returncode != 0
    assert "should-not-run" not in result.stdout
    assert "trusthook" in result.stderr


@pytest.fixture
def dockerd(host: Host, busybox_rootfs: Path, tmp_path: Path) -> Iterator[list[str]]:
    """A dockerd of this test's own, with trusthook-runtime registered as "trusthook"."""
    with dockerd_cli(host, busybox_rootfs, tmp_path) as cmd:
        yield cmd


def runtime_wrapper(host: Host, path: Path) -> Path:
    """An executable that runs trusthook-runtime with ``host``'s config."""
    return devenv_dockerd.runtime_wrapper(host.config_path, path)


@contextlib.contextmanager
def dockerd_cli(host: Host, busybox_rootfs: Path, tmp_path: Path) -> Iterator[list[str]]:
    """A dockerd of its own for ``host`` with busybox imported; the docker command line."""
    with devenv_dockerd.dockerd(host.config_path, tmp_path / "dockerd.log") as cmd:
        tar = _tar(busybox_rootfs, tmp_path / "busybox.tar")
        subprocess.run([*cmd, "import", str(tar), DOCKER_IMAGE], check=True, capture_output=True)
        yield cmd


def test_docker_run_with_trusthook_runtime_is_measured(host: Host, dockerd: list[str]) -> None:
    for _ in range(2):
        result = _engine_run(dockerd, "--runtime", "trusthook", DOCKER_IMAGE, "/bin/echo", "hello")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "hello"
    _two_launches_of_one_image_were_measured(host)


def test_docker_run_fails_closed_without_the_agent(host: Host, dockerd: list[str]) -> None:
    host.agent.stop()
    result = _engine_run(
        dockerd, "--runtime", "trusthook", DOCKER_IMAGE, "/bin/echo", "should-not-run"
    )
    assert result.returncode != 0
    assert "should-not-run" not in result.stdout
    assert "is the trusthook agent running?" in result.stderr
