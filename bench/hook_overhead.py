"""Cost of the trusthook hook on a container start: ``runc run`` of a busybox bundle with and
without the hook, interleaved in one run on a real swtpm. Prints medians and the ratio.

Usage (root): .venv/bin/python bench/hook_overhead.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from trusthook._devenv.agentproc import AgentProcess, write_agent_config
from trusthook._devenv.bundle import make_bundle
from trusthook._devenv.swtpm import Swtpm

TARGET_RATIO = 1.15  # issue 13


def _time_run(bundle: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["runc", "run", "--bundle", str(bundle), f"bench-{uuid.uuid4().hex[:12]}"], check=True
    )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    hook = Path(sys.executable).parent / "trusthook-hook"
    with tempfile.TemporaryDirectory(prefix="trusthook-bench-") as tmp:
        work = Path(tmp)
        plain = make_bundle(work / "plain")
        hooked = work / "hooked"
        hooked.mkdir()
        config = json.loads((plain / "config.json").read_text())
        config["root"]["path"] = str(plain / "rootfs")
        with Swtpm(work / "tpm") as tpm:
            cfg_path = work / "trusthook.toml"
            cfg = write_agent_config(cfg_path, tcti=tpm.tcti, state_dir=work / "state", hook=hook)
            config["hooks"] = {
                "createRuntime": [
                    {"path": str(hook), "args": ["trusthook-hook", *cfg.hook_args], "timeout": 10}
                ]
            }
            (hooked / "config.json").write_text(json.dumps(config))
            with AgentProcess(cfg_path, cfg, work / "agent.log"):
                for _ in range(3):  # warm caches
                    _time_run(plain)
                    _time_run(hooked)
                base, with_hook = [], []
                for _ in range(args.runs):
                    base.append(_time_run(plain))
                    with_hook.append(_time_run(hooked))
    b, h = statistics.median(base), statistics.median(with_hook)
    ratio = h / b
    print(f"runs per variant: {args.runs} (interleaved), busybox bundle, swtpm")
    print(f"runc run             median {b * 1000:7.1f} ms")
    print(f"runc run + trusthook median {h * 1000:7.1f} ms  (hook adds {(h - b) * 1000:.1f} ms)")
    print(f"ratio {ratio:.2f} (target <= {TARGET_RATIO})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
