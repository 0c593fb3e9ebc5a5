"""A dockerd of one's own for tests and benchmarks, with trusthook-runtime as runtime "trusthook".

It runs with its own data, exec root and socket (``--iptables=false --bridge=none``: containers
use ``--network none``), and is stopped by PID when the context ends.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.support.shim import shim_env, shim_program
from trusthook._devenv.child import spawn, stop, wait_ready

DOCKER_ROOT = Path("/var/lib/trusthook-test-docker")
START_TIMEOUT = 60.0


def runtime_wrapper(config_path: Path, path: Path) -> Path:
    """An executable running trusthook-runtime for the host ``config_path`` configures (engines
    pass no env)."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in shim_env(config_path).items())
    path.write_text(f'#!/bin/sh\n{env} exec {shim_program()} "$@"\n')
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def dockerd(config_path: Path, log_path: Path) -> Iterator[list[str]]:
    """Start dockerd with trusthook-runtime (``config_path``) as runtime "trusthook"; yield the
    ``docker`` command line that talks to it."""
    root = DOCKER_ROOT / uuid.uuid4().hex[:8]
    root.mkdir(parents=True)
    wrapper = runtime_wrapper(config_path, root / "trusthook-runtime")
    daemon_json = root / "daemon.json"
    daemon_json.write_text(json.dumps({"runtimes": {"trusthook": {"path": str(wrapper)}}}))
    with dockerd_with(daemon_json, log_path, root) as (cmd, _):
        yield cmd


@contextlib.contextmanager
def dockerd_with(
    daemon_json: Path, log_path: Path, root: Path | None = None
) -> Iterator[tuple[list[str], subprocess.Popen[bytes]]]:
    """Start dockerd with ``daemon_json`` as its configuration file, its data, exec root,
    pidfile and socket under ``root`` (default: a new directory), removed afterwards; yield the
    ``docker`` command line and the process."""
    if root is None:
        root = DOCKER_ROOT / uuid.uuid4().hex[:8]
        root.mkdir(parents=True)
    sock = root / "docker.sock"
    proc = spawn(
        [
            "dockerd",
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "docker.pid"),
            "--host",
            f"unix://{sock}",
            "--iptables=false",
            "--bridge=none",
            "--config-file",
            str(daemon_json),
        ],
        log_path,
    )
    cmd = ["docker", "--host", f"unix://{sock}"]
    try:
        wait_ready(
            proc,
            lambda: (
                subprocess.run([*cmd, "info"], capture_output=True, check=False).returncode == 0
            ),
            what="dockerd",
            log_path=log_path,
            timeout=START_TIMEOUT,
            poll=0.25,
        )
        yield cmd, proc
    finally:
        stop(proc, timeout=60)
        subprocess.run(["umount", "-R", "-l", str(root / "data")], check=False, capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)
