"""Cost of the trusthook hook on a container start: ``runc run`` with and without the hook,
interleaved in one run on a real swtpm, on a busybox bundle and (``--image``) on one whose
rootfs also holds issue 13's ~350 MB / 14k-file image tree (bench/tree_digest.py builds it
under /var/lib/trusthook-bench; hard-linked in, so its inodes, and the agent's digest cache,
carry over). Second starts (the agent's digest cache warm) interleaved; first starts timed
after restarting the agent each time. Prints medians, ratios, and the image's added cost
against busybox's.

Usage (root): .venv/bin/python -m bench.hook_overhead [--runs N] [--image] [--first N]
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

from bench.timing import settle
from bench.tree_digest import build_image
from trusthook._devenv.agentproc import AgentProcess, write_agent_config
from trusthook._devenv.bundle import make_bundle
from trusthook._devenv.swtpm import Swtpm

TARGET_RATIO = 1.15  # issue 13
IMAGE_TREE = Path("/var/lib/trusthook-bench/image")


def _time_run(bundle: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["runc", "run", "--bundle", str(bundle), f"bench-{uuid.uuid4().hex[:12]}"], check=True
    )
    return time.perf_counter() - start


def _bundles(work: Path, hook_entry: dict[str, object], image: bool) -> dict[str, Path]:
    """name -> bundle: busybox (and the image) each plain and with the hook."""
    bundles = {}
    roots = {"busybox": make_bundle(work / "busybox")}
    if image:
        tree = IMAGE_TREE
        build_image(tree)  # once: kept under /var/lib/trusthook-bench
        bundle = make_bundle(work / "image")
        subprocess.run(["cp", "-al", str(tree), str(bundle / "rootfs" / "data")], check=True)
        roots["image"] = bundle
    for name, plain in roots.items():
        config = json.loads((plain / "config.json").read_text())
        config["root"]["path"] = str(plain / "rootfs")
        config["hooks"] = {"createRuntime": [hook_entry]}
        hooked = work / f"{name}-hooked"
        hooked.mkdir()
        (hooked / "config.json").write_text(json.dumps(config))
        bundles[name], bundles[f"{name} + hook"] = plain, hooked
    for plain in roots.values():
        settle(plain / "rootfs")  # old enough for the digest cache, as an image is
    return bundles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--image", action="store_true", help="also the 350 MB / 14k-file image")
    parser.add_argument("--first", type=int, default=5, help="first starts (agent restarted)")
    args = parser.parse_args()
    hook = Path(sys.executable).parent / "trusthook-hook"
    with tempfile.TemporaryDirectory(prefix="trusthook-bench-") as tmp:
        work = Path(tmp)
        with Swtpm(work / "tpm") as tpm:
            cfg_path = work / "trusthook.toml"
            cfg = write_agent_config(cfg_path, tcti=tpm.tcti, state_dir=work / "state", hook=hook)
            entry = {"path": str(hook), "args": ["trusthook-hook", *cfg.hook_args], "timeout": 60}
            bundles = _bundles(work, entry, args.image)
            agent = AgentProcess(cfg_path, cfg, work / "agent.log")
            first: dict[str, list[float]] = {n: [] for n in bundles if n.endswith("+ hook")}
            if args.image:
                for _ in range(args.first):
                    for name, values in first.items():
                        with agent:  # a fresh agent: an empty digest cache
                            values.append(_time_run(bundles[name]))
            times: dict[str, list[float]] = {name: [] for name in bundles}
            with agent:
                for _ in range(3):  # warm the page cache and the digest cache
                    for bundle in bundles.values():
                        _time_run(bundle)
                for _ in range(args.runs):
                    for name, bundle in bundles.items():
                        times[name].append(_time_run(bundle))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"runs per variant: {args.runs} (interleaved), swtpm, native hasher with its cache")
    for name, value in medians.items():
        print(f"runc run  {name:16} median {value * 1000:7.1f} ms")
    added = {}
    for name in ("busybox", "image"):
        if name in medians:
            added[name] = medians[f"{name} + hook"] - medians[name]
            ratio = medians[f"{name} + hook"] / medians[name]
            print(
                f"{name}: the hook adds {added[name] * 1000:.1f} ms, ratio {ratio:.2f}"
                f" (target <= {TARGET_RATIO})"
            )
    if "image" in added:
        print(
            f"image second start: added cost {added['image'] / added['busybox']:.1f}x busybox's"
            " (target <= 2x)"
        )
        for name, values in first.items():
            extra = statistics.median(values) - medians[name.removesuffix(" + hook")]
            print(
                f"first start ({len(values)} agent restarts) {name}:"
                f" the hook adds {extra * 1000:.1f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
