"""Field-level provenance and conflict policies for ``user.data.sync`` (the seed's variation 3).

Three things live here:

* ``FieldPlan``: what ``apply`` does beyond "write what differs": per-field policies (``overwrite``,
  ``fill_empty``, ``skip_if_newer``) and the optional ``<field>_updated_from`` / ``<field>_updated_at``
  columns on ``users`` (added on first need, inside the apply transaction in the target database).
* ``record_applied``: one ``provenance`` row per applied change, plus a ``schema_changed`` event when
  the apply added columns, in the store transaction that completes the order.
* ``history``: a user's recorded values, oldest first (``workctl why``).

Conflict policy times (``skip_if_newer``):

* the *fetch time* of a user's data is the ``fetched_at`` its item's result carries (``workctl sync``
  sets it to the moment the batch's fetch started), else the time the item was submitted;
* the *local change time* of a field is the latest of ``<field>_updated_at`` and ``users.updated_at``,
  among those columns that exist and are not NULL/empty; a field with neither is written;
* the field is skipped when the local change time is later than the fetch time. A local time that
  cannot be read as a time (ISO-8601, or a number of Unix seconds) counts as later: unknown local
  changes are kept, never overwritten. Times without a zone are taken as UTC.

Column names only reach SQL after they are found in ``pragma_table_info('users')`` and are quoted.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from ...core.lifecycle import Actor, append_event
from ...core.session import Session
from ...jsonio import loads
from ...store.target import quote, user_columns
from .fields import AT_SUFFIX, FROM_SUFFIX

POLICIES = ("overwrite", "fill_empty", "skip_if_newer")
ROW_UPDATED_AT = "updated_at"
REVERT_SOURCE = "revert"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Unreadable:
    """A local change time that is not a time: compares as later than any fetch."""


UNREADABLE = _Unreadable()


def parse_time(value: Any) -> datetime | _Unreadable | None:
    """ISO-8601 text (``Z``, offsets, a space instead of ``T``) or Unix seconds → aware datetime.
    None/'' → None (no time recorded); anything else → UNREADABLE."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return UNREADABLE
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, timezone.utc)
        except (OverflowError, OSError, ValueError):
            return UNREADABLE
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            return UNREADABLE
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return UNREADABLE


def check_payload(payload: Mapping[str, Any], fields: Iterable[str]) -> list[dict[str, str]]:
    """Problems with ``policies`` beyond the schema: every policy must name one of the order's fields."""
    wanted = set(fields)
    return [{"path": f"policies.{name}",
             "message": f"'{name}' is not one of the order's fields ({', '.join(sorted(wanted))})"}
            for name in (payload.get("policies") or {}) if name not in wanted]


@dataclass
class FieldPlan:
    """Policies and provenance columns for one apply. ``extra_columns`` are read after the fields."""

    fields: list[str]
    policies: dict[str, str]
    want_columns: bool                      # the order asked for provenance columns
    existing: set[str]                      # columns of users, lower-cased (SQLite names are case-insensitive)
    source: str
    now: str
    fetch_times: dict[int, datetime | _Unreadable | None] = field(default_factory=dict)
    extra_columns: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    added: list[str] = field(default_factory=list)
    planned_additions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._position = {name: i for i, name in enumerate(self.fields)}

    @classmethod
    def build(cls, conn: sqlite3.Connection, payload: Mapping[str, Any], fields: list[str],
              items: Iterable[Mapping[str, Any]], *, now: str | None) -> FieldPlan:
        policies = {f: p for f, p in (payload.get("policies") or {}).items() if f in fields and p != "overwrite"}
        plan = cls(fields=fields, policies=policies, want_columns=bool(payload.get("provenance_columns")),
                   existing={c.lower() for c in user_columns(conn)}, source=str(payload.get("source")),
                   now=now or utc_now())
        newer = [f for f, p in policies.items() if p == "skip_if_newer"]
        if newer:
            for f in newer:
                if plan.has(f + AT_SUFFIX):
                    plan.extra_columns.append(f + AT_SUFFIX)
            if ROW_UPDATED_AT in plan.existing:
                plan.extra_columns.append(ROW_UPDATED_AT)
            for item in items:
                result = item.get("result") or {}
                fetched = parse_time(result.get("fetched_at") or item.get("submitted_at"))
                for entry in result.get("synced_users", []):
                    plan.fetch_times[entry["user_id"]] = fetched
        return plan

    def has(self, column: str) -> bool:
        return column.lower() in self.existing

    @property
    def active(self) -> bool:
        return bool(self.policies)

    def keep(self, user_id: int, row: tuple[Any, ...], changed: dict[str, Any]) -> dict[str, Any]:
        """The changes the policies allow; every refused one is counted under its policy."""
        kept = {}
        base = len(self.fields)
        for name, value in changed.items():
            policy = self.policies.get(name)
            if policy == "fill_empty":
                current = row[self._position[name]]
                if current is not None and current != "":
                    self.skipped[policy] += 1
                    continue
            elif policy == "skip_if_newer" and self._newer_locally(user_id, name, row, base):
                self.skipped[policy] += 1
                continue
            kept[name] = value
        return kept

    def _newer_locally(self, user_id: int, name: str, row: tuple[Any, ...], base: int) -> bool:
        local: list[datetime] = []
        for column in (name + AT_SUFFIX, ROW_UPDATED_AT):
            if column in self.extra_columns:
                moment = parse_time(row[base + self.extra_columns.index(column)])
                if moment is UNREADABLE:
                    return True
                if moment is not None:
                    local.append(moment)  # type: ignore[arg-type]
        if not local:
            return False  # no local change time recorded: nothing to protect
        fetched = self.fetch_times.get(user_id)
        if fetched is None or fetched is UNREADABLE:
            return True   # cannot tell when the data was fetched: keep the local value
        return max(local) > fetched  # type: ignore[operator]

    # -- provenance columns ----------------------------------------------------------------------
    def _stamped(self, name: str) -> bool:
        return self.want_columns or self.has(name + FROM_SUFFIX) or self.has(name + AT_SUFFIX)

    def ensure_columns(self, conn: sqlite3.Connection, changed_fields: Iterable[str], *, dry_run: bool) -> None:
        """Add the missing provenance columns of the changed fields (only for an order that asked)."""
        if not self.want_columns:
            return
        for name in sorted(set(changed_fields)):
            for column in (name + FROM_SUFFIX, name + AT_SUFFIX):
                if self.has(column):
                    continue
                if not dry_run:
                    conn.execute(f"ALTER TABLE users ADD COLUMN {quote(column)} TEXT")
                    self.existing.add(column.lower())
                    self.added.append(column)
                elif column not in self.planned_additions:
                    self.planned_additions.append(column)

    def stamps(self, names: Iterable[str]) -> tuple[str, list[Any]]:
        """Extra ``SET`` assignments (and their values) that stamp source and time on changed fields."""
        clause, values = [], []
        for name in names:
            if not self._stamped(name):
                continue
            if self.has(name + FROM_SUFFIX):
                clause.append(f", {quote(name + FROM_SUFFIX)} = ?")
                values.append(self.source)
            if self.has(name + AT_SUFFIX):
                clause.append(f", {quote(name + AT_SUFFIX)} = ?")
                values.append(self.now)
        return "".join(clause), values

    def report(self, diff: dict[str, Any]) -> dict[str, Any]:
        """Add what the plan did to the diff: skipped counts (only for orders with policies) and the
        columns added (or, in a dry run, that would be added)."""
        if self.policies:
            diff["stats"]["skipped"] = sum(self.skipped.values())
            diff["skipped_by_policy"] = {p: self.skipped.get(p, 0) for p in sorted(set(self.policies.values()))}
        columns = self.added or self.planned_additions
        if columns:
            diff["schema_changes"] = [{"table": "users", "add_column": c, "type": "TEXT"} for c in columns]
        return diff


# -- the store side ------------------------------------------------------------------------------
def record_applied(store: sqlite3.Connection, order: Mapping[str, Any], items: list[dict[str, Any]],
                   diff: Mapping[str, Any], now: str) -> int:
    """Provenance rows for every change of the diff (and the schema-change event); returns the rows."""
    if diff.get("schema_changes"):
        append_event(store, now=now, actor=Actor.system(), event="schema_changed", entity="order",
                     order_id=order["id"], payload={"database": "target", "table": "users",
                                                    "added_columns": [c["add_column"] for c in diff["schema_changes"]]})
    changes = diff.get("changes") or []
    if not changes:
        return 0
    owner: dict[int, tuple[str, str | None]] = {}
    for item in items:
        for entry in (item.get("result") or {}).get("synced_users", []):
            owner[entry["user_id"]] = (item["id"], item.get("submitted_by"))
    source = (order.get("payload") or {}).get("source")
    unknown = (None, None)
    # SQLite's json_quote encodes old/new (in C: this runs once per change of a possibly huge order).
    store.executemany(
        "INSERT INTO provenance (user_id, field, old, new, source, order_id, item_id, agent, applied_at) "
        "VALUES (?, ?, json_quote(?), json_quote(?), ?, ?, ?, ?, ?)",
        ((c["user_id"], c["field"], c["old"], c["new"], source, order["id"], *owner.get(c["user_id"], unknown), now)
         for c in changes))
    return len(changes)


def same_value(stored: Any, written: Any) -> bool:
    """Whether a value read back from users is the one written (a TEXT column turns 49 into '49')."""
    if stored == written:
        return True
    return stored is not None and written is not None and not isinstance(written, bool) and str(stored) == str(written)


def _value(text: str | None) -> Any:
    return None if text is None else loads(text)


def history(s: Session, user_id: int, field_name: str | None = None) -> dict[str, Any]:
    """Every recorded value of the user's fields, oldest first, and the values the users table holds now."""
    sql = ("SELECT id, field, old, new, source, order_id, item_id, agent, applied_at, reverted_by "
           "FROM provenance WHERE user_id = ?")
    params: list[Any] = [user_id]
    if field_name is not None:
        sql += " AND field = ?"
        params.append(field_name)
    entries = []
    for row in s.conn.execute(sql + " ORDER BY id", params):
        reverting = row[4] == REVERT_SOURCE
        entries.append({"field": row[1], "value": _value(row[3]), "old": _value(row[2]), "set_at": row[8],
                        "order_id": row[5], "source": row[4], "item_id": row[6], "agent": row[7],
                        "kind": "revert" if reverting else "sync", "reverted_by": row[9]})
    fields = [field_name] if field_name is not None else sorted({e["field"] for e in entries})
    current = _current_values(s, user_id, fields)
    summary = {}
    for name in fields:
        mine = [e for e in entries if e["field"] == name]
        last = mine[-1]["value"] if mine else None
        known = name in current["values"]
        summary[name] = {"current": current["values"].get(name), "last_recorded": last,
                         "changes": len(mine),
                         # the value now differs from the last one workctl wrote: changed outside workctl
                         "changed_outside": bool(mine) and known and not same_value(current["values"][name], last)}
    return {"user_id": user_id, "field": field_name, "exists_locally": current["exists"],
            "fields": summary, "history": entries}


def _current_values(s: Session, user_id: int, fields: list[str]) -> dict[str, Any]:
    try:
        with s.target() as target:
            columns = set(user_columns(target))
            readable = [f for f in fields if f in columns]
            if not columns:
                return {"exists": False, "values": {}}
            select = ", ".join(["id", *(quote(f) for f in readable)])
            row = target.execute(f"SELECT {select} FROM users WHERE id = ?", (user_id,)).fetchone()
    except sqlite3.Error:
        return {"exists": False, "values": {}}
    if row is None:
        return {"exists": False, "values": {}}
    return {"exists": True, "values": dict(zip(readable, row[1:], strict=True))}
