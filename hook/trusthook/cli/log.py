"""``trusthook log show|verify``: the event log of this boot, from the agent or, with
``--direct`` or no agent running, from the log file and the TPM."""

from __future__ import annotations

import argparse
import json
import os

from trusthook.common.config import Config
from trusthook.common.eventlog import verify_against_pcr
from trusthook.common.messages import SnapshotResult
from trusthook.common.protocol import OP_SNAPSHOT, call
from trusthook.errors import AgentUnavailableError, EventLogError


def _snapshot(config: Config, direct: bool) -> tuple[SnapshotResult, str]:
    """Records and PCR value, and where they came from: the running agent (consistent under
    its lock) or, if it is not running or ``direct`` is set, the log file and the TPM."""
    if not direct:
        try:
            raw = call(str(config.socket), OP_SNAPSHOT, timeout=config.hook_timeout)
        except AgentUnavailableError:
            pass
        else:
            return SnapshotResult.from_json(raw), "agent"
    # the direct path only: tpm2-pytss is slow to import
    from trusthook.agent.logstore import LogStore, read_boot_id  # noqa: PLC0415
    from trusthook.agent.tpm import Tpm  # noqa: PLC0415

    store = LogStore(config.state_dir / "eventlog", read_boot_id())
    lock_fd = store.lock()  # refuses while an agent writes: its snapshot is the consistent one
    try:
        contents = store.read()
        if contents.torn_tail:
            raise EventLogError(
                f"record {len(contents.records)}: {store.path} ends in a torn record;"
                " start the agent to repair it"
            )
        with Tpm(config.tcti) as tpm:
            pcr_value = tpm.pcr_read(config.pcr)
        records = tuple(contents.records)
        return SnapshotResult(pcr=config.pcr, pcr_value=pcr_value, records=records), "tpm"
    finally:
        os.close(lock_fd)


def verify(args: argparse.Namespace, config: Config) -> int:
    snap, source = _snapshot(config, args.direct)
    verify_against_pcr(snap.records, snap.pcr, snap.pcr_value)
    print(
        f"OK: {len(snap.records)} records replay to PCR {snap.pcr} = {snap.pcr_value.hex()}"
        f" ({source})"
    )
    return 0


def show(args: argparse.Namespace, config: Config) -> int:
    records = _snapshot(config, args.direct)[0].records
    if args.json:
        for r in records:
            print(json.dumps(r.to_json(), indent=2))
        return 0
    if not records:
        print("no records in this boot's event log")
        return 0
    for r in records:
        e = r.event
        print(f"#{r.recnum} pcr={r.pcr} sha256={r.digest.hex()}")
        print(f"  container  {e.container_id}  ({e.stage}, {e.time})")
        print(f"  bundle     {e.bundle}")
        print(f"  image      {e.image_reference or '-'} {e.image_digest or ''}".rstrip())
        print(f"  rootfs     {e.rootfs_digest} ({e.rootfs_entries} entries)")
        print(f"  config     {e.config_digest}")
        print(f"  profile    {e.launch_profile_digest}")
        print(f"  boot       {e.boot_id}")
    return 0
