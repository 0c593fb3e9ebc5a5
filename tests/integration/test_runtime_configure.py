"""``trusthook runtime configure`` against the real engines: dockerd and containerd started
with the files it wrote (copies of the engines' defaults and of configurations with other
runtimes, comments and odd formatting, on temporary paths only) list the trusthook runtime;
``systemctl reload docker``'s SIGHUP picks it up; podman finds the hook through the
containers.conf configure edited; containers run through it are measured; unconfigure gives
the original back byte for byte and a second configure changes nothing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.dockerd import dockerd_with, runtime_wrapper
from trusthook._devenv.child import spawn, stop, wait_ready

from .conftest import BIN, Host
from .test_engines import DOCKER_IMAGE, PODMAN_IMAGE, ULIMITS, _tar, podman_cli

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[1] / "data" / "engines"
OCI_CONFIG = Path(__file__).resolve().parents[2] / "oci-config"
SHIM = str(BIN / "trusthook-runtime")


def trusthook(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    if not config.exists():
        config.touch()
    return subprocess.run(
        [str(BIN / "trusthook"), "--trusthook-config", str(config), *argv],
        capture_output=True,
        text=True,
        check=False,
    )


def configure(config: Path, engine: str, path: Path, *extra: str) -> str:
    argv = ("runtime", "configure", "--runtime", engine, "--config", str(path), *extra)
    result = trusthook(config, *argv)
    assert result.returncode == 0, result.stderr
    return result.stdout


def unconfigure(config: Path, engine: str, path: Path) -> str:
    result = trusthook(config, "runtime", "unconfigure", "--runtime", engine, "--config", str(path))
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# Docker


def docker_info(cmd: list[str]) -> dict[str, Any]:
    argv = [*cmd, "info", "--format", "{{json .}}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert isinstance(info, dict)
    return info


@pytest.mark.parametrize(
    ("fixture", "default"),
    [("docker-nvidia.json", False), ("docker-tabs.json", True), ("docker-compact.json", True)],
)
def test_dockerd_starts_with_what_configure_wrote(
    tmp_path: Path, fixture: str, default: bool
) -> None:
    original = (DATA / fixture).read_bytes()
    daemon = tmp_path / "daemon.json"
    daemon.write_bytes(original)
    config = tmp_path / "trusthook.toml"
    wrapper = runtime_wrapper(config, tmp_path / "trusthook-runtime")
    out = configure(
        config, "docker", daemon, "--shim-path", str(wrapper), *(["--default"] * default)
    )
    assert "now systemctl reload docker" in out
    with dockerd_with(daemon, tmp_path / "dockerd.log") as (cmd, _):
        info = docker_info(cmd)
    runtimes = info["Runtimes"]
    assert runtimes["trusthook"]["path"] == str(wrapper)
    for name in json.loads(original).get("runtimes", {}):
        assert name in runtimes  # the others are still there
    assert info["DefaultRuntime"] == ("trusthook" if default else "runc")
    configured = daemon.read_bytes()
    assert "unchanged" in configure(config, "docker", daemon, "--shim-path", str(wrapper))
    assert daemon.read_bytes() == configured
    unconfigure(config, "docker", daemon)
    assert daemon.read_bytes() == original


def test_docker_reload_picks_up_the_default_runtime_and_measures(
    host: Host, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """The reload configure asks for (SIGHUP, as systemctl reload docker sends) makes trusthook
    the default runtime of a running dockerd: a plain ``docker run`` is measured. Taking it out
    again needs the restart unconfigure asks for: dockerd 20.10's reload keeps a default the
    file no longer names (and, the runtime gone, crashes)."""
    original = (DATA / "docker-nvidia.json").read_bytes()
    daemon = tmp_path / "daemon.json"
    daemon.write_bytes(original)
    wrapper = runtime_wrapper(host.config_path, tmp_path / "trusthook-runtime")
    with dockerd_with(daemon, tmp_path / "dockerd.log") as (cmd, proc):
        assert "trusthook" not in docker_info(cmd)["Runtimes"]
        tar = _tar(busybox_rootfs, tmp_path / "busybox.tar")
        subprocess.run([*cmd, "import", str(tar), DOCKER_IMAGE], check=True, capture_output=True)
        configure(host.config_path, "docker", daemon, "--shim-path", str(wrapper), "--default")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: docker_info(cmd)["DefaultRuntime"] == "trusthook", "the reload")
        run = [*cmd, "run", "--rm", "--network", "none", DOCKER_IMAGE, "/bin/echo", "hello"]
        result = subprocess.run(run, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "hello"
        assert len(host.snapshot()[0]) == 1
    assert "now systemctl restart docker" in unconfigure(host.config_path, "docker", daemon)
    assert daemon.read_bytes() == original
    with dockerd_with(daemon, tmp_path / "dockerd-again.log") as (cmd, _):
        info = docker_info(cmd)
    assert "trusthook" not in info["Runtimes"] and info["DefaultRuntime"] == "runc"


def test_docker_runs_runtime_trusthook_with_every_other_setting_kept(
    host: Host, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """A fleet's daemon.json (another runtime, registry mirrors, log options): configure adds
    trusthook and keeps the rest; dockerd started with it reports them all, and ``docker run
    --runtime trusthook`` is measured."""
    original = (DATA / "docker-fleet.json").read_bytes()
    daemon = tmp_path / "daemon.json"
    daemon.write_bytes(original)
    wrapper = runtime_wrapper(host.config_path, tmp_path / "trusthook-runtime")
    configure(host.config_path, "docker", daemon, "--shim-path", str(wrapper))
    kept = json.loads(daemon.read_text())
    assert {k: v for k, v in kept.items() if k != "runtimes"} == {
        k: v for k, v in json.loads(original).items() if k != "runtimes"
    }
    assert set(kept["runtimes"]) == {"nvidia", "trusthook"}
    with dockerd_with(daemon, tmp_path / "dockerd.log") as (cmd, _):
        info = docker_info(cmd)
        assert {"nvidia", "trusthook", "runc"} <= set(info["Runtimes"])
        assert info["DefaultRuntime"] == "runc"
        assert info["LoggingDriver"] == "json-file"
        assert "https://mirror.example.internal/" in info["RegistryConfig"]["Mirrors"]
        tar = _tar(busybox_rootfs, tmp_path / "busybox.tar")
        subprocess.run([*cmd, "import", str(tar), DOCKER_IMAGE], check=True, capture_output=True)
        run = [*cmd, "run", "--rm", "--network", "none", "--runtime", "trusthook", DOCKER_IMAGE]
        result = subprocess.run(
            [*run, "/bin/echo", "hello"], check=False, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert len(host.snapshot()[0]) == 1
    unconfigure(host.config_path, "docker", daemon)
    assert daemon.read_bytes() == original


def test_docker_reload_takes_out_a_runtime_that_is_not_the_default(tmp_path: Path) -> None:
    daemon = tmp_path / "daemon.json"
    daemon.write_bytes((DATA / "docker-compact.json").read_bytes())
    config = tmp_path / "trusthook.toml"
    wrapper = runtime_wrapper(config, tmp_path / "trusthook-runtime")
    with dockerd_with(daemon, tmp_path / "dockerd.log") as (cmd, proc):
        configure(config, "docker", daemon, "--shim-path", str(wrapper))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "trusthook" in docker_info(cmd)["Runtimes"], "the reload")
        assert "now systemctl reload docker" in unconfigure(config, "docker", daemon)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "trusthook" not in docker_info(cmd)["Runtimes"], "the reload")
        assert "crun" in docker_info(cmd)["Runtimes"]


# containerd


@contextlib.contextmanager
def containerd_with(config_toml: Path, log_path: Path) -> Iterator[list[str]]:
    """containerd with ``config_toml``, its own root, state and socket (under /run: a unix
    socket path must be short); the ctr command line."""
    base = Path(tempfile.mkdtemp(prefix="thc-", dir="/run"))
    sock = base / "c.sock"
    proc = spawn(
        [
            "containerd",
            "--config",
            str(config_toml),
            "--root",
            str(base / "root"),
            "--state",
            str(base / "state"),
            "--address",
            str(sock),
        ],
        log_path,
    )
    cmd = ["ctr", "--address", str(sock)]
    try:
        wait_ready(
            proc,
            lambda: (
                subprocess.run([*cmd, "version"], capture_output=True, check=False).returncode == 0
            ),
            what="containerd",
            log_path=log_path,
            timeout=30,
            poll=0.1,
        )
        yield cmd
    finally:
        stop(proc, timeout=30)
        subprocess.run(["umount", "-R", "-l", str(base)], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def cri_plugin(cmd: list[str], log_path: Path) -> tuple[str, str]:
    """The CRI plugin's status in ``ctr plugins ls`` and the configuration it logged."""
    plugins = subprocess.run([*cmd, "plugins", "ls"], capture_output=True, text=True, check=True)
    row = next(
        line
        for line in plugins.stdout.splitlines()
        if "io.containerd.grpc.v1" in line.split()[:1] and " cri " in line
    )
    started = [
        line for line in log_path.read_text().splitlines() if "Start cri plugin with config" in line
    ]
    return row.split()[-1], started[0] if started else ""


def containerd_copy(fixture: str, tmp_path: Path) -> Path:
    """A copy of a fixture whose one absolute path containerd writes to (the opt plugin's) is
    moved under ``tmp_path``."""
    text = (DATA / fixture).read_text()
    for opt in ('"/opt/containerd"', '"/var/lib/containerd/opt"'):
        text = text.replace(opt, json.dumps(str(tmp_path / "opt")))
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "fixture", ["containerd-debian12.toml", "containerd-default-1.6.toml", "containerd-odd.toml"]
)
@pytest.mark.parametrize("default", [False, True])
def test_containerd_loads_what_configure_wrote(tmp_path: Path, fixture: str, default: bool) -> None:
    path = containerd_copy(fixture, tmp_path)
    original = path.read_bytes()
    config = tmp_path / "trusthook.toml"
    out = configure(config, "containerd", path, "--shim-path", SHIM, *(["--default"] * default))
    assert "now systemctl restart containerd" in out
    log = tmp_path / "containerd.log"
    with containerd_with(path, log) as cmd:
        status, started = cri_plugin(cmd, log)
    assert status == "ok", log.read_text()[-3000:]
    assert "trusthook:{Type:io.containerd.runc.v2" in started
    assert f"BinaryName:{SHIM}" in started
    assert f"DefaultRuntimeName:{'trusthook' if default else 'runc'} " in started
    assert "runc:{Type:io.containerd.runc.v2" in started
    configured = path.read_bytes()
    assert "unchanged" in configure(
        config, "containerd", path, "--shim-path", SHIM, *(["--default"] * default)
    )
    assert path.read_bytes() == configured
    unconfigure(config, "containerd", path)
    assert path.read_bytes() == original


TRUSTHOOK_ONLY = """
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.trusthook]
  runtime_type = "io.containerd.runc.v2"
"""


def test_containerd_loses_its_cri_plugin_when_only_trusthook_is_added(tmp_path: Path) -> None:
    """Why configure (and the shipped snippet) write out the built-in runc: trusthook's table
    alone appended to Debian's config.toml leaves containerd's CRI plugin unloaded."""
    path = containerd_copy("containerd-debian12.toml", tmp_path)
    debian = path.read_text()
    path.write_text(debian + TRUSTHOOK_ONLY)
    log = tmp_path / "containerd.log"
    with containerd_with(path, log) as cmd:
        status, _ = cri_plugin(cmd, log)
    assert status == "error"
    assert "no corresponding runtime configured" in log.read_text()
    snippet = (OCI_CONFIG / "containerd-config.toml").read_text().replace("version = 2\n", "")
    path.write_text(debian + snippet)
    log = tmp_path / "containerd-shipped.log"
    with containerd_with(path, log) as cmd:
        status, _ = cri_plugin(cmd, log)
    assert status == "ok", log.read_text()[-2000:]


# podman


def test_podman_runs_the_hook_configure_wrote(
    host: Host, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """podman told the hooks directory on its command line (``--hooks-dir``)."""
    with podman_cli(host, busybox_rootfs, tmp_path) as podman:
        hooks = tmp_path / "hooks.d"
        (hooks / "trusthook.json").unlink()
        conf = tmp_path / "etc" / "containers.conf"  # none: configure makes one, then removes it
        where = ("--runtime", "podman", "--hooks-dir", str(hooks), "--config", str(conf))
        result = host.cli("runtime", "configure", *where)
        assert result.returncode == 0, result.stderr
        run = [*podman, "run", "--rm", "--network", "none", *ULIMITS, PODMAN_IMAGE, "/bin/true"]
        assert subprocess.run(run, capture_output=True, check=False).returncode == 0
        assert len(host.snapshot()[0]) == 1
        assert host.cli("runtime", "configure", *where).stdout.count("unchanged") == 2
        result = host.cli("runtime", "unconfigure", *where)
        assert result.returncode == 0, result.stderr
        assert list(hooks.iterdir()) == [] and not conf.exists()
        assert subprocess.run(run, capture_output=True, check=False).returncode == 0
        assert len(host.snapshot()[0]) == 1  # no hook: not measured


def without_hooks_dir(podman: list[str]) -> list[str]:
    at = podman.index("--hooks-dir")
    return podman[:at] + podman[at + 2 :]


@pytest.mark.parametrize("fixture", ["containers-debian12.conf", "containers-hooks-dir.conf"])
def test_podman_finds_the_hook_through_the_containers_conf_configure_edited(
    host: Host, busybox_rootfs: Path, tmp_path: Path, fixture: str
) -> None:
    """podman with no ``--hooks-dir``, reading only the containers.conf ``CONTAINERS_CONF``
    names: before configure its hooks_dir (podman's defaults where it sets none) leaves out the
    temporary hooks directory and the hook there does not run; configure adds the directory
    (Debian's file: with podman's defaults), and the container is measured; unconfigure gives
    the file back byte for byte."""
    with podman_cli(host, busybox_rootfs, tmp_path) as podman:
        hooks = tmp_path / "hooks.d"
        conf = tmp_path / "containers.conf"
        original = (DATA / fixture).read_bytes()
        conf.write_bytes(original)
        env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        run = [
            *without_hooks_dir(podman),
            *("run", "--rm", "--network", "none", *ULIMITS, PODMAN_IMAGE, "/bin/true"),
        ]

        def records_after_a_run() -> int:
            result = subprocess.run(run, capture_output=True, text=True, env=env, check=False)
            assert result.returncode == 0, result.stderr
            return len(host.snapshot()[0])

        # podman_cli's hooks.d file is in place, but podman does not read its directory
        assert records_after_a_run() == 0
        (hooks / "trusthook.json").unlink()
        where = ("--runtime", "podman", "--hooks-dir", str(hooks), "--config", str(conf))
        result = host.cli("runtime", "configure", *where)
        assert result.returncode == 0, result.stderr
        assert f"(backup: {conf}.trusthook-backup)" in result.stdout
        assert "now nothing to reload" in result.stdout
        assert records_after_a_run() == 1
        configured = conf.read_bytes()
        assert host.cli("runtime", "configure", *where).stdout.count("unchanged") == 2
        assert conf.read_bytes() == configured
        result = host.cli("runtime", "unconfigure", *where)
        assert result.returncode == 0, result.stderr
        assert conf.read_bytes() == original
        assert not (tmp_path / "containers.conf.trusthook-backup").exists()
        assert list(hooks.iterdir()) == []
        assert records_after_a_run() == 1  # no hook: not measured
