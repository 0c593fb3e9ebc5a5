"""appraise() on evidence recorded from a real swtpm (tests/data/evidence): the honest host is
trusted quote after quote and across reboots, and each check refuses its attack with its own
reason, fatal ones leaving the verified state where it was. No TPM needed.

The recorded epochs each come with their own boot id (the recorder's reboots). A TPM reset or
restart under a running host is the same evidence appraised against a verified state that holds
the new epoch's boot id: the host kept its boot id while the TPM counts moved."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.data.recorded import CONTAINER_PCR, Epoch, RecordedQuote, firmware_digests, load
from trusthook.attest.appraise import Appraisal, Evidence, Expectations, HostState, appraise
from trusthook.attest.identity import check_ak_public
from trusthook.attest.tpmwire import parse_quote_info
from trusthook.common.eventlog import Record, verify_against_pcr

RECORDING = load()
KEY = check_ak_public(RECORDING.ak_public)
BOOT, REBOOT, RESTART, CRASH = (RECORDING.epoch(n) for n in ("boot", "reboot", "restart", "crash"))
EMPTY, THREE, FIVE, NARROW, REWRITTEN = (
    BOOT.quote(n) for n in ("empty", "three", "five", "narrow", "rewritten")
)
HONEST_BOOT = (EMPTY, THREE, FIVE)


def pcr_after(digests: Sequence[bytes]) -> bytes:
    """A SHA-256 PCR from reset, extended with ``digests`` (TPM 2.0 Part 1, 17.6.2)."""
    value = bytes(32)
    for digest in digests:
        value = hashlib.sha256(value + digest).digest()
    return value


# The group's golden values: what the recorder's simulated firmware extends at each power-on.
GOLDEN = {i: frozenset({pcr_after(firmware_digests(i))}) for i in range(8)}
EXPECT = Expectations(container_pcr=CONTAINER_PCR, golden=GOLDEN)


def run(
    q: RecordedQuote,
    state: HostState,
    *,
    events: Sequence[Record] | None = None,
    boot_id: str | None = None,
    pcr_values: Mapping[int, bytes] | None = None,
    nonce: bytes | None = None,
    golden: Mapping[int, frozenset[bytes]] = GOLDEN,
) -> Appraisal:
    """Appraise ``q`` as recorded, with the given parts of its evidence replaced."""
    honest = q.evidence()
    evidence = Evidence(
        attest=honest.attest,
        signature=honest.signature,
        pcr_values=honest.pcr_values if pcr_values is None else pcr_values,
        boot_id=honest.boot_id if boot_id is None else boot_id,
        events=honest.events if events is None else events,
    )
    return appraise(
        key=KEY,
        nonce=q.nonce if nonce is None else nonce,
        evidence=evidence,
        expect=Expectations(container_pcr=CONTAINER_PCR, golden=golden),
        state=state,
    )


def attested(quotes: Sequence[RecordedQuote], state: HostState | None = None) -> HostState:
    """The verifier's state after ``quotes``, each of which must be trusted."""
    state = HostState() if state is None else state
    for q in quotes:
        result = run(q, state)
        assert result.reasons == ()
        assert result.state is not None
        state = result.state
    return state


def reason(result: Appraisal) -> tuple[str, str]:
    """The one reason of a fatal refusal, which keeps the verified state."""
    assert not result.trusted
    assert result.state is None
    assert len(result.reasons) == 1
    return result.reasons[0].check, result.reasons[0].message


def counts(q: RecordedQuote) -> tuple[int, int]:
    info = parse_quote_info(q.attest)
    return info.reset_count, info.restart_count


def clock(q: RecordedQuote) -> int:
    return parse_quote_info(q.attest).clock


def digests(records: Sequence[Record]) -> list[bytes]:
    return [r.digest for r in records]


# the honest host


def test_recorded_firmware_pcrs_are_the_golden_values() -> None:
    for q in (q for e in RECORDING.epochs for q in e.quotes):
        assert {i: frozenset({q.pcr_values[i]}) for i in range(8)} == GOLDEN


def test_honest_boot_is_trusted_quote_after_quote() -> None:
    state = HostState()
    sent: list[Record] = []
    for q in HONEST_BOOT:
        result = run(q, state)
        assert result.trusted
        assert result.state is not None
        state, sent = result.state, [*sent, *q.events]
        assert state.verified_recnum == len(sent) - 1
        assert state.verified_pcr == pcr_after(digests(sent)) == q.pcr_values[CONTAINER_PCR]
        assert (state.reset_count, state.restart_count) == counts(q)
        assert state.boot_id == BOOT.boot_id
        assert state.clock == clock(q)
    assert [r.recnum for r in sent] == [0, 1, 2, 3, 4]


def test_same_quote_appraised_again_after_it_moved_the_state_is_refused() -> None:
    """Replaying accepted evidence: its records are no longer the next ones."""
    state = attested(HONEST_BOOT)
    check, message = reason(run(FIVE, state))
    assert check == "event_log"
    assert "do not continue the last verified record" in message


@pytest.mark.parametrize("epoch", [REBOOT, RESTART], ids=lambda e: e.name)
def test_each_new_epoch_starts_again_from_record_0_and_an_empty_pcr(epoch: Epoch) -> None:
    before = attested(HONEST_BOOT if epoch is REBOOT else [REBOOT.quotes[0]])
    (q,) = epoch.quotes
    result = run(q, before)
    assert result.trusted
    assert result.state == HostState(
        reset_count=counts(q)[0],
        restart_count=counts(q)[1],
        boot_id=epoch.boot_id,
        clock=clock(q),
        verified_recnum=len(q.events) - 1,
        verified_pcr=pcr_after(digests(q.events)),
    )
    assert (result.state.reset_count, result.state.restart_count) != (
        before.reset_count,
        before.restart_count,
    )


def test_host_first_seen_in_a_later_epoch_is_trusted() -> None:
    assert run(REBOOT.quotes[0], HostState()).trusted


# fatal: nothing else is believed and the verified state does not move


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.mark.parametrize(
    ("nonce", "pcr_values", "check", "needle"),
    [
        (THREE.nonce, None, "nonce", "not the nonce issued"),
        (None, {**FIVE.pcr_values, 0: bytes(32)}, "pcr_digest", "do not hash"),
        (
            None,
            {i: v for i, v in FIVE.pcr_values.items() if i != 23},
            "pcr_values",
            "not those of the quoted PCRs",
        ),
    ],
    ids=["nonce", "pcr-digest", "pcr-values"],
)
def test_evidence_that_does_not_answer_the_challenge_is_refused(
    nonce: bytes | None, pcr_values: dict[int, bytes] | None, check: str, needle: str
) -> None:
    result = run(FIVE, attested([EMPTY, THREE]), nonce=nonce, pcr_values=pcr_values)
    got_check, message = reason(result)
    assert got_check == check
    assert needle in message


@pytest.mark.parametrize("part", ["attest", "signature"])
def test_forged_signature_or_altered_attest_is_refused(part: str) -> None:
    honest = FIVE.evidence()
    if part == "attest":
        forged = replace(honest, attest=_flip_last(honest.attest))
    else:
        forged = replace(honest, signature=_flip_last(honest.signature))
    result = appraise(
        key=KEY, nonce=FIVE.nonce, evidence=forged, expect=EXPECT, state=attested([EMPTY])
    )
    check, message = reason(result)
    assert check == "signature"
    assert "not signed by this host's enrolled attestation key" in message


def test_quote_hiding_the_container_pcr_is_refused() -> None:
    state = attested(HONEST_BOOT)
    check, message = reason(run(NARROW, state))
    assert check == "pcr_selection"
    assert "covers other PCRs than were asked for" in message


def test_reset_count_going_backwards_is_refused() -> None:
    """A TPM state rolled back: the boot epoch's quote after the reboot was verified."""
    state = attested([REBOOT.quotes[0]])
    result = run(FIVE, state)
    check, message = reason(result)
    assert check == "clock"
    assert "reset count went backwards" in message
    assert (result.reasons[0].expected, result.reasons[0].got) == (
        f">= {counts(REBOOT.quotes[0])[0]}",
        str(counts(FIVE)[0]),
    )


def test_restart_count_going_backwards_within_one_reset_is_refused() -> None:
    state = attested([RESTART.quotes[0]])
    result = run(REBOOT.quotes[0], state)
    check, message = reason(result)
    assert check == "clock"
    assert "restart count went backwards within one reset" in message
    assert (result.reasons[0].expected, result.reasons[0].got) == (">= 1", "0")


# reported, and the state moves on: the log is still proven


def test_clock_not_safe_after_power_loss_is_reported() -> None:
    (q,) = CRASH.quotes
    result = run(q, attested([RESTART.quotes[0]]))
    assert [(r.check, r.expected, r.got) for r in result.reasons] == [("clock", "safe=1", "safe=0")]
    assert "not marked safe" in result.reasons[0].message
    assert result.state is not None
    assert result.state.verified_recnum == 0
    assert result.state.verified_pcr == q.pcr_values[CONTAINER_PCR]


def test_golden_pcr_mismatch_is_reported_and_the_log_still_verified() -> None:
    other = hashlib.sha256(b"another firmware").digest()
    state = attested([EMPTY, THREE])
    result = run(FIVE, state, golden={**GOLDEN, 0: frozenset({other}), 5: frozenset({other})})
    assert [r.check for r in result.reasons] == ["golden_pcr", "golden_pcr"]
    first = result.reasons[0]
    assert "PCR 0 is not one of the host group's known-good values" in first.message
    assert (first.expected, first.got) == (other.hex(), FIVE.pcr_values[0].hex())
    assert "PCR 5" in result.reasons[1].message
    assert result.state == run(FIVE, state).state


def test_any_of_several_golden_values_is_accepted() -> None:
    other = frozenset({hashlib.sha256(b"another firmware").digest()})
    assert run(FIVE, attested([EMPTY, THREE]), golden={**GOLDEN, 0: GOLDEN[0] | other}).trusted


def test_every_failed_check_is_reported_not_only_the_first() -> None:
    (q,) = CRASH.quotes
    altered = replace(q.events[0], event=replace(q.events[0].event, container_id="evil"))
    other = frozenset({hashlib.sha256(b"another firmware").digest()})
    result = run(q, HostState(), events=[altered], golden={**GOLDEN, 7: other})
    assert [r.check for r in result.reasons] == ["clock", "golden_pcr", "event_log"]
    assert result.state is None


# the event log


def _altered(
    record: Record, *, redigest: bool, container_id: str | None = None, boot_id: str | None = None
) -> Record:
    event = replace(
        record.event,
        container_id=container_id or record.event.container_id,
        boot_id=boot_id or record.event.boot_id,
    )
    if redigest:
        return Record.for_event(recnum=record.recnum, pcr=record.pcr, event=event)
    return replace(record, event=event)


@pytest.mark.parametrize(
    ("events", "needle"),
    [
        (FIVE.events[:1], "replayed from record 2 (the last verified one) does not reach"),
        ((), "replayed from record 2 (the last verified one) does not reach"),
        (FIVE.events[1:], "do not continue the last verified record"),
        ((*THREE.events, *FIVE.events), "do not continue the last verified record"),
        (FIVE.events[::-1], "do not continue the last verified record"),
        (
            (_altered(FIVE.events[0], redigest=False, container_id="evil"), FIVE.events[1]),
            "record 3's digest does not match its content (the record was altered)",
        ),
        (
            (_altered(FIVE.events[0], redigest=True, container_id="evil"), FIVE.events[1]),
            "does not reach the quoted PCR 23",
        ),
        (
            (replace(FIVE.events[0], pcr=16), FIVE.events[1]),
            "record 3 targets PCR 16",
        ),
        (
            (_altered(FIVE.events[0], redigest=True, boot_id=REBOOT.boot_id), FIVE.events[1]),
            "record 3 belongs to another boot",
        ),
    ],
    ids=[
        "truncated",
        "none-sent",
        "first-dropped",
        "resent-from-0",
        "reordered",
        "altered",
        "rewritten-redigested",
        "other-pcr",
        "other-boot",
    ],
)
def test_log_that_does_not_continue_to_the_quoted_pcr_is_refused(
    events: Sequence[Record], needle: str
) -> None:
    check, message = reason(run(FIVE, attested([EMPTY, THREE]), events=events))
    assert check == "event_log"
    assert needle in message


def test_expected_is_the_trusted_reference_and_got_the_value_checked() -> None:
    """One convention for every reason (docs/attestation.md §6): ``expected`` is what the
    verifier trusts (the server's own data or what the TPM signed), ``got`` what the evidence
    under check shows. An altered record: its digest (in the PCR chain) against its content."""
    altered = _altered(FIVE.events[0], redigest=False, container_id="evil")
    result = run(FIVE, attested([EMPTY, THREE]), events=(altered, FIVE.events[1]))
    assert result.reasons[0].expected == altered.digest.hex()
    assert result.reasons[0].got == altered.event.digest().hex()
    nonce = run(FIVE, attested([EMPTY, THREE]), nonce=b"another nonce")
    assert nonce.reasons[0].check == "nonce"
    assert nonce.reasons[0].expected == hashlib.sha256(b"another nonce").hexdigest()[:16]


def test_truncated_first_log_is_refused_from_an_empty_pcr() -> None:
    result = run(THREE, HostState(), events=THREE.events[:2])
    check, message = reason(result)
    assert check == "event_log"
    assert "replayed from an empty PCR does not reach the quoted PCR 23" in message
    assert result.reasons[0].expected == THREE.pcr_values[CONTAINER_PCR].hex()
    assert result.reasons[0].got == pcr_after(digests(THREE.events[:2])).hex()


@given(
    st.lists(st.sampled_from([*THREE.events, *FIVE.events, *REWRITTEN.events]), max_size=6).filter(
        lambda events: events != list(FIVE.events)
    )
)
def test_only_the_records_the_tpm_extended_continue_the_log(events: list[Record]) -> None:
    check, _ = reason(run(FIVE, attested([EMPTY, THREE]), events=events))
    assert check == "event_log"


def test_boot_id_changed_within_one_epoch_is_refused() -> None:
    events = [_altered(r, redigest=True, boot_id=REBOOT.boot_id) for r in FIVE.events]
    check, message = reason(
        run(FIVE, attested([EMPTY, THREE]), boot_id=REBOOT.boot_id, events=events)
    )
    assert check == "boot"
    assert "boot id changed although the TPM was neither reset nor restarted" in message


# continuity: root reset PCR 23 and wrote a history of its own (recorded)


def test_rewritten_history_is_locally_consistent() -> None:
    """What makes it an attack only continuity catches: the log replays to the PCR, and a
    verifier that had seen nothing of this host would trust it."""
    verify_against_pcr(REWRITTEN.events, CONTAINER_PCR, REWRITTEN.pcr_values[CONTAINER_PCR])
    assert [r.recnum for r in REWRITTEN.events] == [0, 1, 2, 3, 4, 5]
    assert run(REWRITTEN, HostState()).trusted


def test_rewritten_history_continuing_the_numbering_is_refused() -> None:
    state = attested(HONEST_BOOT)
    newer = [r for r in REWRITTEN.events if r.recnum > state.verified_recnum]
    result = run(REWRITTEN, state, events=newer)
    check, message = reason(result)
    assert check == "event_log"
    assert "replayed from record 4 (the last verified one) does not reach the quoted PCR" in message
    replayed = pcr_after(digests([*THREE.events, *FIVE.events, *newer]))
    assert result.reasons[0].got == replayed.hex()


def test_rewritten_history_sent_whole_is_refused() -> None:
    check, message = reason(run(REWRITTEN, attested(HONEST_BOOT)))
    assert check == "event_log"
    assert "do not continue the last verified record" in message


# a new epoch starts from record 0


def test_new_epoch_continuing_the_old_numbering_is_refused() -> None:
    (q,) = REBOOT.quotes
    renumbered = [replace(r, recnum=r.recnum + 5) for r in q.events]
    result = run(q, attested(HONEST_BOOT), events=renumbered)
    check, message = reason(result)
    assert check == "event_log"
    assert "do not continue the last verified record" in message
    assert (result.reasons[0].expected, result.reasons[0].got) == ("record 0", "record 5")


def test_old_epoch_log_presented_in_a_new_epoch_is_refused() -> None:
    (q,) = REBOOT.quotes
    old = [*THREE.events, *FIVE.events]
    check, message = reason(run(q, attested(HONEST_BOOT), boot_id=REBOOT.boot_id, events=old))
    assert check == "event_log"
    assert "record 0 belongs to another boot" in message
    # claimed as the old boot's, continued: the epoch moved without a reboot
    check, message = reason(run(q, attested(HONEST_BOOT), boot_id=BOOT.boot_id, events=old))
    assert check == "clock"
    assert "under a running host" in message


def test_new_epoch_with_its_records_withheld_is_refused() -> None:
    (q,) = REBOOT.quotes
    check, message = reason(run(q, attested(HONEST_BOOT), events=[]))
    assert check == "event_log"
    assert "replayed from an empty PCR" in message


# epochs: a new one only with a reboot (tests for the confirmed attack: a TPM reset or restart
# under a running host looked like a reboot)


def _as_if_not_rebooted(state: HostState, epoch: Epoch) -> HostState:
    """``state`` as if the host had already had ``epoch``'s boot id when it was verified."""
    return replace(state, boot_id=epoch.boot_id)


@pytest.mark.parametrize(
    ("before", "epoch", "what", "moved"),
    [
        (HONEST_BOOT, REBOOT, "reset", "resetCount 2 -> 3, restartCount 0 -> 0"),
        ((REBOOT.quotes[0],), RESTART, "restarted", "resetCount 3 -> 3, restartCount 0 -> 1"),
    ],
    ids=["reset", "restart"],
)
def test_new_epoch_with_the_same_boot_id_is_refused(
    before: Sequence[RecordedQuote], epoch: Epoch, what: str, moved: str
) -> None:
    """The same evidence, with the boot id the verifier saw before, is a TPM reset or restart
    under a running host: refused, and the verified state (the old epoch) kept."""
    (q,) = epoch.quotes
    verified = attested(before)
    assert run(q, verified).trusted  # with the boot id changed it was a reboot
    state = _as_if_not_rebooted(verified, epoch)
    result = run(q, state)
    check, message = reason(result)
    assert check == "clock"
    assert f"the TPM was {what} under a running host: a new TPM epoch ({moved})" in message
    assert "the host stays untrusted until it reboots" in message
    assert result.reasons[0].expected == "a new boot id with a new TPM epoch (a reboot)"
    assert result.reasons[0].got == f"boot id {epoch.boot_id}, the one verified in the epoch before"


def test_host_reset_under_it_stays_untrusted_until_it_reboots() -> None:
    """The verified state stays in the old epoch, so every quote of the new one is refused
    again; a reboot (new boot id, new epoch, log from record 0) is trusted."""
    (q,) = REBOOT.quotes
    state = _as_if_not_rebooted(attested(HONEST_BOOT), REBOOT)
    for _ in range(2):
        assert reason(run(q, state))[0] == "clock"
    (rebooted,) = CRASH.quotes
    result = run(rebooted, state)
    assert [r.check for r in result.reasons] == ["clock"]  # only safe=0: it lost power
    assert result.reasons[0].got == "safe=0"
    assert result.state is not None
    assert result.state.boot_id == CRASH.boot_id
    assert (result.state.reset_count, result.state.restart_count) == counts(rebooted)
    assert [r.recnum for r in rebooted.events] == [0]
    assert result.state.verified_recnum == 0


def test_honest_reboot_is_trusted_from_record_0_of_the_new_boot() -> None:
    state = attested(HONEST_BOOT)
    (q,) = REBOOT.quotes
    assert q.after == -1 and [r.recnum for r in q.events] == [0, 1]
    assert all(r.event.boot_id == REBOOT.boot_id for r in q.events)
    assert counts(q)[0] > counts(FIVE)[0]
    result = run(q, state)
    assert result.trusted
    assert result.state is not None
    assert (result.state.boot_id, result.state.verified_recnum) == (REBOOT.boot_id, 1)


# the clock within one epoch


def test_clock_going_backwards_within_an_epoch_is_refused() -> None:
    """A quote from before one already verified in this epoch (evidence held back, or a TPM
    state rolled back within the epoch): THREE's clock is below FIVE's."""
    assert clock(THREE) < clock(FIVE)
    state = attested([EMPTY])
    assert run(THREE, state).trusted
    result = run(THREE, replace(state, clock=clock(FIVE)))
    check, message = reason(result)
    assert check == "clock"
    assert "the TPM clock went backwards within one epoch" in message
    assert (result.reasons[0].expected, result.reasons[0].got) == (
        f">= {clock(FIVE)} ms",
        f"{clock(THREE)} ms",
    )


def test_clock_standing_still_within_an_epoch_is_accepted() -> None:
    """The clock counts milliseconds: two quotes can fall in the same one."""
    assert run(THREE, replace(attested([EMPTY]), clock=clock(THREE))).trusted


def test_clock_is_compared_only_within_an_epoch() -> None:
    """Across a TPM reset the clock may go back (after a power loss it restarts from its last
    save, with safe=0), so a new epoch is not held to the old epoch's clock."""
    (q,) = CRASH.quotes
    state = replace(attested([RESTART.quotes[0]]), clock=clock(q) + 10**6)
    result = run(q, state)
    assert [(r.check, r.got) for r in result.reasons] == [("clock", "safe=0")]
    assert result.state is not None
    assert result.state.clock == clock(q)
