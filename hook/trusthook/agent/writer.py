"""The single writer: append a record, extend the PCR, keep the two consistent.

Order per launch: append the record and fsync, then extend. A crash in between leaves a last
record the PCR does not contain; ``recover`` finds it by comparing the PCR with the replay, cuts
it off and reports it. A PCR that matches neither is a divergence (``LogDivergedError``), and no
launch is recorded onto it: extending onto a log that does not replay would only hide the break.
The log and the PCR are still served as they are (``evidence``, ``snapshot``), so a verifier
sees the break at once; the host gets a consistent log again only by rebooting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from trusthook.agent.logstore import LogStore
from trusthook.agent.tpm import Quote, Tpm
from trusthook.common.eventlog import LaunchEvent, Record, extend, replay, verify_against_pcr
from trusthook.errors import EventLogError, LogDivergedError, TPMError

log = logging.getLogger(__name__)
REFUSED = (
    "no launch is recorded onto a log that does not replay to the PCR; reboot the host (a new"
    " boot starts a new log from a zero PCR)"
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Records and the PCR value read together under the writer lock."""

    records: list[Record]
    pcr_value: bytes


class MeasuredLog:
    """Serializes extend+append for one PCR and one log file."""

    def __init__(self, *, store: LogStore, tpm: Tpm, pcr: int) -> None:
        self._store = store
        self._tpm = tpm
        self._pcr = pcr
        self._lock = threading.Lock()
        self._count = 0
        self._tip = b""
        self._consistent = False
        self._restarts = tpm.restarts_seen  # the TPM restarts recovery has taken into account

    @property
    def pcr(self) -> int:
        return self._pcr

    def recover(self) -> list[str]:
        """Bring log and PCR into agreement after a crash, or raise if they cannot be:
        LogDivergedError if they disagree in a way no crash explains, EventLogError if the log
        cannot be read.

        Returns notes on what was repaired (for the agent to report).
        """
        with self._lock:
            return self._recover()

    def _unsure(self) -> bool:
        """Whether the file must be rechecked against the PCR before it is extended or served:
        a failed append or extend, or a TPM restart (which reset the PCR) since the last check."""
        return not self._consistent or self._tpm.restarts_seen != self._restarts

    def _recover(self) -> list[str]:
        notes = []
        contents = self._store.read()
        records = contents.records
        pcr_value = self._tpm.pcr_read(self._pcr)
        # After a TPM restart seen since the last check, a PCR that lacks the last record was
        # reset, not left behind by a crash: only the second is repaired below.
        restarted = self._tpm.restarts_seen != self._restarts
        if contents.torn_tail:
            # Only the record being appended when the agent stopped can be partial, and it is
            # extended only after its append completed: it was never in the PCR.
            self._store.truncate(contents.length)
            notes.append(
                f"record {len(records)} was cut off mid-write and never extended; removed it"
            )
        if (
            not restarted
            and records
            and replay(records) != pcr_value
            and replay(records[:-1]) == pcr_value
        ):
            last = records.pop()
            self._store.truncate(contents.starts[-1])
            notes.append(
                f"record {last.recnum} (container {last.event.container_id}) was appended but"
                f" never extended into PCR {self._pcr} (the agent stopped in between);"
                " removed it, that container did not start"
            )
        try:
            verify_against_pcr(records, self._pcr, pcr_value)
        except EventLogError as e:
            self._consistent = False
            raise LogDivergedError(f"{e}; {REFUSED}") from None
        self._count = len(records)
        self._tip = pcr_value
        self._consistent = True
        self._restarts = self._tpm.restarts_seen
        return notes

    def _settle(self) -> None:
        """Before the log is served to a verifier: recheck it first if it is unsure (and repair
        what a crash explains), so that what is served replays. A divergence is logged, not
        raised: the log and the PCR as they are are what a verifier must see."""
        if not self._unsure():
            return
        try:
            notes = self._recover()
        except LogDivergedError as e:
            log.error("event log diverges from PCR %d: %s", self._pcr, e)
            return
        for note in notes:
            log.warning("event log repaired: %s", note)

    def append(self, event: LaunchEvent) -> Record:
        """Append ``event`` as the next record and extend it into the PCR; returns the record."""
        with self._lock:
            if self._unsure():
                for note in self._recover():
                    log.warning("event log repaired: %s", note)
            record = Record.for_event(recnum=self._count, pcr=self._pcr, event=event)
            try:
                start = self._store.append(record)
            except EventLogError:
                self._consistent = False  # recheck the file against the PCR before going on
                raise
            try:
                self._tpm.pcr_extend(self._pcr, record.digest)
            except TPMError:
                self._undo_failed_extend(start, record)
                raise
            self._count += 1
            self._tip = extend(self._tip, record.digest)
            return record

    def _undo_failed_extend(self, start: int, record: Record) -> None:
        """After a failed extend, find out from the PCR whether it happened."""
        self._consistent = False
        try:
            value = self._tpm.pcr_read(self._pcr)
        except TPMError:
            log.error("cannot read PCR %d after a failed extend; will recheck", self._pcr)
            return
        if value == self._tip:
            self._store.truncate(start)
            self._consistent = True
        elif value == extend(self._tip, record.digest):
            self._count += 1
            self._tip = value
            self._consistent = True
        else:
            log.error("PCR %d diverged from the event log after a failed extend", self._pcr)

    def snapshot(self) -> Snapshot:
        """The log and the PCR read together, so concurrent launches cannot skew them."""
        with self._lock:
            self._settle()
            contents = self._store.read()
            if contents.torn_tail:
                raise EventLogError(f"event log {self._store.path} ends in a torn record")
            return Snapshot(contents.records, self._tpm.pcr_read(self._pcr))

    @contextmanager
    def exclusive_tpm(self) -> Iterator[Tpm]:
        """The TPM, with no launch extending meanwhile (for enrollment's TPM commands)."""
        with self._lock:
            yield self._tpm

    def evidence(self, pcrs: Sequence[int], nonce: bytes, after: int) -> tuple[Quote, list[Record]]:
        """A quote over ``pcrs`` with ``nonce`` and the records after record ``after``, taken
        together under the writer lock, so the records replay to the quoted PCR value (unless
        the log diverged: then they show the divergence)."""
        with self._lock:
            self._settle()
            contents = self._store.read()
            if contents.torn_tail:
                raise EventLogError(f"event log {self._store.path} ends in a torn record")
            quote = self._tpm.quote(pcrs, nonce)
            return quote, [r for r in contents.records if r.recnum > after]
