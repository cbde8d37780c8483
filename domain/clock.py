"""Clocks injected into the domain and the ledger: time is a parameter, not a global."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the current time as an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """The host's clock, always read in UTC whatever the process's time zone."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class AdjustableClock:
    """A clock that only moves forward: a fixed time, or the host's plus an offset.

    Used by tests and by the service's development clock, so that a scheduled
    destruction can complete without waiting days.
    """

    def __init__(self, start: datetime | None = None) -> None:
        if start is not None and start.utcoffset() is None:
            raise ValueError("start must be an aware datetime.")
        self._fixed = start.astimezone(UTC) if start is not None else None
        self._offset = timedelta()
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            base = self._fixed if self._fixed is not None else datetime.now(UTC)
            return base + self._offset

    def advance(self, delta: timedelta) -> datetime:
        """Move the clock forward by ``delta`` and return the new time."""
        if delta < timedelta():
            raise ValueError("The clock only moves forward.")
        with self._lock:
            self._offset += delta
        return self.now()

    def set(self, when: datetime) -> None:
        """Jump to ``when``; tests use this to step the clock in either direction."""
        with self._lock:
            self._fixed = when.astimezone(UTC)
            self._offset = timedelta()


def format_time(when: datetime) -> str:
    """Render an aware datetime as fixed-width UTC ISO 8601 with a ``Z`` suffix.

    The fixed width (always microseconds) makes the strings sort as times do.
    """
    if when.utcoffset() is None:
        raise ValueError("Times must carry an explicit offset.")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time that carries an explicit offset; refuse one without."""
    shown = text if len(text) <= 40 else text[:40] + "..."
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"Not an ISO 8601 time: {shown!r}.") from None
    if when.utcoffset() is None:
        raise ValueError(f"Time {shown!r} has no UTC offset; add 'Z' or '+00:00'.")
    try:
        return when.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"Time {shown!r} is out of range.") from None
