"""``trusthook demo``: the whole measured launch on an embedded default, end to end.

A real swtpm, the agent, a busybox bundle, ``runc run`` through ``trusthook-runtime``; then the
event log record and ``log verify``. Everything lives in one work directory; the processes it
starts are stopped by PID when it ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from trusthook.devenv.agentproc import AgentProcess, write_config
from trusthook.devenv.bundle import make_bundle
from trusthook.devenv.swtpm import Swtpm
from trusthook.errors import ServiceError

DEFAULT_WORKDIR = Path("/var/lib/trusthook-demo")


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run_demo(workdir: Path = DEFAULT_WORKDIR) -> int:
    bindir = Path(sys.executable).parent
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    _step(f"starting swtpm (state in {workdir / 'tpm'})")
    with Swtpm(workdir / "tpm") as tpm:
        config_path = workdir / "trusthook.toml"
        config = write_config(
            config_path, tcti=tpm.tcti, state_dir=workdir / "state", hook=bindir / "trusthook-hook"
        )
        print(f"    TCTI {tpm.tcti}, config {config_path}")
        _step("starting the trusthook agent")
        with AgentProcess(config_path, config, workdir / "agent.log"):
            print(f"    listening on {config.socket}")
            _step("building a busybox bundle")
            bundle = make_bundle(
                workdir / "bundle", ["/bin/sh", "-c", "echo hello from a measured container"]
            )
            print(f"    {bundle}")
            _step("runc run through trusthook-runtime (which adds the hook)")
            env = {**os.environ, "TRUSTHOOK_CONFIG": str(config_path)}
            run = subprocess.run(
                [str(bindir / "trusthook-runtime"), "run", "--bundle", str(bundle), "demo-1"],
                env=env,
                check=False,
            )
            if run.returncode != 0:
                raise ServiceError(f"runc run failed with {run.returncode}")
            cli = [sys.executable, "-m", "trusthook.cli", "--trusthook-config", str(config_path)]
            _step("trusthook log show")
            subprocess.run([*cli, "log", "show"], check=True)
            _step("trusthook log verify")
            return subprocess.run([*cli, "log", "verify"], check=False).returncode
