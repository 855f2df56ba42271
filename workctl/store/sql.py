"""Small SQL builders shared by the read paths. Column names come from code, never from input."""

from __future__ import annotations

from typing import Any


def where(**equals: Any) -> tuple[str, list[Any]]:
    """``WHERE a = ? AND b = ?`` for the keyword arguments that are not None ('' when none is), and
    the parameters in order: ``where(state="queued", type=None)`` → ``("WHERE state = ?", ["queued"])``."""
    given = [(column, value) for column, value in equals.items() if value is not None]
    if not given:
        return "", []
    return "WHERE " + " AND ".join(f"{column} = ?" for column, _ in given), [value for _, value in given]
