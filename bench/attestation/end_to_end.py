"""End to end over HTTPS: several enrolled swtpm hosts (each its own swtpm and agent) attest
concurrently against one server process, on SQLite and then PostgreSQL. Prints attestations
per second, p50/p99 latency as the agent's client sees it, and the server process's CPU time
per attestation (the hosts share the machine's cores, so wall time alone would mislead).

Usage (root): .venv/bin/python bench/attestation/end_to_end.py [--hosts N] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from tests.support.postgres import Postgres

from trusthook._devenv.agentproc import AgentProcess, write_agent_config
from trusthook._devenv.serverproc import ServerProcess, swtpm_ek_bundle, write_server_config
from trusthook._devenv.swtpm import Swtpm, free_port_pair
from trusthook.common.protocol import OP_ATTEST, call

TARGET_CPU_MS = 2.0
BIN = Path(sys.executable).parent


def enroll(config_path: Path, server: ServerProcess) -> None:
    subprocess.run(
        [
            str(BIN / "trusthook"), "--trusthook-config", str(config_path), "enroll",
            "--server", server.url, "--server-ca", str(server.ca_cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


def load(sockets: list[Path], seconds: float) -> list[float]:
    """Each host attests back to back for ``seconds``; returns every latency."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def host(sock: Path) -> None:
        mine = []
        while time.monotonic() < deadline:
            start = time.perf_counter()
            verdict = call(str(sock), OP_ATTEST, timeout=60)
            mine.append(time.perf_counter() - start)
            if verdict.get("trusted") is not True:
                raise SystemExit(f"untrusted: {verdict.get('reasons')}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=host, args=(s,)) for s in sockets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def run_backend(
    name: str, database: str, work: Path, agents: list[tuple[Path, AgentProcess]], seconds: float
) -> float:
    bundle = swtpm_ek_bundle(work / f"ek-{name}.pem")
    config = work / f"server-{name}.toml"
    write_server_config(
        config,
        state_dir=work / f"server-{name}",
        port=free_port_pair(),
        ek_ca_bundle=bundle,
        database=database,
        auto_admit="lab",  # the benchmark's hosts are admitted as they enroll
    )
    server = ServerProcess(config, work / f"server-{name}.log")
    server.init()
    with server:
        for config_path, _ in agents:
            enroll(config_path, server)
        sockets = [agent.config.socket for _, agent in agents]
        load(sockets, 2)  # warm up: connections, caches, first epoch
        assert server.proc is not None
        proc = psutil.Process(server.proc.pid)
        before = proc.cpu_times()
        start = time.perf_counter()
        latencies = load(sockets, seconds)
        elapsed = time.perf_counter() - start
        after = proc.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    n = len(latencies)
    cpu_ms = 1000 * cpu / n
    q = statistics.quantiles(latencies, n=100)
    print(
        f"{name:10} {len(agents)} hosts  {n:5d} attestations in {elapsed:4.1f}s ="
        f" {n / elapsed:6.1f}/s  p50 {1000 * statistics.median(latencies):6.1f} ms"
        f"  p99 {1000 * q[98]:6.1f} ms  server CPU {cpu_ms:5.2f} ms/attestation"
        f" (target <= {TARGET_CPU_MS})"
    )
    return cpu_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    results = []
    with tempfile.TemporaryDirectory(prefix="trusthook-bench-") as tmp:
        work = Path(tmp)
        tpms = [Swtpm(work / f"tpm{i}") for i in range(args.hosts)]  # distinct TPMs: distinct hosts
        agents = []
        pg = Postgres(Path(tempfile.mkdtemp(prefix="trusthook-pg-")))  # postgres must reach it
        try:
            for i, tpm in enumerate(tpms):
                tpm.start()
                config_path = work / f"host{i}.toml"
                config = write_agent_config(
                    config_path,
                    tcti=tpm.tcti,
                    state_dir=work / f"host{i}",
                    hook=BIN / "trusthook-hook",
                    attest_interval=3600,
                )
                agent = AgentProcess(config_path, config, work / f"agent{i}.log").start()
                agents.append((config_path, agent))
            results.append(run_backend("sqlite", "", work, agents, args.seconds))
            pg.start()
            for _, agent in agents:  # each host enrolls afresh with the second server
                (agent.config.state_dir / "attest" / "enrollment.json").unlink()
            results.append(run_backend("postgresql", pg.url, work, agents, args.seconds))
        finally:
            for _, agent in agents:
                agent.stop()
            for tpm in tpms:
                tpm.stop()
            pg.cleanup()
    print("anchors: Keylime verifier ~2,500 quotes/s (2016, bare metal, mocked agents);"
          " a Trustee fork 500-900 TPM verifications/s on 4 cores")  # fmt: skip
    return 0 if all(r <= TARGET_CPU_MS for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
