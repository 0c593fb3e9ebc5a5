"""Verdicts: trusted or not, and for each failed check a structured reason (docs/attestation.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trusthook.errors import AttestationError


@dataclass(frozen=True, slots=True, kw_only=True)
class Reason:
    """One failed check: which, what went wrong, and expected versus got where that applies."""

    check: str
    message: str
    expected: str | None = None
    got: str | None = None

    @classmethod
    def of(cls, error: AttestationError) -> Reason:
        return cls(check=error.check, message=error.message, expected=error.expected, got=error.got)

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "message": self.message,
            "expected": self.expected,
            "got": self.got,
        }

    @classmethod
    def from_json(cls, data: Any) -> Reason:
        if not isinstance(data, dict) or not isinstance(data.get("check"), str):
            raise ValueError("a reason must be an object with a string 'check'")
        fields = {k: data.get(k) for k in ("message", "expected", "got")}
        if not isinstance(fields["message"], str) or not all(
            v is None or isinstance(v, str) for v in fields.values()
        ):
            raise ValueError("a reason's message, expected and got must be strings")
        return cls(check=data["check"], **fields)  # type: ignore[arg-type]

    def __str__(self) -> str:
        text = f"{self.check}: {self.message}"
        if self.expected is not None or self.got is not None:
            text += f" (expected {self.expected}, got {self.got})"
        return text
