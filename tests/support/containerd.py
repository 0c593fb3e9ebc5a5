"""A containerd of one's own for tests: its own root, state, socket and config (the CRI plugin
off: no CNI here), with ``TRUSTHOOK_CONFIG`` and ``TRUSTHOOK_AGENT_SOCKET`` in its
environment, which the runc v2 shim it starts passes on to the runtime binary; stopped by PID
when the context ends."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.support.shim import shim_env
from trusthook._devenv.child import spawn, stop, wait_ready

CONTAINERD_ROOT = Path("/var/lib/trusthook-test-containerd")
START_TIMEOUT = 60.0


@contextlib.contextmanager
def containerd(config_path: Path, log_path: Path) -> Iterator[list[str]]:
    """Start containerd for the host whose agent config is ``config_path``; yield the ``ctr``
    command line (namespace ``trusthook-test``) that talks to it."""
    root = CONTAINERD_ROOT / uuid.uuid4().hex[:8]
    root.mkdir(parents=True)
    address = root / "containerd.sock"
    toml = root / "config.toml"
    toml.write_text(
        "version = 2\n"
        f'root = "{root / "root"}"\nstate = "{root / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{address}"\n'
        f'[ttrpc]\n  address = "{root / "ttrpc.sock"}"\n'
        f'[debug]\n  address = "{root / "debug.sock"}"\n'
    )
    env = {**os.environ, **shim_env(config_path)}
    proc = spawn(["containerd", "--config", str(toml)], log_path, env)
    cmd = ["ctr", "--address", str(address), "--namespace", "trusthook-test"]
    try:
        wait_ready(
            proc,
            lambda: (
                subprocess.run([*cmd, "version"], capture_output=True, check=False).returncode == 0
            ),
            what="containerd",
            log_path=log_path,
            timeout=START_TIMEOUT,
            poll=0.25,
        )
        yield cmd
    finally:
        stop(proc, timeout=60)
        subprocess.run(["umount", "-R", "-l", str(root)], check=False, capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)
