"""``trusthook log show|verify``: the event log of this boot, from the agent or, with
``--direct`` or no agent running, from the log file and the TPM."""

from __future__ import annotations

import argparse
import json
import os

from trusthook.agent.logstore import LogStore, read_boot_id
from trusthook.common.config import Config
from trusthook.common.eventlog import Record, parse_record, verify_against_pcr
from trusthook.common.protocol import OP_SNAPSHOT, call
from trusthook.errors import AgentUnavailableError, EventLogError


def _snapshot(config: Config, direct: bool) -> tuple[list[Record], int, bytes, str]:
    """Records and PCR value: from the running agent (consistent under its lock) or, if it is
    not running or ``direct`` is set, from the log file and the TPM."""
    if not direct:
        try:
            result = call(str(config.socket), OP_SNAPSHOT, timeout=config.hook_timeout)
        except AgentUnavailableError:
            pass
        else:
            try:
                records = [
                    parse_record(r, f"agent record {i}") for i, r in enumerate(result["records"])
                ]
                return records, int(result["pcr"]), bytes.fromhex(result["pcr_value"]), "agent"
            except (KeyError, TypeError, ValueError) as e:
                raise EventLogError(f"the agent's snapshot is malformed ({e!r})") from None
    from trusthook.agent.tpm import Tpm  # noqa: PLC0415 - tpm2-pytss is slow to import; only here

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
            return contents.records, config.pcr, tpm.pcr_read(config.pcr), "tpm"
    finally:
        os.close(lock_fd)


def verify(args: argparse.Namespace, config: Config) -> int:
    records, pcr, pcr_value, source = _snapshot(config, args.direct)
    verify_against_pcr(records, pcr, pcr_value)
    print(f"OK: {len(records)} records replay to PCR {pcr} = {pcr_value.hex()} ({source})")
    return 0


def show(args: argparse.Namespace, config: Config) -> int:
    records, _, _, _ = _snapshot(config, args.direct)
    if args.json:
        for r in records:
            print(json.dumps(r.to_json(), indent=2))
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
