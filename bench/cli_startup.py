"""Start-up cost of the CLI's cheap commands against the bare interpreter: ``trusthook --help``,
``status`` and ``log show`` (answered by a real agent on swtpm), interleaved in one run with
``python -c pass`` and ``python -I -S -c pass``. Prints medians and ratios; goal ≤ 100 ms each.
trusthook's bytecode is compiled first, as an installed trusthook's is (the Debian package
ships it; pip writes it): a tree without it, such as an editable install run with
PYTHONDONTWRITEBYTECODE=1, compiles every module it imports at every start (~25 ms more).

Usage (root): .venv/bin/python -m bench.cli_startup [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trusthook as trusthook_package
from trusthook._devenv.agentproc import AgentProcess, write_agent_config
from trusthook._devenv.swtpm import Swtpm

GOAL_MS = 100.0


def _time(argv: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode not in (0, 1, 2) or b"Traceback" in result.stderr:  # status: 1 when
        # not enrolled (as here), 2 when not trusted
        raise SystemExit(f"{argv} failed: {result.stderr.decode().strip()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    python = sys.executable
    trusthook = str(Path(python).parent / "trusthook")
    package = Path(trusthook_package.__file__).parent
    subprocess.run([python, "-m", "compileall", "-q", str(package)], check=True)
    with tempfile.TemporaryDirectory(prefix="trusthook-bench-") as tmp:
        work = Path(tmp)
        with Swtpm(work / "tpm") as tpm:
            cfg_path = work / "trusthook.toml"
            cfg = write_agent_config(
                cfg_path,
                tcti=tpm.tcti,
                state_dir=work / "state",
                hook=Path(python).parent / "trusthook-hook",
            )
            own = [trusthook, "--trusthook-config", str(cfg_path)]
            variants = {
                "python -c pass": [python, "-c", "pass"],
                "python -I -S -c pass": [python, "-I", "-S", "-c", "pass"],
                "trusthook --help": [*own, "--help"],
                "trusthook status": [*own, "status"],
                "trusthook log show": [*own, "log", "show"],
            }
            with AgentProcess(cfg_path, cfg, work / "agent.log"):
                for argv in variants.values():  # warm the page cache
                    _time(argv)
                times: dict[str, list[float]] = {name: [] for name in variants}
                for _ in range(args.runs):
                    for name, argv in variants.items():
                        times[name].append(_time(argv))
    base = statistics.median(times["python -c pass"])
    print(f"runs per variant: {args.runs} (interleaved); agent on swtpm; bytecode compiled")
    for name, samples in times.items():
        ms = statistics.median(samples) * 1000
        goal = f"  goal <= {GOAL_MS:.0f} ms" if name.startswith("trusthook") else ""
        print(f"{name:22} median {ms:6.1f} ms  {ms / (base * 1000):5.2f}x bare python{goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
