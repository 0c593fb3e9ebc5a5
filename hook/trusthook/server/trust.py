"""What a verdict carries over, and what of it a host may see.

A **hold**: a failed ``event_log`` or ``clock`` check means the host's log or TPM cannot be
believed for the rest of that TPM epoch, and a ``workload`` violation the policy says untrusts
(docs/policy.md §5) may still be running, so each holds the host untrusted until an appraisal
accepts evidence from a later epoch (the TPM was reset or restarted: a reboot) or an operator
clears the host (``trusthook server hosts clear``). A passing attestation in the same epoch
does not lift it, and neither does re-enrollment.

**The host's view**: a host reading its own verdict sees each check and its message, but not
the group's golden values (another host could use them to aim its evidence); operators see
everything.

Pure: reasons and states in, reasons and holds out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from trusthook.attest.appraise import HostState
from trusthook.attest.verdict import Reason
from trusthook.common.clock import iso_from_timestamp

HELD_CHECKS = frozenset({"event_log", "clock", "workload"})
# Checks whose ``expected`` is the operator's golden data, not the host's own values.
_OPERATOR_VALUES = frozenset({"golden_pcr"})

Epoch = tuple[int | None, int | None]  # (resetCount, restartCount)


def epoch_of(state: HostState) -> Epoch:
    return (state.reset_count, state.restart_count)


@dataclass(frozen=True, slots=True, kw_only=True)
class Hold:
    """The held checks as they failed, the TPM epoch they failed in, and since when."""

    reasons: tuple[Reason, ...]
    epoch: Epoch
    since: float

    def shown(self) -> tuple[Reason, ...]:
        """The held reasons as a verdict reports them while a later attestation passes."""
        note = (
            f" (held since {iso_from_timestamp(self.since)}: the host stays untrusted until its"
            " TPM starts a new epoch, a reboot, or an operator clears it with 'trusthook"
            " server hosts clear')"
        )
        return tuple(replace(r, message=r.message + note) for r in self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {
            "reasons": [r.to_json() for r in self.reasons],
            "reset_count": self.epoch[0],
            "restart_count": self.epoch[1],
            "since": self.since,
        }

    @classmethod
    def from_json(cls, data: Any) -> Hold:
        """A hold as stored; ValueError if it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("reasons"), list):
            raise ValueError("a hold must be an object with a list of reasons")
        counts = (data.get("reset_count"), data.get("restart_count"))
        if not all(c is None or type(c) is int for c in counts):
            raise ValueError("a hold's reset_count and restart_count must be integers or null")
        since = data.get("since")
        if not isinstance(since, int | float) or isinstance(since, bool):
            raise ValueError("a hold's since must be a time")
        return cls(
            reasons=tuple(Reason.from_json(r) for r in data["reasons"]),
            epoch=(counts[0], counts[1]),
            since=float(since),
        )


def carry_hold(
    *,
    reasons: tuple[Reason, ...],
    state: HostState | None,
    epoch: Epoch,
    hold: Hold | None,
    now: float,
) -> tuple[tuple[Reason, ...], Hold | None]:
    """The verdict's reasons and the hold after an appraisal.

    ``reasons`` and ``state`` are the appraisal's (``state`` None: it established nothing),
    ``epoch`` the TPM epoch the evidence was quoted in (the stored one if the quote did not
    verify), ``hold`` the stored hold. An appraisal with no held check failing that moved the
    state into another epoch than the hold's lifts it; a held check failing in another epoch
    starts a new hold there. Otherwise the hold stays and takes in what failed now, and its
    reasons join the verdict's (a check that failed again is reported as it failed now)."""
    failed = tuple(r for r in reasons if r.check in HELD_CHECKS)
    if hold is not None and not failed and state is not None and epoch_of(state) != hold.epoch:
        hold = None
    if hold is not None and failed and epoch != hold.epoch:
        hold = None
    checks = {r.check for r in reasons}
    kept = () if hold is None else tuple(r for r in hold.reasons if r.check not in checks)
    shown = () if hold is None else tuple(r for r in hold.shown() if r.check not in checks)
    if failed:
        since = now if hold is None else hold.since
        return reasons + shown, Hold(reasons=failed + kept, epoch=epoch, since=since)
    return reasons + shown, hold


def for_host(reason: Reason) -> Reason:
    """``reason`` as the host itself may read it: without the operator's golden values."""
    if reason.check not in _OPERATOR_VALUES or reason.expected is None:
        return reason
    return replace(
        reason,
        message=reason.message + " (the known-good values are shown to operators only)",
        expected=None,
    )
