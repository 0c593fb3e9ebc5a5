"""Appraise attestation evidence against what the verifier knows about the host.

Pure: the host's verified state, the evidence and the group's golden values in; the verdict's
reasons and the host's next verified state out. The quote must verify before anything else is
believed; after that, every failed check is reported, not only the first.

Epochs (docs/attestation.md §5.1): a TPM epoch is one (resetCount, restartCount). It only moves
forward, and only with a reboot: a new epoch under the same boot id is a TPM reset or restart
under a running host, which cleared the container PCR without a new boot, and is refused. Within
one epoch the TPM clock only moves forward.

Continuity: within one epoch the container PCR only moves forward, so the records since the last
verified one must extend the last verified PCR value to the quoted one. A PCR reset, or a log
rewritten and re-extended, cannot do that. A new epoch with a new boot id (a reboot) starts from
record 0 and a zero PCR.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from trusthook.attest.identity import AttestationKey
from trusthook.attest.quote import PCR_SIZE, ClockInfo, verify_quote
from trusthook.attest.verdict import Reason
from trusthook.common.eventlog import Record, extend
from trusthook.errors import AttestationError


@dataclass(frozen=True, slots=True, kw_only=True)
class HostState:
    """What the verifier has established about a host's current TPM epoch and log."""

    reset_count: int | None = None
    restart_count: int | None = None
    boot_id: str | None = None
    clock: int | None = None  # clockInfo.clock (ms) of the last verified quote in this epoch
    verified_recnum: int = -1  # the last record verified in this epoch; -1: none yet
    verified_pcr: bytes = bytes(PCR_SIZE)  # the container PCR's value after that record


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence:
    """What the agent sends for one attestation."""

    attest: bytes
    signature: bytes
    pcr_values: Mapping[int, bytes]
    boot_id: str
    events: Sequence[Record]


@dataclass(frozen=True, slots=True, kw_only=True)
class Expectations:
    """The PCRs to quote, the container PCR among them, and golden values for the others."""

    container_pcr: int
    golden: Mapping[int, frozenset[bytes]]

    @property
    def pcrs(self) -> tuple[int, ...]:
        return tuple(sorted({*self.golden, self.container_pcr}))


@dataclass(frozen=True, slots=True, kw_only=True)
class Appraisal:
    """The reasons the host is not trusted (none: trusted) and the state to keep.

    ``state`` is None when the evidence established nothing (the quote did not verify, or the
    log does not continue the verified one); the verifier then keeps what it had.
    """

    reasons: tuple[Reason, ...]
    state: HostState | None

    @property
    def trusted(self) -> bool:
        return not self.reasons


def appraise(
    *,
    key: AttestationKey,
    nonce: bytes,
    evidence: Evidence,
    expect: Expectations,
    state: HostState,
) -> Appraisal:
    """Appraise ``evidence`` answering ``nonce`` from the host whose AK is ``key``."""
    try:
        quote = verify_quote(
            key=key,
            attest=evidence.attest,
            signature=evidence.signature,
            nonce=nonce,
            pcrs=expect.pcrs,
            pcr_values=evidence.pcr_values,
        )
    except AttestationError as e:
        return Appraisal(reasons=(Reason.of(e),), state=None)
    reasons: list[Reason] = []
    clock_reason = _check_epoch(quote.clock, state, evidence.boot_id)
    if clock_reason is not None:
        return Appraisal(reasons=(clock_reason,), state=None)
    if not quote.clock.safe:
        reasons.append(
            Reason(
                check="clock",
                message="the TPM clock is not marked safe: it may have gone backwards"
                " (the TPM was not shut down cleanly)",
                expected="safe=1",
                got="safe=0",
            )
        )
    reasons.extend(_check_golden(quote.pcr_values, expect.golden))
    new_epoch = (quote.clock.reset_count, quote.clock.restart_count) != (
        state.reset_count,
        state.restart_count,
    )
    base = (
        HostState(
            reset_count=quote.clock.reset_count,
            restart_count=quote.clock.restart_count,
            boot_id=evidence.boot_id,
        )
        if new_epoch
        else state
    )
    try:
        tip = _check_log(base, evidence, expect.container_pcr, quote.pcr_values)
    except AttestationError as e:
        return Appraisal(reasons=(*reasons, Reason.of(e)), state=None)
    next_state = replace(
        base,
        verified_recnum=base.verified_recnum + len(evidence.events),
        verified_pcr=tip,
        clock=quote.clock.clock,
    )
    return Appraisal(reasons=tuple(reasons), state=next_state)


def _check_epoch(clock: ClockInfo, state: HostState, boot_id: str) -> Reason | None:
    """The fatal clock checks: the epoch does not go backwards, does not change without a
    reboot (a new boot id), and within one epoch the clock does not go backwards."""
    if state.reset_count is None or state.restart_count is None:
        return None  # nothing verified yet: any epoch is the first
    verified = (state.reset_count, state.restart_count)
    if (clock.reset_count, clock.restart_count) != verified:
        return _check_new_epoch(clock, verified, boot_id, state.boot_id)
    if state.clock is not None and clock.clock < state.clock:
        return Reason(
            check="clock",
            message="the TPM clock went backwards within one epoch: the quote is older than one"
            " already verified (held back and replayed) or the TPM state was rolled back",
            expected=f">= {state.clock} ms",
            got=f"{clock.clock} ms",
        )
    return None


def _check_new_epoch(
    clock: ClockInfo, verified: tuple[int, int], boot_id: str, verified_boot_id: str | None
) -> Reason | None:
    """A new epoch must be later than the ``verified`` (resetCount, restartCount) and come with
    a boot id other than the verified one."""
    reset, restart = verified
    if clock.reset_count < reset:
        return Reason(
            check="clock",
            message="the TPM reset count went backwards (a TPM state rolled back or replaced)",
            expected=f">= {reset}",
            got=str(clock.reset_count),
        )
    if clock.reset_count == reset and clock.restart_count < restart:
        return Reason(
            check="clock",
            message="the TPM restart count went backwards within one reset",
            expected=f">= {restart}",
            got=str(clock.restart_count),
        )
    if boot_id != verified_boot_id:
        return None  # a reboot: a new epoch and a new boot
    return Reason(
        check="clock",
        message=f"the TPM was {'reset' if clock.reset_count != reset else 'restarted'} under a"
        f" running host: a new TPM epoch (resetCount {reset} -> {clock.reset_count},"
        f" restartCount {restart} -> {clock.restart_count}) with the same boot id is no reboot,"
        " and it cleared the container PCR without one; the host stays untrusted until it"
        " reboots",
        expected="a new boot id with a new TPM epoch (a reboot)",
        got=f"boot id {boot_id}, the one verified in the epoch before",
    )


def _check_golden(
    values: Mapping[int, bytes], golden: Mapping[int, frozenset[bytes]]
) -> list[Reason]:
    reasons = []
    for index in sorted(golden):
        if values[index] not in golden[index]:
            reasons.append(
                Reason(
                    check="golden_pcr",
                    message=f"PCR {index} is not one of the host group's known-good values",
                    expected=" or ".join(sorted(v.hex() for v in golden[index])),
                    got=values[index].hex(),
                )
            )
    return reasons


def _check_log(base: HostState, evidence: Evidence, pcr: int, values: Mapping[int, bytes]) -> bytes:
    """Replay the new records onto the verified tip; return the new tip or raise."""
    if base.boot_id != evidence.boot_id:
        raise AttestationError(
            "boot",
            "the host's boot id changed although the TPM was neither reset nor restarted",
            expected=base.boot_id,
            got=evidence.boot_id,
        )
    tip = base.verified_pcr
    for offset, record in enumerate(evidence.events):
        recnum = base.verified_recnum + 1 + offset
        if record.recnum != recnum:
            raise AttestationError(
                "event_log",
                "the records sent do not continue the last verified record",
                expected=f"record {recnum}",
                got=f"record {record.recnum}",
            )
        if record.pcr != pcr:
            raise AttestationError(
                "event_log",
                f"record {recnum} targets PCR {record.pcr}",
                expected=f"PCR {pcr}",
                got=f"PCR {record.pcr}",
            )
        if record.digest != record.event.digest():
            raise AttestationError(
                "event_log",
                f"record {recnum}'s digest does not match its content (the record was altered)",
                expected=record.digest.hex(),  # what the PCR chain commits to
                got=record.event.digest().hex(),  # what the content sent hashes to
            )
        if record.event.boot_id != evidence.boot_id:
            raise AttestationError(
                "event_log",
                f"record {recnum} belongs to another boot",
                expected=evidence.boot_id,
                got=record.event.boot_id,
            )
        tip = extend(tip, record.digest)
    if tip != values[pcr]:
        since = (
            f"record {base.verified_recnum} (the last verified one)"
            if base.verified_recnum >= 0
            else "an empty PCR"
        )
        raise AttestationError(
            "event_log",
            f"the event log replayed from {since} does not reach the quoted PCR {pcr}: the log"
            " is incomplete or was rewritten, or the PCR was reset or extended outside the log",
            expected=values[pcr].hex(),
            got=tip.hex(),
        )
    return tip
