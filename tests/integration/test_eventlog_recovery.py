"""Crash consistency of extend+append and detection of a log that does not replay.

A crash between append and extend cannot be timed reliably from outside, so these tests write
the exact on-disk state such a crash leaves (a complete record, or half of one, that was never
extended) with the agent stopped, then start the real agent against the real swtpm.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from typing import Any

import pytest
from tpm2_pytss import ESAPI, ESYS_TR

from trusthook.agent.logstore import LogStore, read_boot_id
from trusthook.agent.tpm import Tpm
from trusthook.common.eventlog import LaunchEvent, Record, replay

from .conftest import Host, runc

pytestmark = pytest.mark.integration


def _event(cid: str) -> LaunchEvent:
    return LaunchEvent(
        container_id=cid,
        bundle="/b",
        image_reference=None,
        image_digest=None,
        rootfs_digest="sha256:" + "00" * 32,
        rootfs_entries=1,
        config_digest="sha256:" + "11" * 32,
        launch_profile_digest="sha256:" + "22" * 32,
        stage="createRuntime",
        time="2026-11-28T00:00:00.000000Z",
        boot_id=read_boot_id(),
    )


def _store(host: Host) -> LogStore:
    return LogStore(host.config.state_dir / "eventlog", read_boot_id())


def _launch(host: Host, bundle_factory: Any, n: int) -> None:
    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    for i in range(n):
        assert runc("run", "--bundle", str(bundle), f"rec-{id(host)}-{i}").returncode == 0


def test_record_appended_but_never_extended_is_removed_and_reported(
    host: Host, bundle_factory: Any
) -> None:
    _launch(host, bundle_factory, 2)
    host.agent.stop()
    _store(host).append(Record.for_event(recnum=2, pcr=23, event=_event("crashed")))
    host.agent.start()
    assert "record 2 (container crashed) was appended but never extended" in host.agent.output()
    records, pcr_value = host.snapshot()
    assert len(records) == 2
    assert pcr_value == replay(records)
    _launch(host, bundle_factory, 1)
    assert host.cli("log", "verify").returncode == 0


def test_torn_last_line_is_removed_and_reported(host: Host, bundle_factory: Any) -> None:
    _launch(host, bundle_factory, 1)
    host.agent.stop()
    line = Record.for_event(recnum=1, pcr=23, event=_event("torn")).to_line()
    with open(_store(host).path, "ab") as f:
        f.write(line[: len(line) // 2])
    assert "ends in a torn record" in host.cli("log", "verify").stderr
    host.agent.start()
    assert "record 1 was cut off mid-write and never extended" in host.agent.output()
    assert len(host.snapshot()[0]) == 1


def test_pcr_extended_outside_the_log_refuses_launches_and_fails_verify(
    host: Host, bundle_factory: Any
) -> None:
    """The agent starts on a diverged log (so that attestation reports it) but records no
    launch onto it (docs/eventlog.md §4)."""
    _launch(host, bundle_factory, 1)
    host.agent.stop()
    with Tpm(host.tpm.tcti) as tpm:
        tpm.pcr_extend(23, bytes(range(32)))
    verify = host.cli("log", "verify")
    assert verify.returncode == 1
    assert "record 0: log diverges from PCR 23" in verify.stderr
    host.agent.start()
    assert "event log diverges from PCR 23" in host.agent.output()
    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    refused = runc("run", "--bundle", str(bundle), f"diverged-{id(host)}")
    assert refused.returncode != 0
    assert "log diverges from PCR 23" in refused.stderr
    assert len(host.snapshot()[0]) == 1
    verify = host.cli("log", "verify")
    assert verify.returncode == 1
    assert "record 0: log diverges from PCR 23" in verify.stderr


def test_pcr_reset_is_detected(host: Host, bundle_factory: Any) -> None:
    _launch(host, bundle_factory, 2)
    host.agent.stop()
    ectx = ESAPI(host.tpm.tcti)
    ectx.pcr_reset(ESYS_TR.PCR23)  # what any local process at locality 0 can do to PCR 23
    ectx.close()
    verify = host.cli("log", "verify")
    assert verify.returncode == 1
    assert "record 0: log diverges" in verify.stderr
    assert "the PCR was reset or the TPM restarted" in verify.stderr


def test_altered_record_is_named(host: Host, bundle_factory: Any) -> None:
    _launch(host, bundle_factory, 3)
    host.agent.stop()
    path = _store(host).path
    lines = path.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[1])
    record["content"]["container_id"] = "someone-else"
    lines[1] = json.dumps(record).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    verify = host.cli("log", "verify")
    assert verify.returncode == 1
    assert verify.stderr.startswith("trusthook: record 1: digest")
    assert "does not match its content" in verify.stderr


def test_agent_stops_cleanly_on_sigterm_and_keeps_the_log(host: Host, bundle_factory: Any) -> None:
    _launch(host, bundle_factory, 1)
    assert host.agent.stop(signal.SIGTERM) == 0
    assert not host.config.socket.exists()
    host.agent.start()
    assert len(host.snapshot()[0]) == 1


def test_unreachable_tpm_is_one_clear_line(host: Host) -> None:
    host.agent.stop()
    host.tpm.stop()
    verify = host.cli("log", "verify", "--direct")
    assert verify.returncode == 1
    assert verify.stderr.startswith(f"trusthook: cannot open TPM via TCTI '{host.tpm.tcti}'")
    assert verify.stderr.count("\n") == 1
    with pytest.raises(Exception, match="trusthook agent exited with 1"):
        host.agent.start()
    assert "cannot open TPM via TCTI" in host.agent.output()


def test_disk_full_refuses_the_launch_and_leaves_no_partial_record(
    host: Host, bundle_factory: Any
) -> None:
    """A real ENOSPC: the event log directory is a tiny tmpfs filled to the brim."""
    _launch(host, bundle_factory, 1)
    host.agent.stop()
    logdir = _store(host).directory
    saved = _store(host).path.read_bytes()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs", str(logdir)], check=True
    )
    try:
        _store(host).path.write_bytes(saved)
        filler = logdir / "filler"
        with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)
        host.agent.start()
        bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
        for i in range(10):  # the log's last page has room for a few records; then ENOSPC
            before = _store(host).path.read_bytes()
            result = runc("run", "--bundle", str(bundle), f"enospc-{i}")
            if result.returncode != 0:
                break
        else:
            pytest.fail("ten launches fitted into a full 16 KiB log directory")
        assert "cannot append to event log" in result.stderr
        assert "No space left on device" in result.stderr
        assert _store(host).path.read_bytes() == before  # nothing half-written
        filler.unlink()
        assert runc("run", "--bundle", str(bundle), "after-enospc").returncode == 0
        records, pcr_value = host.snapshot()
        assert records[-1].event.container_id == "after-enospc"
        assert f"enospc-{i}" not in [r.event.container_id for r in records]
        assert pcr_value == replay(records)
    finally:
        host.agent.stop()
        subprocess.run(["umount", str(logdir)], check=True)
