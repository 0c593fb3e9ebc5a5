"""``trusthook demo``: the whole measured launch on an embedded default, end to end.

A real swtpm, the agent, a busybox bundle, ``runc run`` through ``trusthook-runtime``; then the
event log record and ``log verify``; then an attestation server on SQLite over mutual TLS on
loopback, enrollment, a quote with the log, the verdict. Everything lives in one work
directory; the processes it starts are stopped by PID when it ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from trusthook.devenv.agentproc import AgentProcess, write_config
from trusthook.devenv.bundle import make_bundle
from trusthook.devenv.server import ServerProcess, swtpm_ek_bundle, write_server_config
from trusthook.devenv.swtpm import Swtpm, free_port_pair
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
            subprocess.run([*cli, "log", "verify"], check=True)
            return _attest(workdir, cli)


def _attest(workdir: Path, cli: list[str]) -> int:
    """Server, enrollment, attestation, status."""
    _step("starting the attestation server (SQLite, mutual TLS on 127.0.0.1)")
    server_config = workdir / "server.toml"
    write_server_config(
        server_config,
        state_dir=workdir / "server",
        port=free_port_pair(),
        ek_ca_bundle=swtpm_ek_bundle(workdir / "ek-ca.pem"),
    )
    server = ServerProcess(server_config, workdir / "server.log")
    server.init()
    with server:
        print(f"    {server.url}, config {server_config}")
        _step("trusthook enroll (EK certificate, AK, credential activation)")
        subprocess.run(
            [*cli, "enroll", "--server", server.url, "--server-ca", str(server.ca_cert),
             "--group", "lab"],
            check=True,
        )  # fmt: skip
        _step("trusthook attest (quote over PCRs 0-7 and 23, with the event log)")
        return subprocess.run([*cli, "attest"], check=False).returncode
