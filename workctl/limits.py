"""Every bound on a number that comes from outside, in one place: the command line, the HTTP API, the
config file and the library all check against these, so a huge or negative value is a clear error
(exit 2 or 5) and never an overflow deep inside (invariant 10: everything from outside is bounded)."""

from __future__ import annotations

from .errors import Invalid

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TTL_SECONDS = 30 * 86400            # a lease of at most 30 days
PRIORITY_MIN, PRIORITY_MAX = -1_000_000, 1_000_000
MAX_LIST_LIMIT = 1_000_000              # rows a listing may ask for at once
MAX_DAYS = 36_500                       # retention settings: at most a century
MAX_SECONDS = 10 * 365 * 86400          # backoffs, timeouts, dead-letter delays: at most ten years


def bounded_int(value: object, name: str, low: int, high: int) -> int:
    """``value`` as an int within [low, high], or Invalid (exit 5) naming ``name`` and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"{name} must be an integer from {low} to {high}, not {str(value)[:40]}", code="invalid")
    return value
