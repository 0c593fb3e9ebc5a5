"""The one timestamp format: RFC 3339 in UTC with microseconds and ``Z``, e.g.
``2026-12-01T19:53:20.123456Z`` (event records, status files, the server's answers).
Standard library only."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """``moment`` (timezone-aware) in the one format."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def iso_from_timestamp(seconds: float) -> str:
    """A POSIX timestamp in the one format."""
    return iso(datetime.fromtimestamp(seconds, UTC))
