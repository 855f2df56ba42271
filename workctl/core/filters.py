"""Filter options (``--state``, ``--type``, ``--class``, ``--source``) are checked against the values that can
occur: an unknown one is a usage error (exit 2) that lists the valid ones, never an empty, successful
listing (``orders --state submited`` must not look like "nothing submitted")."""

from __future__ import annotations

import re
from typing import Iterable

from ..errors import Usage

# The error classes workctl's own sync gives a failed user (sources/client.py, agents/sync.py), plus
# ``error`` for an agent's message without a class prefix; http_<status> covers the other 4xx/5xx.
ERROR_CLASSES = ("auth", "connection", "error", "malformed", "not_found", "rate_limited", "redirect",
                 "server_error", "timeout", "unverified", "bad_response")
_HTTP_CLASS = re.compile(r"^http_\d{3}$")


def check_choice(option: str, value: str | None, valid: Iterable[str], *, also: Iterable[str] = ()) -> None:
    """Raise Usage (invalid_choice) unless ``value`` is None or one of ``valid`` (``also``: values seen in the
    data, accepted but listed only when there are few)."""
    if value is None:
        return
    known = sorted(set(valid) | set(also))
    if value in known:
        return
    import difflib

    close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise Usage(f"{option} {value!r} is not a valid value{hint}; valid values: {', '.join(known)}",
                code="invalid_choice", details=[{"option": option, "value": value, "valid": known}])


def is_error_class(value: str) -> bool:
    return value in ERROR_CLASSES or bool(_HTTP_CLASS.match(value))
