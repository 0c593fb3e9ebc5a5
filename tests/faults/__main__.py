"""``python -m tests.faults CAMPAIGN --rounds N --seed S``: run a fault campaign and print its
runs, faults injected and violations (exit status 1 if it found any). As root, from the
repository root, with the virtualenv's Python; see docs/robustness.md."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.faults import agent_kill, database, server_kill
from tests.faults.report import Report
from tests.faults.rig import remove_tree
from tests.support.postgres import Postgres
from trusthook._devenv.serverproc import swtpm_ek_bundle
from trusthook._devenv.swtpm import Swtpm

CAMPAIGNS = ("agent-kill", "server-kill", "postgres-restart", "sqlite-full", "all")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("campaign", choices=CAMPAIGNS)
    parser.add_argument("--rounds", type=int, default=20, help="rounds (default 20)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    parser.add_argument(
        "--starts", type=int, default=50, help="agent-kill: concurrent starts per round"
    )
    parser.add_argument(
        "--encrypted", type=int, default=10, help="agent-kill: of which from the encrypted image"
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql", "both"),
        default="both",
        help="server-kill: the server's database (default both)",
    )
    parser.add_argument("--work", type=Path, help="work directory (default: a new one in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser


@dataclass(frozen=True)
class Shared:
    """Made once for all the campaigns of a run: a manufactured TPM state, its EK CA."""

    tpm_template: Path
    ek_bundle: Path


def _server_kill(
    work: Path,
    args: argparse.Namespace,
    seed: int,
    shared: Shared,
    say: Callable[[str], None],
) -> Report:
    report = Report("server-kill", seed)
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    for backend in backends:
        if backend == "sqlite":
            part = server_kill.run_campaign(
                work / "server-kill-sqlite",
                rounds=args.rounds,
                seed=seed,
                progress=say,
                tpm_template=shared.tpm_template,
                ek_bundle=shared.ek_bundle,
            )
        else:
            pg = Postgres(Path(tempfile.mkdtemp(prefix="trusthook-faults-pg-")))
            pg.start()
            try:
                part = server_kill.run_campaign(
                    work / "server-kill-postgresql",
                    rounds=args.rounds,
                    seed=seed,
                    database=pg.url,
                    backend="postgresql",
                    progress=say,
                    tpm_template=shared.tpm_template,
                    ek_bundle=shared.ek_bundle,
                )
            finally:
                pg.cleanup()
        report.merge(part)
    return report


def run(args: argparse.Namespace, work: Path, seed: int) -> list[Report]:
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    template = work / "tpm-template"
    Swtpm(template).setup()
    shared = Shared(template, swtpm_ek_bundle(work / "ek-ca.pem"))
    wanted = CAMPAIGNS[:-1] if args.campaign == "all" else (args.campaign,)
    reports = []
    for name in wanted:
        began = time.monotonic()
        if name == "agent-kill":
            report = agent_kill.run_campaign(
                work / name,
                rounds=args.rounds,
                seed=seed,
                starts=args.starts,
                encrypted=args.encrypted,
                progress=say,
                tpm_template=shared.tpm_template,
                ek_bundle=shared.ek_bundle,
            )
        elif name == "server-kill":
            report = _server_kill(work, args, seed, shared, say)
        else:
            campaign = (
                database.postgres_restart_campaign
                if name == "postgres-restart"
                else database.sqlite_full_campaign
            )
            report = campaign(
                work / name,
                rounds=args.rounds,
                seed=seed,
                progress=say,
                tpm_template=shared.tpm_template,
                ek_bundle=shared.ek_bundle,
            )
        report.notes.append(f"took {time.monotonic() - began:.0f}s")
        reports.append(report)
        print(report.summary(), flush=True)
    return reports


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("tests.faults: run as root (runc, swtpm, mounts)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else int(time.time())
    work = args.work or Path(tempfile.mkdtemp(prefix="trusthook-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"campaign {args.campaign}, {args.rounds} rounds, seed {seed}, in {work}", flush=True)
    try:
        reports = run(args, work, seed)
    finally:
        if not args.keep and args.work is None:
            remove_tree(work)
    found = sum(len(r.violations) for r in reports)
    print(
        f"total: {sum(r.runs for r in reports)} runs, {sum(r.faults for r in reports)} faults"
        f" injected, {found} violations",
        flush=True,
    )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
