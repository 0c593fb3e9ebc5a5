"""What a verdict carries over (a hold) and what a host may see of it: pure, no server."""

from __future__ import annotations

import pytest

from trusthook.attest.appraise import HostState
from trusthook.attest.verdict import Reason
from trusthook.server.trust import Hold, carry_hold, for_host

EVENT_LOG = Reason(
    check="event_log", message="the log does not reach the PCR", expected="a", got="b"
)
CLOCK = Reason(check="clock", message="the reset count went backwards", expected=">= 5", got="4")
GOLDEN = Reason(check="golden_pcr", message="PCR 0 is not known-good", expected="ab", got="cd")
NONCE = Reason(check="nonce", message="the nonce was already used (a replay)")


def state(reset: int, restart: int = 0) -> HostState:
    return HostState(reset_count=reset, restart_count=restart, boot_id="b", verified_recnum=3)


def test_nothing_held_and_nothing_failed() -> None:
    assert carry_hold(reasons=(), state=state(1), epoch=(1, 0), hold=None, now=10.0) == ((), None)
    assert carry_hold(reasons=(GOLDEN,), state=state(1), epoch=(1, 0), hold=None, now=10.0) == (
        (GOLDEN,),
        None,
    )


@pytest.mark.parametrize("failed", [EVENT_LOG, CLOCK])
def test_a_held_check_starts_a_hold_in_the_quoted_epoch(failed: Reason) -> None:
    reasons, hold = carry_hold(reasons=(failed,), state=None, epoch=(2, 1), hold=None, now=10.0)
    assert reasons == (failed,)
    assert hold == Hold(reasons=(failed,), epoch=(2, 1), since=10.0)


def test_passing_attestations_in_the_same_epoch_stay_untrusted() -> None:
    hold = Hold(reasons=(EVENT_LOG,), epoch=(2, 0), since=10.0)
    reasons, kept = carry_hold(reasons=(), state=state(2), epoch=(2, 0), hold=hold, now=20.0)
    assert kept is hold
    (shown,) = reasons
    assert (shown.check, shown.expected, shown.got) == ("event_log", "a", "b")
    assert shown.message.startswith(EVENT_LOG.message) and "held since" in shown.message
    assert "trusthook server hosts clear" in shown.message


def test_an_accepted_appraisal_in_a_later_epoch_lifts_the_hold() -> None:
    hold = Hold(reasons=(EVENT_LOG,), epoch=(2, 0), since=10.0)
    assert carry_hold(reasons=(), state=state(3), epoch=(3, 0), hold=hold, now=20.0) == ((), None)
    # a restart is a new epoch too; the golden PCR failing is no held check
    reasons, lifted = carry_hold(
        reasons=(GOLDEN,), state=state(2, 1), epoch=(2, 1), hold=hold, now=20.0
    )
    assert (reasons, lifted) == ((GOLDEN,), None)


def test_an_appraisal_that_established_nothing_keeps_the_hold() -> None:
    hold = Hold(reasons=(EVENT_LOG,), epoch=(2, 0), since=10.0)
    reasons, kept = carry_hold(reasons=(NONCE,), state=None, epoch=(2, 0), hold=hold, now=20.0)
    assert kept is hold
    assert [r.check for r in reasons] == ["nonce", "event_log"]


def test_a_held_check_failing_again_is_reported_once_as_it_failed_now() -> None:
    hold = Hold(reasons=(EVENT_LOG, CLOCK), epoch=(2, 0), since=10.0)
    again = Reason(check="event_log", message="record 4 was altered")
    reasons, renewed = carry_hold(reasons=(again,), state=None, epoch=(2, 0), hold=hold, now=20.0)
    assert [r.check for r in reasons] == ["event_log", "clock"]
    assert reasons[0] == again and "held since" in reasons[1].message
    assert renewed == Hold(reasons=(again, CLOCK), epoch=(2, 0), since=10.0)


def test_a_held_check_failing_in_another_epoch_starts_over_there() -> None:
    hold = Hold(reasons=(EVENT_LOG,), epoch=(2, 0), since=10.0)
    reasons, moved = carry_hold(reasons=(CLOCK,), state=None, epoch=(3, 0), hold=hold, now=20.0)
    assert reasons == (CLOCK,)
    assert moved == Hold(reasons=(CLOCK,), epoch=(3, 0), since=20.0)


def test_a_hold_round_trips_and_refuses_what_is_not_one() -> None:
    hold = Hold(reasons=(EVENT_LOG,), epoch=(None, None), since=1.5)
    assert Hold.from_json(hold.to_json()) == hold
    for bad in (
        None,
        {"reasons": "x"},
        {**hold.to_json(), "reset_count": "1"},
        {**hold.to_json(), "since": True},
        {**hold.to_json(), "reasons": [{"message": "no check"}]},
    ):
        with pytest.raises(ValueError, match="hold|reason"):
            Hold.from_json(bad)


def test_a_host_sees_its_checks_but_not_the_golden_values() -> None:
    seen = for_host(GOLDEN)
    assert (seen.check, seen.expected, seen.got) == ("golden_pcr", None, "cd")
    assert "shown to operators only" in seen.message
    for reason in (EVENT_LOG, CLOCK, NONCE):
        assert for_host(reason) is reason
