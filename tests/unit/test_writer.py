"""MeasuredLog (agent/writer.py) on a real LogStore file and a software TPM: append extends and
records; recover repairs exactly the two states a crash can leave (a torn last line, a last
record appended but never extended) and names them; a log that does not replay to the PCR is
refused and nothing more is written or extended, while evidence and snapshot still serve it as
it is; evidence and snapshot are consistent, also after a failed extend or a TPM restart."""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tpm2_pytss.constants import TPM2_GENERATED, TPM2_ST
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_DIGEST,
    TPM2B_NAME,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CLOCK_INFO,
    TPMS_QUOTE_INFO,
    TPMU_ATTEST,
)

from trusthook.agent.logstore import LogStore
from trusthook.agent.tpm import Quote, Tpm
from trusthook.agent.writer import MeasuredLog
from trusthook.attest.appraise import Evidence, Expectations, HostState, appraise
from trusthook.attest.identity import AttestationKey
from trusthook.attest.tpmwire import TPM_ALG_RSASSA, TPM_ALG_SHA256
from trusthook.common.eventlog import LaunchEvent, Record
from trusthook.errors import EventLogError, LogDivergedError, TPMError

PCR = 23
BOOT_ID = "0b7d6a52-2d0c-4a8e-8f0e-5f6c1d2e3a4b"


class SoftTpm(Tpm):
    """A software TPM for what MeasuredLog uses: a SHA-256 PCR bank (TPM2_PCR_Extend,
    TPM2_PCR_Read, TPM2_PCR_Reset) and TPM2_Quote over it, signed RSASSA-SHA256 by a software
    key. Faults can be injected: an extend the TPM refuses, or one it performs but whose answer
    is lost; PCR reads that fail."""

    def __init__(self, ak: rsa.RSAPrivateKey) -> None:  # no ESAPI context: nothing to open
        self.ak = ak
        self.values = [bytes(32)] * 24
        self.clock = 0
        self.quotes = 0
        self.extend_fault: Literal["refused", "answer_lost"] | None = None
        self.failing_reads = 0
        self.restarts_seen = 0

    def restart(self) -> None:
        """A TPM restart, as the adapter sees it at its next use of a key: PCRs reset, and its
        recovery counted."""
        self.values = [bytes(32)] * 24
        self.restarts_seen += 1

    def close(self) -> None:
        pass

    def pcr_read(self, index: int) -> bytes:
        if self.failing_reads:
            self.failing_reads -= 1
            raise TPMError(f"TPM refused to read PCRs [{index}]: no answer")
        return self.values[index]

    def pcr_extend(self, index: int, digest: bytes) -> None:
        if len(digest) != 32:
            raise TPMError(f"extend digest must be 32 bytes, got {len(digest)}")
        fault, self.extend_fault = self.extend_fault, None
        if fault == "refused":
            raise TPMError(f"TPM refused to extend PCR {index}: TPM_RC_FAILURE")
        self.values[index] = hashlib.sha256(self.values[index] + digest).digest()
        if fault == "answer_lost":
            raise TPMError(f"TPM refused to extend PCR {index}: connection reset")

    def pcr_reset(self, index: int) -> None:
        self.values[index] = bytes(32)

    def ak_key(self) -> AttestationKey:
        return AttestationKey(public=b"", name=b"", rsa_key=self.ak.public_key())

    def quote(self, pcrs: Sequence[int], nonce: bytes) -> Quote:
        wanted = sorted(pcrs)
        values = {i: self.values[i] for i in wanted}
        self.clock += 1
        self.quotes += 1
        attest = TPMS_ATTEST(
            magic=TPM2_GENERATED.VALUE,
            type=TPM2_ST.ATTEST_QUOTE,
            qualifiedSigner=TPM2B_NAME(b"\x00\x0b" + bytes(32)),
            extraData=TPM2B_DATA(nonce),
            clockInfo=TPMS_CLOCK_INFO(clock=self.clock, resetCount=1, restartCount=0, safe=1),
            firmwareVersion=0,
            attested=TPMU_ATTEST(
                quote=TPMS_QUOTE_INFO(
                    pcrSelect=TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, wanted))),
                    pcrDigest=TPM2B_DIGEST(hashlib.sha256(b"".join(values.values())).digest()),
                )
            ),
        )
        signed = bytes(attest.marshal())
        sig = self.ak.sign(signed, padding.PKCS1v15(), hashes.SHA256())
        signature = struct.pack(">HHH", TPM_ALG_RSASSA, TPM_ALG_SHA256, len(sig)) + sig
        return Quote(attest=signed, signature=signature, pcr_values=values)


def pcr_after(records: Sequence[Record]) -> bytes:
    value = bytes(32)
    for record in records:
        value = hashlib.sha256(value + record.digest).digest()
    return value


def event(name: str) -> LaunchEvent:
    return LaunchEvent(
        container_id=name,
        bundle=f"/run/containers/{name}",
        image_reference="docker.io/library/busybox:1.36",
        image_digest=None,
        rootfs_digest="sha256:" + hashlib.sha256(name.encode()).hexdigest(),
        rootfs_entries=279,
        config_digest="sha256:" + "cd" * 32,
        launch_profile_digest="sha256:" + "ef" * 32,
        stage="createRuntime",
        time="2026-11-28T12:00:00.000000Z",
        boot_id=BOOT_ID,
    )


@pytest.fixture(scope="module")
def ak() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def tpm(ak: rsa.RSAPrivateKey) -> SoftTpm:
    return SoftTpm(ak)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    store = LogStore(tmp_path / "eventlog", BOOT_ID)
    fd = store.lock()  # as the agent does: it makes the directory
    yield store
    os.close(fd)


def writer(store: LogStore, tpm: SoftTpm) -> MeasuredLog:
    """A writer as the agent starts one: recovered, with nothing to repair."""
    log = MeasuredLog(store=store, tpm=tpm, pcr=PCR)
    assert log.recover() == []
    return log


def launched(store: LogStore, tpm: SoftTpm, n: int) -> list[Record]:
    log = writer(store, tpm)
    return [log.append(event(f"c{i}")) for i in range(n)]


def assert_consistent(store: LogStore, tpm: SoftTpm, records: Sequence[Record]) -> None:
    """The file holds exactly ``records``, byte for byte, and the PCR is their replay."""
    assert store.path.read_bytes() == b"".join(r.to_line() for r in records)
    assert tpm.values[PCR] == pcr_after(records)


# append


def test_append_records_then_extends(store: LogStore, tpm: SoftTpm) -> None:
    records = launched(store, tpm, 3)
    assert [(r.recnum, r.pcr, r.event.container_id) for r in records] == [
        (0, PCR, "c0"),
        (1, PCR, "c1"),
        (2, PCR, "c2"),
    ]
    assert all(r.digest == r.event.digest() for r in records)
    assert store.read().records == records
    assert_consistent(store, tpm, records)
    assert tpm.values[:PCR] == [bytes(32)] * PCR


def test_restarted_writer_continues_the_numbering(store: LogStore, tpm: SoftTpm) -> None:
    first = launched(store, tpm, 2)
    later = writer(store, tpm).append(event("after-restart"))
    assert later.recnum == 2
    assert_consistent(store, tpm, [*first, later])


def test_first_append_recovers_if_recover_was_not_called(
    store: LogStore, tpm: SoftTpm, caplog: pytest.LogCaptureFixture
) -> None:
    first = launched(store, tpm, 1)
    store.append(Record.for_event(recnum=1, pcr=PCR, event=event("crashed")))
    with caplog.at_level(logging.WARNING, logger="trusthook.agent.writer"):
        record = MeasuredLog(store=store, tpm=tpm, pcr=PCR).append(event("next"))
    assert "record 1 (container crashed) was appended but never extended" in caplog.text
    assert record.recnum == 1
    assert_consistent(store, tpm, [*first, record])


# recovery from the two states a crash can leave


@pytest.mark.parametrize("cut", ["one-byte", "half", "all-but-newline"])
def test_torn_last_line_is_removed_and_named(store: LogStore, tpm: SoftTpm, cut: str) -> None:
    records = launched(store, tpm, 2)
    line = Record.for_event(recnum=2, pcr=PCR, event=event("torn")).to_line()
    kept = {"one-byte": 1, "half": len(line) // 2, "all-but-newline": len(line) - 1}[cut]
    with open(store.path, "ab") as f:
        f.write(line[:kept])
    log = MeasuredLog(store=store, tpm=tpm, pcr=PCR)
    assert log.recover() == ["record 2 was cut off mid-write and never extended; removed it"]
    assert_consistent(store, tpm, records)
    record = log.append(event("next"))
    assert record.recnum == 2
    assert_consistent(store, tpm, [*records, record])


@pytest.mark.parametrize("before", [0, 2])
def test_record_appended_but_never_extended_is_removed_and_named(
    store: LogStore, tpm: SoftTpm, before: int
) -> None:
    """The crash invariant: the record is durable before the extend, so a crash in between
    leaves a last record the PCR lacks; that container never started."""
    records = launched(store, tpm, before)
    store.append(Record.for_event(recnum=before, pcr=PCR, event=event("crashed")))
    log = MeasuredLog(store=store, tpm=tpm, pcr=PCR)
    (note,) = log.recover()
    assert note.startswith(f"record {before} (container crashed) was appended but never extended")
    assert "into PCR 23 (the agent stopped in between); removed it" in note
    assert_consistent(store, tpm, records)
    record = log.append(event("next"))
    assert record.recnum == before
    assert_consistent(store, tpm, [*records, record])


def test_recover_twice_repairs_nothing_more(store: LogStore, tpm: SoftTpm) -> None:
    records = launched(store, tpm, 2)
    store.append(Record.for_event(recnum=2, pcr=PCR, event=event("crashed")))
    log = MeasuredLog(store=store, tpm=tpm, pcr=PCR)
    assert len(log.recover()) == 1
    assert log.recover() == []
    assert_consistent(store, tpm, records)


# a failed extend: the PCR says whether it happened


def test_extend_the_tpm_refused_takes_the_record_back_out(store: LogStore, tpm: SoftTpm) -> None:
    log = writer(store, tpm)
    records = [log.append(event("c0"))]
    tpm.extend_fault = "refused"
    with pytest.raises(TPMError, match="refused to extend"):
        log.append(event("refused"))
    assert_consistent(store, tpm, records)
    records.append(log.append(event("c1")))
    assert records[-1].recnum == 1
    assert_consistent(store, tpm, records)


def test_extend_whose_answer_was_lost_is_kept(
    store: LogStore, tpm: SoftTpm, caplog: pytest.LogCaptureFixture
) -> None:
    log = writer(store, tpm)
    records = [log.append(event("c0"))]
    tpm.extend_fault = "answer_lost"
    with caplog.at_level(logging.WARNING, logger="trusthook.agent.writer"), pytest.raises(TPMError):
        log.append(event("extended"))
    assert caplog.records == []  # the PCR shows the extend happened: nothing diverged
    (kept,) = store.read().records[1:]
    assert kept.event.container_id == "extended"
    records += [kept, log.append(event("c2"))]
    assert [r.recnum for r in records] == [0, 1, 2]
    assert_consistent(store, tpm, records)


@pytest.mark.parametrize("fault", ["refused", "answer_lost"])
def test_failed_extend_with_the_pcr_unreadable_is_settled_by_the_next_append(
    store: LogStore, tpm: SoftTpm, fault: Literal["refused", "answer_lost"]
) -> None:
    log = writer(store, tpm)
    first = log.append(event("c0"))
    tpm.extend_fault, tpm.failing_reads = fault, 1
    with pytest.raises(TPMError):
        log.append(event("unknown"))
    record = log.append(event("next"))
    expected = [first] if fault == "refused" else [first, store.read().records[1]]
    assert record.recnum == len(expected)
    assert_consistent(store, tpm, [*expected, record])


# divergence: refused, and nothing more is written or extended


def _extended_outside_the_log(store: LogStore, tpm: SoftTpm) -> str:
    tpm.pcr_extend(PCR, hashlib.sha256(b"not in the log").digest())
    return "no prefix of the 2 records replays"


def _pcr_reset(store: LogStore, tpm: SoftTpm) -> str:
    tpm.pcr_reset(PCR)
    return "the PCR is all zeros but the log holds 2 records"


def _record_altered(store: LogStore, tpm: SoftTpm) -> str:
    records = store.read().records
    altered = replace(records[0], event=replace(records[0].event, container_id="evil"))
    store.path.write_bytes(altered.to_line() + records[1].to_line())
    return "record 0: digest .* does not match its content"


def _record_rewritten(store: LogStore, tpm: SoftTpm) -> str:
    records = store.read().records
    rewritten = Record.for_event(recnum=0, pcr=PCR, event=event("evil"))
    store.path.write_bytes(rewritten.to_line() + records[1].to_line())
    return "no prefix of the 2 records replays"


def _record_lost(store: LogStore, tpm: SoftTpm) -> str:
    store.truncate(store.read().starts[1])
    tpm.pcr_extend(PCR, Record.for_event(recnum=2, pcr=PCR, event=event("c2")).digest)
    return "no prefix of the 1 records replays"


def _two_never_extended(store: LogStore, tpm: SoftTpm) -> str:
    """Only the last record can lack its extend; two records that do are a divergence."""
    store.append(Record.for_event(recnum=2, pcr=PCR, event=event("c2")))
    tpm.pcr_reset(PCR)
    tpm.pcr_extend(PCR, store.read().records[0].digest)
    return "record 1: log diverges from PCR 23; the PCR equals the replay of the first 1 records"


@pytest.mark.parametrize(
    "diverge",
    [
        _extended_outside_the_log,
        _pcr_reset,
        _record_altered,
        _record_rewritten,
        _record_lost,
        _two_never_extended,
    ],
)
def test_log_that_does_not_replay_to_the_pcr_is_refused(
    store: LogStore, tpm: SoftTpm, diverge: Callable[[LogStore, SoftTpm], str]
) -> None:
    launched(store, tpm, 2)
    needle = diverge(store, tpm)
    on_disk, pcr = store.path.read_bytes(), tpm.values[PCR]
    log = MeasuredLog(store=store, tpm=tpm, pcr=PCR)
    with pytest.raises(EventLogError, match=needle):
        log.recover()
    with pytest.raises(EventLogError, match=needle):
        log.append(event("after-divergence"))
    assert (store.path.read_bytes(), tpm.values[PCR]) == (on_disk, pcr)


# evidence and snapshot


def test_evidence_is_a_quote_and_the_records_that_replay_to_it(
    store: LogStore, tpm: SoftTpm
) -> None:
    records = launched(store, tpm, 5)
    log = MeasuredLog(store=store, tpm=tpm, pcr=PCR)
    nonce = b"n" * 32
    quote, newer = log.evidence([PCR], nonce, after=2)
    assert newer == records[3:]
    assert quote.pcr_values == {PCR: pcr_after(records)}
    verified = HostState(
        reset_count=1,
        restart_count=0,
        boot_id=BOOT_ID,
        clock=0,
        verified_recnum=2,
        verified_pcr=pcr_after(records[:3]),
    )
    result = appraise(
        key=tpm.ak_key(),
        nonce=nonce,
        evidence=Evidence(
            attest=quote.attest,
            signature=quote.signature,
            pcr_values=quote.pcr_values,
            boot_id=BOOT_ID,
            events=newer,
        ),
        expect=Expectations(container_pcr=PCR, golden={}),
        state=verified,
    )
    assert result.reasons == ()
    assert result.state == replace(
        verified, clock=tpm.clock, verified_recnum=4, verified_pcr=pcr_after(records)
    )
    assert log.evidence([0, PCR], nonce, after=-1)[1] == records


def test_snapshot_is_the_log_and_its_pcr(store: LogStore, tpm: SoftTpm) -> None:
    records = launched(store, tpm, 3)
    snap = MeasuredLog(store=store, tpm=tpm, pcr=PCR).snapshot()
    assert snap.records == records
    assert snap.pcr_value == pcr_after(records) == tpm.values[PCR]


def test_evidence_and_snapshot_refuse_a_torn_log(store: LogStore, tpm: SoftTpm) -> None:
    """A torn line that appears under a running writer (it never leaves one: a failed append
    is cut back) was written by someone else; a writer still unsure would repair it first."""
    log = writer(store, tpm)
    log.append(event("c0"))
    with open(store.path, "ab") as f:
        f.write(b'{"recnum":1,')
    with pytest.raises(EventLogError, match="ends in a torn record"):
        log.snapshot()
    with pytest.raises(EventLogError, match="ends in a torn record"):
        log.evidence([PCR], b"n", after=-1)
    assert tpm.quotes == 0


@pytest.mark.parametrize("fault", ["refused", "answer_lost"])
def test_evidence_after_an_unsettled_failed_extend_replays_to_the_quote(
    store: LogStore, tpm: SoftTpm, fault: Literal["refused", "answer_lost"]
) -> None:
    """writer.py promises that evidence's records replay to the quoted PCR. After a failed
    extend whose PCR read-back failed too, the file may hold a never-extended record: evidence
    settles it first, as append does (removed if the TPM refused, kept if it extended)."""
    log = writer(store, tpm)
    first = log.append(event("c0"))
    tpm.extend_fault, tpm.failing_reads = fault, 1
    with pytest.raises(TPMError):
        log.append(event("unsure"))
    quote, records = log.evidence([PCR], b"n" * 32, after=-1)
    assert pcr_after(records) == quote.pcr_values[PCR]
    assert [r.event.container_id for r in records] == (
        ["c0"] if fault == "refused" else ["c0", "unsure"]
    )
    assert_consistent(store, tpm, records)
    assert log.append(event("next")).recnum == len(records)
    assert first == records[0]


def test_snapshot_after_an_unsettled_failed_extend_replays(store: LogStore, tpm: SoftTpm) -> None:
    log = writer(store, tpm)
    records = [log.append(event("c0"))]
    tpm.extend_fault, tpm.failing_reads = "refused", 1
    with pytest.raises(TPMError):
        log.append(event("never-extended"))
    snap = log.snapshot()
    assert (snap.records, snap.pcr_value) == (records, pcr_after(records))


# a diverged log: launches refused, the log still served as it is


def test_divergence_names_the_record_and_the_remedy(store: LogStore, tpm: SoftTpm) -> None:
    launched(store, tpm, 2)
    tpm.pcr_reset(PCR)
    with pytest.raises(LogDivergedError) as refused:
        MeasuredLog(store=store, tpm=tpm, pcr=PCR).recover()
    assert str(refused.value) == (
        "record 0: log diverges from PCR 23; the PCR is all zeros but the log holds 2 records:"
        " the PCR was reset or the TPM restarted since; no launch is recorded onto a log that"
        " does not replay to the PCR; reboot the host (a new boot starts a new log from a zero"
        " PCR)"
    )


@pytest.mark.parametrize("diverge", [_pcr_reset, _extended_outside_the_log, _record_rewritten])
def test_diverged_log_is_served_as_it_is_so_a_verifier_sees_it(
    store: LogStore, tpm: SoftTpm, diverge: Callable[[LogStore, SoftTpm], str]
) -> None:
    """What the agent does when it starts on a diverged log: it serves evidence and snapshots
    of the log and PCR as they are (the verifier's replay fails), and refuses every launch."""
    launched(store, tpm, 2)
    needle = diverge(store, tpm)
    on_disk = store.read().records
    log = MeasuredLog(store=store, tpm=tpm, pcr=PCR)
    with pytest.raises(LogDivergedError, match=needle):
        log.recover()
    quote, records = log.evidence([PCR], b"n" * 32, after=-1)
    assert records == on_disk
    assert quote.pcr_values[PCR] == tpm.values[PCR] != pcr_after(records)
    snap = log.snapshot()
    assert (snap.records, snap.pcr_value) == (on_disk, tpm.values[PCR])
    for _ in range(2):
        with pytest.raises(LogDivergedError, match=needle):
            log.append(event("refused"))
    assert store.read().records == on_disk


# a TPM restart under the running writer


def test_launch_after_a_tpm_restart_is_refused_even_with_one_record(
    store: LogStore, tpm: SoftTpm
) -> None:
    """Once the adapter has seen the TPM restart (it recreated its keys), a zero PCR is known
    to be a reset: the one-record case is not taken for a crash (its record is not removed)."""
    log = writer(store, tpm)
    record = log.append(event("c0"))
    tpm.restart()
    with pytest.raises(LogDivergedError, match="the PCR is all zeros but the log holds 1 records"):
        log.append(event("after-restart"))
    assert store.read().records == [record]
    quote, records = log.evidence([PCR], b"n" * 32, after=-1)
    assert (records, quote.pcr_values[PCR]) == ([record], bytes(32))


def test_tpm_restart_with_an_empty_log_is_no_divergence(store: LogStore, tpm: SoftTpm) -> None:
    log = writer(store, tpm)
    tpm.restart()
    assert log.append(event("c0")).recnum == 0
    assert_consistent(store, tpm, store.read().records)


def test_tpm_restart_seen_without_a_pcr_reset_is_rechecked_and_goes_on(
    store: LogStore, tpm: SoftTpm
) -> None:
    """The adapter recreates its keys whenever the TPM lost them; a PCR that still replays is
    fine, and the writer is sure again."""
    log = writer(store, tpm)
    records = [log.append(event("c0"))]
    tpm.restarts_seen += 1
    records.append(log.append(event("c1")))
    assert_consistent(store, tpm, records)


def test_an_event_log_that_cannot_be_opened_is_an_event_log_error(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "absent" / "eventlog", "boot")
    record = Record.for_event(recnum=0, pcr=23, event=event("c"))
    with pytest.raises(EventLogError, match="cannot open the event log .*No such file"):
        store.append(record)
