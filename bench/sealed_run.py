"""``docker run`` of a sealed busybox image against a plain ``docker run`` of the same busybox,
side by side in one run (interleaved), on one dockerd of this script's own.

The sealed run is the whole trusthook path: trusthook-runtime has the agent mount a tmpfs
root, the hook asks the agent (swtpm), which records the launch, attests to a local server
(SQLite, mutual TLS), gets the layer key sealed to its TPM, decrypts and unpacks busybox into
the tmpfs, measures it and records it; then the container runs ``/bin/true``. The plain run
uses Docker's default runtime (runc) and the same busybox files.

Usage (root): .venv/bin/python bench/sealed_run.py [--runs N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.dockerd import dockerd

from trusthook._devenv.agentproc import AgentProcess, write_agent_config
from trusthook._devenv.ociimage import ImageSpec, build_image, busybox_entries, tar_bytes
from trusthook._devenv.serverproc import ServerProcess, swtpm_ek_bundle, write_server_config
from trusthook._devenv.swtpm import Swtpm, free_port_pair
from trusthook.image.layout import Layout

BIN = Path(sys.executable).parent


def _cli(*args: str) -> bytes:
    result = subprocess.run([str(BIN / "trusthook"), *args], capture_output=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"trusthook {' '.join(args)}: {result.stderr.decode().strip()}")
    return result.stdout


def _time(argv: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}: {result.stderr.decode().strip()}")
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--workdir", default="/var/lib/trusthook-bench")
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sealed-", dir=args.workdir))
    try:
        return _bench(work, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench(work: Path, runs: int) -> int:
    server_config = work / "server.toml"
    port, ek_ca = free_port_pair(), swtpm_ek_bundle(work / "ek-ca.pem")

    def write_server(releases: list[tuple[str, list[str], list[str]]]) -> None:
        write_server_config(
            server_config,
            state_dir=work / "server",
            port=port,
            ek_ca_bundle=ek_ca,
            releases=releases,
            auto_admit="lab",  # the benchmark's host is admitted as it enrolls
        )

    write_server([])
    server = ServerProcess(server_config, work / "server.log")
    server.init()
    _cli("server", "keys", "create", "images", "--config", str(server_config))
    public = work / "images.pub.pem"
    public.write_bytes(_cli("server", "keys", "public", "images", "--config", str(server_config)))
    busybox = tar_bytes(busybox_entries())
    build_image(work / "plain", "busybox", ImageSpec(layers=[busybox], cmd=("/bin/true",)))
    _cli("image", "encrypt", f"{work / 'plain'}:busybox",
         f"{work / 'encrypted'}:busybox", "--recipient", f"jwe:{public}")  # fmt: skip
    image = Layout.open(work / "encrypted").resolve("busybox").digest
    write_server([(image, ["lab"], ["any"])])
    _cli("image", "seal", f"{work / 'encrypted'}:busybox",
         str(work / "sealed.tar"), "--tag", "busybox:sealed")  # fmt: skip
    (work / "busybox.tar").write_bytes(busybox)
    with Swtpm(work / "tpm") as tpm, server:
        config_path = work / "trusthook.toml"
        config = write_agent_config(
            config_path, tcti=tpm.tcti, state_dir=work / "state", hook=BIN / "trusthook-hook"
        )
        with AgentProcess(config_path, config, work / "agent.log"):
            host = ("--trusthook-config", str(config_path))
            _cli(*host, "enroll", "--server", server.url, "--server-ca", str(server.ca_cert))
            config.image_policy.write_text(f'[[image]]\nmanifest = "{image}"\n')
            with dockerd(config_path, work / "dockerd.log") as docker:
                subprocess.run([*docker, "load", "-i", str(work / "sealed.tar")], check=True,
                               capture_output=True)  # fmt: skip
                subprocess.run([*docker, "import", str(work / "busybox.tar"), "busybox:plain"],
                               check=True, capture_output=True)  # fmt: skip
                run = [*docker, "run", "--rm", "--network", "none"]
                plain_cmd = [*run, "busybox:plain", "/bin/true"]
                measured_cmd = [*run, "--runtime", "trusthook", "busybox:plain", "/bin/true"]
                sealed_cmd = [*run, "--runtime", "trusthook", "busybox:sealed"]
                variants = {"plain": plain_cmd, "measured": measured_cmd, "sealed": sealed_cmd}
                times: dict[str, list[float]] = {name: [] for name in variants}
                for cmd in variants.values():
                    _time(cmd)  # warm up
                for _ in range(runs):
                    for name, cmd in variants.items():
                        times[name].append(_time(cmd))
    m = {name: statistics.median(values) for name, values in times.items()}
    print(f"runs per variant: {runs} (interleaved), busybox ({len(busybox) // 1024} KiB tar)")
    print(f"docker run busybox (runc)                      median {m['plain']:7.1f} ms")
    print(
        f"docker run --runtime trusthook busybox (measured) median {m['measured']:7.1f} ms"
        f"  (adds {m['measured'] - m['plain']:.1f} ms)"
    )
    print(
        f"docker run --runtime trusthook sealed busybox     median {m['sealed']:7.1f} ms"
        f"  (adds {m['sealed'] - m['plain']:.1f} ms)"
    )
    print(f"ratio measured/plain {m['measured'] / m['plain']:.2f} (target <= 1.10)")
    print(f"ratio sealed/plain {m['sealed'] / m['plain']:.2f} (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
