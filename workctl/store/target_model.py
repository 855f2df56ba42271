"""What the target's backends and the engine share about ``users``: its name and key, how a column is
described, how a refused write is reported, and how identifiers are quoted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

USERS = "users"
ID = "id"


def quote(name: str) -> str:
    """An SQL identifier, double-quoted (only ever for names checked against the table's columns)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Column:
    name: str
    declared: str      # the declared type, as written in CREATE TABLE ('' when none)
    affinity: str      # how the column stores values: SQLite's affinity, or PostgreSQL's type category
    not_null: bool
    primary_key: bool


@dataclass
class Refusal:
    """One write the target refused: which user (the order's id), which fields, and the constraint."""

    user_id: Any
    fields: list[str]
    constraint: str

    def detail(self) -> dict[str, Any]:
        field = self.fields[0] if len(self.fields) == 1 else self.fields
        return {"path": f"user {self.user_id}, {', '.join(self.fields)}", "message": self.constraint,
                "user_id": self.user_id, "field": field, "constraint": self.constraint}
