"""containerd (issue 11 §8): ``ctr run`` with the runc v2 shim pointed at trusthook-runtime
(``--runc-binary``, as the shipped config's ``BinaryName`` points it), against a containerd the
test starts with its own root and socket: each container is measured, its record replays to
the PCR, and without the agent no container starts."""

from __future__ import annotations

import subprocess
import tarfile
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import SHIM, Host
from tests.support.containerd import containerd
from trusthook._devenv.ociimage import ImageSpec, build_image, busybox_entries, tar_bytes
from trusthook.common.eventlog import verify_against_pcr

pytestmark = pytest.mark.integration
IMAGE = "docker.io/library/busybox:trusthook"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ctr(host: Host, tmp_path: Path) -> Iterator[list[str]]:
    """``ctr`` against a containerd of the test's own, with a busybox image imported."""
    layout = tmp_path / "image"
    build_image(
        layout,
        "busybox:trusthook",
        ImageSpec(layers=[tar_bytes(busybox_entries())], compression="gzip", user="0:0"),
    )
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    with containerd(host.config_path, tmp_path / "containerd.log") as cmd:
        imported = subprocess.run(
            [*cmd, "images", "import", "--index-name", IMAGE, str(archive)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert imported.returncode == 0, imported.stderr
        yield cmd


def run(ctr: list[str], *argv: str) -> subprocess.CompletedProcess[str]:
    name = f"ctr-{uuid.uuid4().hex[:8]}"
    return subprocess.run(
        [*ctr, "run", "--rm", "--runc-binary", str(SHIM), IMAGE, name, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_ctr_run_through_the_shim_is_measured(host: Host, ctr: list[str]) -> None:
    shipped = tomllib.loads((REPO / "oci-config" / "containerd-config.toml").read_text())
    options = shipped["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert options["trusthook"]["runtime_type"] == "io.containerd.runc.v2"
    assert Path(options["trusthook"]["options"]["BinaryName"]).name == SHIM.name
    for _ in range(2):
        result = run(ctr, "/bin/echo", "measured")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "measured\n"
    records, pcr_value = host.snapshot()
    verify_against_pcr(records, 23, pcr_value)
    a, b = (r.event for r in records)
    assert a.container_id != b.container_id and a.container_id.startswith("ctr-")
    assert a.rootfs_digest == b.rootfs_digest and a.launch_profile_digest == b.launch_profile_digest
    assert f"/io.containerd.runtime.v2.task/trusthook-test/{a.container_id}" in a.bundle


def test_ctr_run_does_not_start_without_the_agent(host: Host, ctr: list[str]) -> None:
    host.agent.stop()
    result = run(ctr, "/bin/echo", "should-not-run")
    assert result.returncode != 0
    assert "should-not-run" not in result.stdout
    assert "trusthook" in result.stderr, result.stderr
