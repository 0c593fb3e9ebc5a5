"""What ``trusthook doctor`` reports: one ``Check`` per line and the ``Report`` around them,
with the ``--json`` form fleet tooling reads (docs/deploy.md, "doctor --json"):

    {"version": 1, "ready": true,
     "checks": [{"name": "tpm", "status": "ok", "ok": true, "detail": "…", "fix": null}, …]}

``status`` is ``ok``, ``warn`` (works, but a support engineer would mention it), ``fail`` (the
host is not ready) or ``skip`` (could not run because an earlier check failed; ``detail`` says
which). ``ok`` is true for ``ok`` and ``warn``. ``ready`` is true when no check failed. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Self

from trusthook.common.jsonread import Fields, Message, Source, parse_message, show
from trusthook.errors import InputError

REPORT_VERSION = 1
FROM_DOCTOR = Source(owner="trusthook doctor's", error=InputError)


class Status(Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True, kw_only=True)
class Check(Message):
    """One check's outcome: what it found (``detail``) and, unless it is ok, what to do."""

    NOUN = "check"
    SOURCE = FROM_DOCTOR

    name: str
    status: Status
    detail: str
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in (Status.OK, Status.WARN)

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        raw = fields.text("status")
        try:
            status = Status(raw)
        except ValueError:
            raise fields.refuse("status", show(raw), "ok, warn, fail or skip") from None
        check = cls(
            name=fields.text("name", empty=False),
            status=status,
            detail=fields.text("detail"),
            fix=fields.optional_text("fix"),
        )
        if fields.flag("ok") != check.ok:
            raise fields.refuse("ok", show(not check.ok), f"{show(check.ok)} for status {raw}")
        return check

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "ok": self.ok,
            "detail": self.detail,
            "fix": self.fix,
        }

    def line(self, width: int) -> str:
        """The check as one line of text: status, name, detail, and the fix after a dash."""
        fix = f" -- fix: {self.fix}" if self.fix and self.status is not Status.OK else ""
        label = self.status.value.upper() if self.status is Status.FAIL else self.status.value
        return f"{label:<5} {self.name:<{width}} {' '.join(self.detail.split())}{fix}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Report(Message):
    """Every check, in the order they ran, and whether the host is ready (none failed)."""

    NOUN = "report"
    SOURCE = FROM_DOCTOR

    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        return all(c.status is not Status.FAIL for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status is Status.FAIL)

    @classmethod
    def _read(cls, fields: Fields) -> Self:
        fields.integer("version", range(REPORT_VERSION, REPORT_VERSION + 1))
        report = cls(
            checks=fields.array(
                "checks",
                lambda item, at: parse_message(Check, item, cls.NOUN, fields.source, at),
                "an array of checks",
            )
        )
        if fields.flag("ready") != report.ready:
            raise fields.refuse("ready", show(not report.ready), "what the checks say")
        return report

    def to_json(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "ready": self.ready,
            "checks": [c.to_json() for c in self.checks],
        }

    def text(self) -> str:
        """One line per check, then one saying whether the host is ready."""
        width = max((len(c.name) for c in self.checks), default=0)
        lines = [c.line(width) for c in self.checks]
        failed = len(self.failed)
        lines.append(
            "ready: this host can run measured containers"
            if self.ready
            else f"NOT READY: {failed} check{'s' if failed != 1 else ''} failed"
        )
        return "\n".join(lines)
