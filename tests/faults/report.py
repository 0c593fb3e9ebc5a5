"""What a campaign found: runs, faults injected, violations, and counted outcomes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Report:
    """One campaign's tally. A *run* is one operation the campaign drove (a container start, an
    enrollment, a request); a *fault* one injected failure (a SIGKILL, an outage, a full
    volume); a *violation* one broken invariant, with the round it was seen in."""

    campaign: str
    seed: int
    rounds: int = 0
    runs: int = 0
    faults: int = 0
    violations: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def violation(self, round_: int, message: str) -> None:
        self.violations.append(f"round {round_}: {message}")

    def note(self, round_: int, message: str) -> None:
        self.notes.append(f"round {round_}: {message}")

    def merge(self, other: Report) -> None:
        """Add ``other``'s counts to this one (a campaign made of several parts)."""
        self.rounds += other.rounds
        self.runs += other.runs
        self.faults += other.faults
        self.violations += [f"{other.campaign}: {v}" for v in other.violations]
        self.outcomes.update(other.outcomes)
        self.notes += [f"{other.campaign}: {n}" for n in other.notes]

    def summary(self) -> str:
        lines = [
            f"campaign {self.campaign} (seed {self.seed}): {self.rounds} rounds, {self.runs} runs,"
            f" {self.faults} faults injected, {len(self.violations)} violations"
        ]
        if self.outcomes:
            lines.append("  outcomes:")
            lines += [f"    {name}: {count}" for name, count in sorted(self.outcomes.items())]
        if self.violations:
            lines.append("  violations:")
            lines += [f"    {v}" for v in self.violations]
        if self.notes:
            lines.append("  notes:")
            lines += [f"    {n}" for n in self.notes]
        return "\n".join(lines)
