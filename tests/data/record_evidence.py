"""Record the attestation evidence in ``tests/data/evidence/`` from a real swtpm.

Usage (needs swtpm and swtpm_setup; the unit tests that read the files need neither)::

    .venv/bin/python -m tests.data.record_evidence tests/data/evidence

The agent's own parts do the work: ``Swtpm`` manufactures and runs the TPM on loopback, ``Tpm``
quotes with the AK, ``MeasuredLog`` over a ``LogStore`` appends and extends launch records and
answers ``evidence`` as the agent does for the server. At every power-on, "firmware" extends
fixed digests into PCRs 0-7 (the same each boot: the host group's golden values). Four TPM
epochs are recorded:

1. ``boot``: a quote of an empty log; 3 launches, a quote; 2 more, a quote; a quote over PCRs
   0-7 only (a host hiding PCR 23); then root resets PCR 23 and writes a 6-record history of
   its own (locally consistent), and a quote of that.
2. ``reboot``: orderly TPM2_Shutdown(CLEAR) and power-on (resetCount + 1); 2 launches, a quote.
3. ``restart``: TPM2_Shutdown(STATE) and Startup(CLEAR) (a TPM Restart: restartCount + 1,
   resetCount kept); 1 launch, a quote.
4. ``crash``: power lost with no TPM2_Shutdown (resetCount + 1, ``clockInfo.safe`` 0); 1 launch,
   a quote.

Nonces are random and the swtpm's keys are new each run, so every run gives other bytes; the
launch records' contents are fixed.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from tpm2_pytss import ESAPI, ESYS_TR, TPM2_SU

from tests.data.recorded import (
    CONTAINER_PCR,
    PCRS,
    Epoch,
    RecordedQuote,
    Recording,
    dump,
    firmware_digests,
)
from trusthook._devenv.child import stop
from trusthook._devenv.swtpm import Swtpm
from trusthook.agent.logstore import LogStore
from trusthook.agent.tpm import Tpm
from trusthook.agent.writer import MeasuredLog
from trusthook.attest.tpmwire import parse_quote_info
from trusthook.common.eventlog import LaunchEvent

BOOT_IDS = {
    "boot": "6f1c2a4e-0001-4d2b-9a51-7e3c8b1d0001",
    "reboot": "6f1c2a4e-0002-4d2b-9a51-7e3c8b1d0002",
    "restart": "6f1c2a4e-0003-4d2b-9a51-7e3c8b1d0003",
    "crash": "6f1c2a4e-0004-4d2b-9a51-7e3c8b1d0004",
}


class PowerCycledSwtpm(Swtpm):
    """A swtpm that can also lose power after a given TPM2_Shutdown, or with none (a crash)."""

    def power_cycle(self, shutdown: TPM2_SU | None) -> None:
        if shutdown is not None:
            with ESAPI(self.tcti) as ectx:
                ectx.shutdown(shutdown)
        stop(self._proc, signal.SIGTERM if shutdown is not None else signal.SIGKILL, timeout=10)
        self._proc = None
        self.start()


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _event(boot_id: str, name: str) -> LaunchEvent:
    return LaunchEvent(
        container_id=name,
        bundle=f"/run/containers/{name}",
        image_reference="docker.io/library/busybox:1.36",
        image_digest=_digest("busybox:1.36 manifest"),
        rootfs_digest=_digest(f"rootfs of {name}"),
        rootfs_entries=279,
        config_digest=_digest(f"config.json of {name}"),
        launch_profile_digest=_digest(f"launch profile of {name}"),
        stage="createRuntime",
        time="2026-11-28T12:00:00.000000Z",
        boot_id=boot_id,
    )


def _measured_boot(tpm: Tpm) -> None:
    for index in range(8):
        for digest in firmware_digests(index):
            tpm.pcr_extend(index, digest)


class _Host:
    """One boot's measured log on the TPM, and the quotes taken of it."""

    def __init__(self, tpm: Tpm, log_dir: Path, boot_id: str) -> None:
        self.boot_id = boot_id
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # as LogStore.lock does
        self.log = MeasuredLog(store=LogStore(log_dir, boot_id), tpm=tpm, pcr=CONTAINER_PCR)
        notes = self.log.recover()
        if notes:
            raise SystemExit(f"a fresh log needed repairs: {notes}")
        self.quotes: list[RecordedQuote] = []
        self.launched = 0

    def launch(self, prefix: str, n: int) -> None:
        for _ in range(n):
            self.log.append(_event(self.boot_id, f"{prefix}-{self.launched}"))
            self.launched += 1

    def quote(self, name: str, after: int, pcrs: Sequence[int] = PCRS) -> RecordedQuote:
        nonce = secrets.token_bytes(32)
        quote, records = self.log.evidence(pcrs, nonce, after)
        recorded = RecordedQuote(
            name=name,
            boot_id=self.boot_id,
            nonce=nonce,
            pcrs=tuple(pcrs),
            after=after,
            attest=quote.attest,
            signature=quote.signature,
            pcr_values=quote.pcr_values,
            events=tuple(records),
        )
        self.quotes.append(recorded)
        return recorded


def _clock(quote: RecordedQuote) -> tuple[int, int, int]:
    info = parse_quote_info(quote.attest)
    return info.reset_count, info.restart_count, info.safe


def record(work: Path) -> Recording:
    """Run a swtpm in ``work`` through the four epochs; the evidence it gave."""
    swtpm = PowerCycledSwtpm(work / "tpm")
    epochs: list[Epoch] = []
    swtpm.start()
    try:
        with Tpm(swtpm.tcti) as tpm:
            _measured_boot(tpm)
            ak_public = tpm.ak_public()
            host = _Host(tpm, work / "eventlog", BOOT_IDS["boot"])
            host.quote("empty", after=-1)
            host.launch("boot", 3)
            host.quote("three", after=-1)
            host.launch("boot", 2)
            host.quote("five", after=2)
            host.quote("narrow", after=4, pcrs=PCRS[:-1])
        with ESAPI(swtpm.tcti) as ectx:  # root, with the agent stopped
            ectx.pcr_reset(ESYS_TR.PCR23)
        with Tpm(swtpm.tcti) as tpm:
            forger = _Host(tpm, work / "eventlog-rewritten", BOOT_IDS["boot"])
            forger.launch("rewritten", 6)
            host.quotes.append(forger.quote("rewritten", after=-1))
        epochs.append(
            Epoch(
                name="boot",
                how="swtpm_setup, then power-on",
                boot_id=host.boot_id,
                quotes=tuple(host.quotes),
            )
        )
        cycles: list[tuple[str, str, Callable[[], object], int]] = [
            ("reboot", "TPM2_Shutdown(CLEAR), power-off, power-on", swtpm.restart, 2),
            (
                "restart",
                "TPM2_Shutdown(STATE), power-off, Startup(CLEAR)",
                lambda: swtpm.power_cycle(TPM2_SU.STATE),
                1,
            ),
            (
                "crash",
                "power lost without TPM2_Shutdown, power-on",
                lambda: swtpm.power_cycle(None),
                1,
            ),
        ]
        for name, how, power_cycle, launches in cycles:
            power_cycle()
            with Tpm(swtpm.tcti) as tpm:
                _measured_boot(tpm)
                if tpm.ak_public() != ak_public:
                    raise SystemExit("the AK changed across a power cycle")
                host = _Host(tpm, work / "eventlog", BOOT_IDS[name])
                host.launch(name, launches)
                host.quote("launched", after=-1)
            epochs.append(
                Epoch(name=name, how=how, boot_id=host.boot_id, quotes=tuple(host.quotes))
            )
    finally:
        swtpm.stop()
    _check_epochs(epochs)
    return Recording(ak_public=ak_public, epochs=tuple(epochs))


def _check_epochs(epochs: Sequence[Epoch]) -> None:
    """Refuse to write a recording whose epochs are not the ones the tests expect."""
    boot, reboot, restart, crash = (_clock(e.quotes[-1]) for e in epochs)
    expected = {
        "reboot": (boot[0] + 1, boot[1], 1),
        "restart": (reboot[0], reboot[1] + 1, 1),
        "crash": (restart[0] + 1, 0, 0),
    }
    got = {"reboot": reboot, "restart": restart, "crash": crash}
    if boot[2] != 1 or got != expected:
        raise SystemExit(
            f"swtpm epochs (resetCount, restartCount, safe): boot {boot}, got {got},"
            f" expected {expected}"
        )


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    with tempfile.TemporaryDirectory(prefix="trusthook-record-") as tmp:
        recording = record(Path(tmp))
    for path in dump(recording, Path(argv[0])):
        print(f"{path}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
