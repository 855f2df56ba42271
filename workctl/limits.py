"""Every bound on a number that comes from outside, in one place: the command line, the HTTP API, the
config file and the library all check against these, so a huge or negative value is a clear error
(exit 2 or 5) and never an overflow deep inside (invariant 10: everything from outside is bounded)."""

from __future__ import annotations

from .errors import Invalid, Usage

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


MAX_NAME_CHARS = 200                    # ids, agent names, idempotency keys, lease tokens, token names
MAX_TEXT_CHARS = 10_000                 # reasons and error messages kept in the audit trail


def checked_name(value: str | None, name: str) -> str | None:
    """A one-line identifier from outside (None passes: the caller's default applies): non-empty, at most
    MAX_NAME_CHARS, printable — no control character, newline or escape sequence, which would forge
    lines or colours wherever it is shown later (a log, a terminal, a CSV)."""
    if value is None:
        return None
    if not value or len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise Usage(f"{name} must be 1 to {MAX_NAME_CHARS} printable characters (no control characters or "
                    f"newlines), not {_shown(value)}")
    return value


def checked_text(value: str | None, name: str) -> str | None:
    """Free text from outside (a reason, an error): non-empty, at most MAX_TEXT_CHARS, and no control
    character other than newline and tab."""
    if value is None:
        return None
    if not value or len(value) > MAX_TEXT_CHARS or not value.replace("\n", " ").replace("\t", " ").isprintable():
        raise Usage(f"{name} must be 1 to {MAX_TEXT_CHARS} characters of text (newlines and tabs allowed, no "
                    f"other control characters), not {_shown(value)}")
    return value


def _shown(value: str) -> str:
    return "an empty string" if not value else f"{len(value)} characters starting {value[:20]!r}"


def clean_text(value: str) -> str:
    """Text workctl composes from what others sent (a command's stderr, a source's error) made fit for
    ``checked_text``: control characters other than newline and tab replaced, cut at MAX_TEXT_CHARS."""
    kept = "".join(c if c in "\n\t" or c.isprintable() else "\ufffd" for c in value[:MAX_TEXT_CHARS])
    return kept or "(no message)"
