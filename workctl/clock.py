"""Time, injected. The core never reads the wall clock itself; it calls a ``Clock``.

Timestamps are stored and printed as fixed-width UTC ISO-8601 strings with a ``Z`` suffix
(``2026-11-28T15:10:42.123456Z``), so they compare correctly as text inside SQLite indexes.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Callable

from .errors import Usage

Clock = Callable[[], datetime]

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def system_clock() -> datetime:
    return datetime.now(timezone.utc)


def fixed_clock(at: datetime) -> Clock:
    return lambda: at


class ManualClock:
    """A clock tests move by hand: ``clock.advance(seconds=601)`` instead of sleeping."""

    def __init__(self, start: datetime | str = "2026-01-01T00:00:00Z"):
        self.now = parse(start) if isinstance(start, str) else start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now = self.now + timedelta(seconds=seconds)


PINNED_YEARS = (1970, 9000)


def clock_from_env() -> Clock:
    """``WORKCTL_NOW`` pins the time (like faketime), so process-level tests need no sleeps."""
    pinned = os.environ.get("WORKCTL_NOW")
    if pinned:
        try:
            moment = parse(pinned)
            # Leases, retention and backoffs add up to a century to "now": a year outside this range would
            # overflow a date deep inside an operation instead of being refused here.
            if not PINNED_YEARS[0] <= moment.year <= PINNED_YEARS[1]:
                raise ValueError(moment.year)
            return fixed_clock(moment)
        except (ValueError, OverflowError):
            raise Usage(f"WORKCTL_NOW={pinned[:40]!r} is not an ISO-8601 time from 1970 to 9000 (e.g. 2026-01-01T00:00:00Z); "
                        "unset it to use the real clock") from None
    return system_clock


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(_FORMAT)


def parse(text: str) -> datetime:
    """An ISO-8601 time as an aware UTC datetime (no zone: UTC); ValueError when it is not one."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def after(moment: datetime, seconds: float) -> str:
    return iso(moment + timedelta(seconds=seconds))
