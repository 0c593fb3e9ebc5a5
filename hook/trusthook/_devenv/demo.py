"""``trusthook demo``: the whole measured launch on an embedded default, end to end.

A real swtpm, the agent, a busybox bundle, ``runc run`` through ``trusthook-runtime``; then the
event log record and ``log verify``; then an attestation server on SQLite over mutual TLS on
loopback, enrollment, a quote with the log, the verdict; then an encrypted image whose key only
the server holds, released sealed to the TPM and decrypted into a tmpfs root at container start;
then a policy manifest applied, and a launch appraised against it. Everything lives in one work
directory; the processes it starts are stopped by PID when it ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from trusthook._devenv.agentproc import AgentProcess, write_agent_config
from trusthook._devenv.bundle import make_bundle, write_bundle_config
from trusthook._devenv.ociimage import Entry, ImageSpec, build_image, busybox_entries, tar_bytes
from trusthook._devenv.serverproc import ServerProcess, swtpm_ek_bundle, write_server_config
from trusthook._devenv.swtpm import Swtpm, free_port_pair
from trusthook.common.config import load_config
from trusthook.errors import ServiceError
from trusthook.image.layout import Layout
from trusthook.server.config import load_server_config

DEFAULT_WORKDIR = Path("/var/lib/trusthook-demo")


def _shim_env(config_path: Path) -> dict[str, str]:
    """The shim's environment: the agent's socket (the shim reads no config file), and the
    config for what the shim runs."""
    socket = str(load_config(config_path).socket)
    return {**os.environ, "TRUSTHOOK_CONFIG": str(config_path), "TRUSTHOOK_AGENT_SOCKET": socket}


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run_demo(workdir: Path = DEFAULT_WORKDIR) -> int:
    bindir = Path(sys.executable).parent
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    _step(f"starting swtpm (state in {workdir / 'tpm'})")
    with Swtpm(workdir / "tpm") as tpm:
        config_path = workdir / "trusthook.toml"
        config = write_agent_config(
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
            env = _shim_env(config_path)
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
            return _attest(workdir, cli, config_path)


def _attest(workdir: Path, cli: list[str], config_path: Path) -> int:
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
        enroll = [*cli, "enroll", "--server", server.url, "--server-ca", str(server.ca_cert)]
        _step("trusthook enroll (EK certificate, AK, credential activation): an EK the")
        print("    operator has not admitted waits for approval")
        subprocess.run([*enroll, "--note", "the trusthook demo"], check=False)
        _step("the operator: trusthook server hosts pending, then approve it into group lab")
        hosts = [*cli, "server", "hosts"]
        listed = subprocess.run(
            [*hosts, "pending", "--json", "--config", str(server_config)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for pending in json.loads(listed):
            host_id = pending["admission"]["ek_sha256"]
            subprocess.run(
                [*hosts, "approve", host_id, "--group", "lab", "--config", str(server_config)],
                check=True,
            )
        _step("trusthook enroll again: admitted, the server assigns the group")
        subprocess.run(enroll, check=True)
        _step("trusthook attest (quote over PCRs 0-7 and 23, with the event log)")
        code = subprocess.run([*cli, "attest"], check=False).returncode
        if code != 0:
            return code
        return _encrypted_image(workdir, cli, config_path, server, server_config)


def _encrypted_image(
    workdir: Path, cli: list[str], config_path: Path, server: ServerProcess, server_config: Path
) -> int:
    """An encrypted image whose key only the server holds, run after attestation."""
    _step("trusthook server keys create images (the key stays on the server)")
    server_cli = [*cli, "server", "keys"]
    subprocess.run([*server_cli, "create", "images", "--config", str(server_config)], check=True)
    public = workdir / "images.pub.pem"
    public.write_bytes(
        subprocess.run(
            [*server_cli, "public", "images", "--config", str(server_config)],
            check=True,
            capture_output=True,
        ).stdout
    )
    _step("building an image with a secret and encrypting it (ocicrypt JWE, as skopeo does)")
    app = [
        Entry(name="app/", kind=tarfile.DIRTYPE, mode=0o755),
        Entry(name="app/secret.txt", data=b"a secret only an attested host can read\n"),
    ]
    spec = ImageSpec(
        layers=[tar_bytes(busybox_entries()), tar_bytes(app)], cmd=("/bin/cat", "/app/secret.txt")
    )
    build_image(workdir / "plain", "app", spec)
    layout = workdir / "encrypted"
    subprocess.run(
        [*cli, "image", "encrypt", f"{workdir / 'plain'}:app", f"{layout}:app",
         "--recipient", f"jwe:{public}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    subprocess.run([*cli, "image", "inspect", f"{layout}:app"], check=True)
    image = Layout.open(layout).resolve("app").digest
    _step("allowing it: a [[release]] rule on the server, the host's image policy")
    server.stop()
    config = load_server_config(server_config)
    write_server_config(
        server_config,
        state_dir=config.state_dir,
        port=config.port,
        ek_ca_bundle=config.ek_ca_bundle,
        releases=[(image, ["lab"], ["any"])],
    )
    server.start()
    host = load_config(config_path)
    host.image_policy.write_text(f'[[image]]\nmanifest = "{image}"\nname = "demo app"\n')
    _step("runc run through trusthook-runtime: tmpfs root, attest + key release, decrypt, run")
    bundle = workdir / "encrypted-bundle"
    (bundle / "rootfs").mkdir(parents=True)
    bundle_config = write_bundle_config(bundle, ["/bin/cat", "/app/secret.txt"])
    bundle_config["annotations"] = {
        "org.trusthook.image.layout": str(layout),
        "org.trusthook.image.ref": "app",
    }
    (bundle / "config.json").write_text(json.dumps(bundle_config))
    env = _shim_env(config_path)
    shim = Path(sys.executable).parent / "trusthook-runtime"
    code = subprocess.run(
        [str(shim), "run", "--bundle", str(bundle), "demo-encrypted"], env=env, check=False
    ).returncode
    if code != 0:
        return code
    return _policy(workdir, cli, config_path, server_config, image)


def _policy(
    workdir: Path, cli: list[str], config_path: Path, server_config: Path, image: str
) -> int:
    """A policy manifest: which workloads may run, from what; every launch appraised."""
    _step("a policy manifest (docs/policy.md): the encrypted app, and the busybox 'hello'")
    measured = subprocess.run(
        [*cli, "measure", str(workdir / "bundle" / "rootfs"), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    busybox = json.loads(measured)["rootfs_digest"]
    manifest = workdir / "policy.toml"
    manifest.write_text(
        'format = 1\n[defaults]\nunknown_launch = "audit"\nviolation = "untrust"\n'
        f'[[workload]]\nname = "demo/app"\nimages = ["{image}"]\nencryption = "required"\n'
        'groups = ["lab"]\n'
        f'[[workload]]\nname = "demo/hello"\nrootfs = ["{busybox}"]\ngroups = ["lab"]\n'
    )
    print(manifest.read_text(), end="")
    policy = [*cli, "server", "policy"]
    subprocess.run([*policy, "check", str(manifest)], check=True)
    subprocess.run([*policy, "apply", str(manifest), "--config", str(server_config)], check=True)
    _step("runc run of 'hello', annotated org.trusthook.workload=demo/hello; trusthook attest")
    bundle = workdir / "bundle"
    bundle_config = json.loads((bundle / "config.json").read_text())
    bundle_config["annotations"] = {"org.trusthook.workload": "demo/hello"}
    (bundle / "config.json").write_text(json.dumps(bundle_config))
    env = _shim_env(config_path)
    shim = Path(sys.executable).parent / "trusthook-runtime"
    subprocess.run([str(shim), "run", "--bundle", str(bundle), "demo-2"], env=env, check=True)
    code = subprocess.run([*cli, "attest"], check=False).returncode
    _step("trusthook server workloads show demo/hello: where it ran, compliant or not")
    subprocess.run(
        [*cli, "server", "workloads", "show", "demo/hello", "--config", str(server_config)],
        check=True,
    )
    return code
