"""Field-level provenance and conflict policies for ``user.data.sync`` (the seed's variation 3).

Four things live here:

* ``source_times``: when each synced user's data is from at the source (its *source time*);
* ``FieldPlan``: what ``apply`` does beyond "write what differs": the per-field policies and the
  optional ``<field>_updated_from`` / ``<field>_updated_at`` columns on ``users``;
* ``record_applied``: one ``provenance`` row per applied change, with the value's source time, counting
  from the store transaction that completes the order (plus a ``schema_changed`` event when columns
  were added). A large order's rows are written before approve's lock (``stage``: 5,000 rows per
  transaction, under an attempt id) and made to count by that transaction with one row of
  ``provenance_attempts``; readers only see rows of committed attempts (``LIVE``), so the rule "an
  order is never completed without its provenance, and provenance never names an order that was not
  applied" holds while the lock is held for a moment instead of for 300,000 inserts;
* ``history``: a user's recorded values, oldest first, reverts included (``workctl why``).

**The rule: policies decide on the source's time of the data, never on when workctl applied it.**

* The *source time* of a user's incoming data is the ``updated_at`` of its synced entry (the source's
  own time for that record, when it sends one), else the ``fetched_at`` of its item's result
  (``workctl sync`` sets it to when the batch's fetch started), else the time the item was submitted.
* The time of the value a field *holds* is the source time of its last writer, as ``provenance``
  records it: when the latest provenance row of that user and field wrote the value the column still
  holds, its ``source_at``. (A revert's row carries the source time of the value it restored, or the
  revert's own time when that value came from outside workctl.) ``<field>_updated_at`` is stamped with
  the same source time, so it means the same thing in the table.
* A value workctl did not write is a *local* value. Its time is the latest of ``<field>_updated_at``
  and ``users.updated_at`` (those that exist and are set). When workctl wrote the field before and the
  value changed since, those columns must show a time after that write, or the local change's time is
  *unknown*. A local time that cannot be read is unknown too, and an unknown time counts as newer than
  any source: an unknown local change is kept, never overwritten. A local value without any time
  (no such columns) has nothing to protect it.

``skip_if_newer`` skips a field when the held value's time is later than the incoming source time.
``fill_empty`` writes only where the field is NULL or ``''`` — and not where a source emptied it at a
later source time than the incoming data's. ``overwrite`` (the default) writes whenever the value differs.

Example. Order A fetches a user's email at 09:00 (source time 09:00) and is approved at 09:10; order B
fetched the same user at 09:05 and is approved after A. With ``skip_if_newer`` B writes: the held
value's time is A's source time 09:00, earlier than B's 09:05; A's approve time (09:10) plays no part.
Approved the other way round (B first, then A), A is skipped: its 09:00 data is older than B's 09:05.
If the app then edits the email at 11:00 and sets ``email_updated_at`` (or ``updated_at``) to 11:00, an
order fetched at 10:00 leaves the edit alone, and one fetched at 11:30 overwrites it; if the app sets
neither, no later order with ``skip_if_newer`` overwrites the edit.

Column names only reach SQL after they are found in ``pragma_table_info('users')`` and are quoted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import Any, Iterable, Iterator, Mapping

from ...clock import iso
from ...core.ids import new_id
from ...core.lifecycle import Actor, append_event
from ...core.session import Session
from ...jsonio import dumps, loads
from ...store import target as targets
from ...store import write_tx
from ...store.target import StoredForm, same
from .fields import AT_SUFFIX, FROM_SUFFIX
from ...store.base import Connection

POLICIES = ("overwrite", "fill_empty", "skip_if_newer")
ROW_UPDATED_AT = "updated_at"
REVERT_SOURCE = "revert"
# A provenance row counts when it was written in the transaction that made it real (no attempt), or when
# the approve attempt that wrote it ahead of its transaction has committed (see ``stage``).
LIVE = ("(p.attempt IS NULL OR EXISTS (SELECT 1 FROM provenance_attempts a WHERE a.attempt = p.attempt "
        "AND a.committed_at IS NOT NULL))")
APPLIED_AT = ("coalesce((SELECT a.committed_at FROM provenance_attempts a WHERE a.attempt = p.attempt), "
              "p.applied_at)")
STAGE_ROWS = 5_000      # provenance rows per write transaction before approve's lock
STALE_ATTEMPT_S = 3600  # an uncommitted attempt this old belongs to an approve that died


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Unreadable:
    """A time that is not a time (or not known): compares as later than any source time."""


UNREADABLE = _Unreadable()
Moment = datetime | _Unreadable | None


def parse_time(value: Any) -> Moment:
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


def later(held: Moment, incoming: Moment) -> bool:
    """Is the held value's time later than the incoming data's? Unknown on either side: yes (keep)."""
    if held is None:
        return False
    if held is UNREADABLE or not isinstance(incoming, datetime):
        return True
    return held > incoming  # type: ignore[operator]


def check_payload(payload: Mapping[str, Any], fields: Iterable[str]) -> list[dict[str, str]]:
    """Problems with ``policies`` beyond the schema: every policy must name one of the order's fields."""
    wanted = set(fields)
    return [{"path": f"policies.{name}",
             "message": f"'{name}' is not one of the order's fields ({', '.join(sorted(wanted))})"}
            for name in (payload.get("policies") or {}) if name not in wanted]


# -- source times --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Origin:
    """Where a synced user's data came from: its source time (and as stored text) and the item and agent
    that carried it."""

    at: datetime | None
    at_text: str | None
    item_id: str | None
    agent: str | None


def source_times(items: Iterable[Mapping[str, Any]]) -> dict[Any, Origin]:
    """Every synced user's origin (a later item wins, like its data). One Origin per item is shared by
    its users unless an entry brings its own ``updated_at`` (this runs inside approve's lock too)."""
    origins: dict[Any, Origin] = {}
    for item in items:
        result = item.get("result") or {}
        base = parse_time(result.get("fetched_at") or item.get("submitted_at"))
        base_at = base if isinstance(base, datetime) else None
        shared = Origin(base_at, None if base_at is None else iso(base_at), item.get("id"), item.get("submitted_by"))
        for entry in result.get("synced_users", []):
            origin = shared
            if "updated_at" in entry:
                own = parse_time(entry["updated_at"])
                if isinstance(own, datetime):
                    origin = Origin(own, iso(own), shared.item_id, shared.agent)
            origins[entry["user_id"]] = origin
    return origins


# -- the last writer of each field ---------------------------------------------------------------------
@dataclass(frozen=True)
class LastWrite:
    """The latest provenance row of one user's field: the value it wrote and that value's source time."""

    id: int
    new: Any
    source_at: datetime | None
    applied_at: datetime | None
    order_id: str
    source: str | None

    def describe(self) -> dict[str, Any]:
        return {"kind": "revert" if self.source == REVERT_SOURCE else "sync", "order_id": self.order_id,
                "source": self.source, "at": None if self.applied_at is None else iso(self.applied_at)}


def _moment(text: Any) -> datetime | None:
    moment = parse_time(text)
    return moment if isinstance(moment, datetime) else None


def last_writes(store: Connection, user_ids: Iterable[Any], fields: Iterable[str]) -> dict[tuple[Any, str], LastWrite]:
    """``{(user_id, field): LastWrite}`` for the given users and fields that workctl ever wrote."""
    found: dict[tuple[Any, str], LastWrite] = {}
    users, user_param = store.in_list(list(user_ids))
    names, name_param = store.in_list(list(fields))
    rows = store.execute(
        f"SELECT p.id, p.user_id, p.field, p.new, p.source_at, {APPLIED_AT}, p.order_id, p.source FROM provenance p "
        f"WHERE p.id IN (SELECT max(p.id) FROM provenance p WHERE p.user_id {users} "
        f"AND p.field {names} AND {LIVE} GROUP BY p.user_id, p.field)", (user_param, name_param))
    for pid, user_id, name, new, source_at, applied_at, order_id, source in rows:
        found[(user_id, name)] = LastWrite(pid, loads(new), _moment(source_at), _moment(applied_at), order_id,
                                           source)
    return found


# -- policies and provenance columns (inside apply) ----------------------------------------------------
@dataclass
class FieldPlan:
    """Policies and provenance columns for one apply. ``extra_columns`` are read after the fields."""

    fields: list[str]
    policies: dict[str, str]
    want_columns: bool                      # the order asked for provenance columns
    existing: set[str]                      # columns of users, lower-cased (SQLite names are case-insensitive)
    source: str
    form: StoredForm
    extra_columns: list[str] = field(default_factory=list)
    last: dict[tuple[Any, str], LastWrite] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    added: list[str] = field(default_factory=list)
    planned_additions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._position = {name: i for i, name in enumerate(self.fields)}

    @classmethod
    def build(cls, existing: Iterable[str], payload: Mapping[str, Any], fields: list[str],
              form: StoredForm) -> FieldPlan:
        policies = {f: p for f, p in (payload.get("policies") or {}).items() if f in fields and p != "overwrite"}
        plan = cls(fields=fields, policies=policies, want_columns=bool(payload.get("provenance_columns")),
                   existing={c.lower() for c in existing}, source=str(payload.get("source")), form=form)
        for f, p in policies.items():
            if p == "skip_if_newer" and plan.has(f + AT_SUFFIX):
                plan.extra_columns.append(f + AT_SUFFIX)
        if "skip_if_newer" in policies.values() and ROW_UPDATED_AT in plan.existing:
            plan.extra_columns.append(ROW_UPDATED_AT)
        return plan

    def has(self, column: str) -> bool:
        return column.lower() in self.existing

    @property
    def active(self) -> bool:
        return bool(self.policies)

    def load_last_writes(self, store: Connection | None, user_ids: Iterable[Any]) -> None:
        """Read the last writer of every policy field of these users (only orders with policies need it)."""
        if self.policies and store is not None:
            self.last.update(last_writes(store, user_ids, sorted(self.policies)))

    def keep(self, user_id: Any, row: tuple[Any, ...], changed: dict[str, Any],
             incoming: Moment) -> tuple[dict[str, Any], Counter[str]]:
        """The changes the policies allow, and how many each policy refused."""
        kept = {}
        skipped: Counter[str] = Counter()
        for name, value in changed.items():
            policy = self.policies.get(name)
            if policy == "fill_empty":
                current = row[self._position[name]]
                if (current is not None and current != "") or later(self._written_at(user_id, name, current),
                                                                     incoming):
                    skipped[policy] += 1
                    continue
            elif policy == "skip_if_newer" and later(self.held_since(user_id, name, row), incoming):
                skipped[policy] += 1
                continue
            kept[name] = value
        return kept, skipped

    def _workctl_wrote(self, user_id: Any, name: str, current: Any) -> LastWrite | None:
        """The last provenance row of the field if the column still holds what it wrote (compared as stored)."""
        last = self.last.get((user_id, name))
        if last is None or not same(current, self.form.normalise(name, last.new)):
            return None
        return last

    def _written_at(self, user_id: Any, name: str, current: Any) -> Moment:
        """The source time of a value workctl wrote (None for a local value or an unknown time)."""
        last = self._workctl_wrote(user_id, name, current)
        return None if last is None else last.source_at

    def held_since(self, user_id: Any, name: str, row: tuple[Any, ...]) -> Moment:
        """The time of the value the field holds (see the module's docstring)."""
        current = row[self._position[name]]
        mine = self._workctl_wrote(user_id, name, current)
        if mine is not None and mine.source_at is not None:
            return mine.source_at
        local = self._local_time(name, row)
        last = self.last.get((user_id, name))
        if mine is None and last is not None:  # changed outside workctl after workctl wrote it
            if not isinstance(local, datetime) or (last.applied_at is not None and local <= last.applied_at):
                return UNREADABLE  # the local columns did not record this change: its time is unknown
        return local

    def _local_time(self, name: str, row: tuple[Any, ...]) -> Moment:
        base = len(self.fields)
        local: list[datetime] = []
        for column in (name + AT_SUFFIX, ROW_UPDATED_AT):
            if column in self.extra_columns:
                moment = parse_time(row[base + self.extra_columns.index(column)])
                if moment is UNREADABLE:
                    return UNREADABLE
                if isinstance(moment, datetime):
                    local.append(moment)
        return max(local) if local else None

    # -- provenance columns ----------------------------------------------------------------------
    def ensure_columns(self, conn: Connection, changed_fields: Iterable[str], *, dry_run: bool) -> None:
        """Add the missing provenance columns of the changed fields (only for an order that asked)."""
        if not self.want_columns:
            return
        for name in sorted(set(changed_fields)):
            for column in (name + FROM_SUFFIX, name + AT_SUFFIX):
                if self.has(column):
                    continue
                if not dry_run:
                    targets.add_text_column(conn, column)
                    self.existing.add(column.lower())
                    self.added.append(column)
                elif column not in self.planned_additions:
                    self.planned_additions.append(column)

    def stamp_columns(self, names: tuple[str, ...]) -> list[tuple[str, str]]:
        """(column, "from" | "at") for every provenance column a write of these fields keeps current
        (those that exist, and those ``ensure_columns`` plans to add)."""
        if not (self.want_columns or any(c.endswith((FROM_SUFFIX, AT_SUFFIX)) for c in self.existing)):
            return []
        planned = {c.lower() for c in self.planned_additions}

        def present(column: str) -> bool:
            return self.has(column) or column.lower() in planned

        columns = []
        for name in names:
            if not (self.want_columns or present(name + FROM_SUFFIX) or present(name + AT_SUFFIX)):
                continue
            if present(name + FROM_SUFFIX):
                columns.append((name + FROM_SUFFIX, "from"))
            if present(name + AT_SUFFIX):
                columns.append((name + AT_SUFFIX, "at"))
        return columns

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
_INSERT = ("INSERT INTO provenance (user_id, field, old, new, source, order_id, item_id, agent, applied_at, "
           "source_at, attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _rows(order: Mapping[str, Any], changes: Iterable[Mapping[str, Any]], origins: Mapping[Any, Origin],
          now: str, attempt: str | None) -> Iterator[tuple[Any, ...]]:
    source = (order.get("payload") or {}).get("source")
    unknown = Origin(None, None, None, None)
    for c in changes:
        origin = origins.get(c["user_id"], unknown)
        yield (c["user_id"], c["field"], dumps(c["old"]), dumps(c["new"]), source, order["id"], origin.item_id,
               origin.agent, now, origin.at_text or now, attempt)


@dataclass
class Staged:
    """Provenance rows an approve wrote before taking its lock, under ``attempt``: ``rows`` of them, with
    ids from ``first_id`` to ``last_id`` (others' rows may sit in between)."""

    attempt: str
    rows: int
    first_id: int | None = None
    last_id: int | None = None


def stage(store: Connection, order: Mapping[str, Any], changes: list[dict[str, Any]],
          origins: Mapping[Any, Origin], now: str) -> Staged:
    """Before approve's lock: write the order's provenance rows under a new attempt id, ``STAGE_ROWS`` per
    write transaction (a concurrent checkout waits for one of those, not for all of them). They do not
    count until ``record_applied`` commits the attempt in the apply's transaction (``sweep`` first)."""
    attempt = new_id()
    with write_tx(store) as conn:
        conn.execute("INSERT INTO provenance_attempts (attempt, order_id, created_at) VALUES (?, ?, ?)",
                     (attempt, order["id"], now))
    staged = Staged(attempt, len(changes))
    rows = _rows(order, changes, origins, now, attempt)
    while True:
        chunk = list(islice(rows, STAGE_ROWS))
        if not chunk:
            break
        with write_tx(store) as conn:
            # The table's largest id before and after (one seek each): min/max over the attempt's rows
            # read every row staged so far, each chunk again (quadratic in the order's changes). Rows of
            # others inside the range are caught where it is used (a count of the range must equal ours).
            before = conn.execute("SELECT coalesce(max(id), 0) FROM provenance").fetchone()[0]
            conn.executemany(_INSERT, chunk)
            last = conn.execute("SELECT max(id) FROM provenance").fetchone()[0]
        staged.first_id = staged.first_id if staged.first_id is not None else before + 1
        staged.last_id = last
    return staged


def unstage(store: Connection, attempt: str, now: str = "") -> None:
    """Remove an attempt that will not commit: first mark it abandoned (from then on it cannot commit:
    ``record_applied`` writes the rows itself), then delete its rows ``STAGE_ROWS`` per transaction, then
    the attempt. An interrupted removal leaves an abandoned attempt, which the next ``sweep`` finishes."""
    with write_tx(store) as conn:
        row = conn.execute("SELECT committed_at FROM provenance_attempts WHERE attempt = ?", (attempt,)).fetchone()
        if row is None or row[0] is not None:
            return  # gone already, or it committed after all: its rows are the order's provenance
        conn.execute("UPDATE provenance_attempts SET abandoned_at = coalesce(abandoned_at, ?) WHERE attempt = ?",
                     (now or utc_now(), attempt))
    while True:
        with write_tx(store) as conn:
            deleted = conn.execute("DELETE FROM provenance WHERE id IN (SELECT id FROM provenance WHERE attempt = ? "
                                   "LIMIT ?)", (attempt, STAGE_ROWS)).rowcount
            if deleted < STAGE_ROWS:
                conn.execute("DELETE FROM provenance_attempts WHERE attempt = ?", (attempt,))
                return


def sweep(store: Connection, order_id: str, now: str) -> None:
    """Remove uncommitted attempts of ``order_id``, abandoned ones, and those older than an hour (their
    approve died)."""
    moment = parse_time(now)
    cutoff = iso(moment - timedelta(seconds=STALE_ATTEMPT_S)) if isinstance(moment, datetime) else now
    for (attempt,) in store.execute("SELECT attempt FROM provenance_attempts WHERE committed_at IS NULL AND "
                                    "(order_id = ? OR created_at < ? OR abandoned_at IS NOT NULL)",
                                    (order_id, cutoff)).fetchall():
        unstage(store, attempt, now)


def record_applied(store: Connection, order: Mapping[str, Any], items: list[dict[str, Any]],
                   diff: Mapping[str, Any], now: str, staged: Staged | None = None,
                   moved: Iterable[Any] = ()) -> int:
    """Inside the transaction that completes the order: the provenance of every change of the diff (and
    the schema-change event); returns the rows. Staged rows are committed with one row of
    ``provenance_attempts``; those of ``moved`` users (re-decided inside the lock) are written again, and
    if the staged rows are not exactly the diff's changes (another approve of the order swept them) all
    of them are."""
    if diff.get("schema_changes"):
        append_event(store, now=now, actor=Actor.system(), event="schema_changed", entity="order",
                     order_id=order["id"], payload={"database": "target", "table": "users",
                                                    "added_columns": [c["add_column"] for c in diff["schema_changes"]]})
    changes = diff.get("changes") or []
    if staged is not None and _commit_staged(store, order, items, changes, now, staged, set(moved)):
        return len(changes)
    if changes:
        store.executemany(_INSERT, _rows(order, changes, source_times(items), now, None))
    return len(changes)


def _commit_staged(store: Connection, order: Mapping[str, Any], items: list[dict[str, Any]],
                   changes: list[dict[str, Any]], now: str, staged: Staged, moved: set[Any]) -> bool:
    """Make the staged rows count (one row), after rewriting those of users re-decided inside the lock.
    False when the attempt is gone (another approve of the order swept it): the caller writes the rows."""
    attempt = staged.attempt
    committed = store.execute("UPDATE provenance_attempts SET committed_at = ? WHERE attempt = ? AND order_id = ? "
                              "AND committed_at IS NULL AND abandoned_at IS NULL", (now, attempt, order["id"])).rowcount
    if committed != 1:
        return False
    if moved:
        store.executemany("DELETE FROM provenance WHERE attempt = ? AND user_id = ?", ((attempt, u) for u in moved))
        store.executemany(_INSERT, _rows(order, (c for c in changes if c["user_id"] in moved), source_times(items),
                                         now, attempt))
    return True


def _value(text: str | None) -> Any:
    return None if text is None else loads(text)


def history(s: Session, user_id: int, field_name: str | None = None) -> dict[str, Any]:
    """Every recorded value of the user's fields, oldest first (reverts included, each naming what it
    undid), the values the users table holds now, and each field's last writer."""
    sql = (f"SELECT p.id, p.field, p.old, p.new, p.source, p.order_id, p.item_id, p.agent, {APPLIED_AT}, "
           f"p.reverted_by, p.source_at FROM provenance p WHERE p.user_id = ? AND {LIVE}")
    params: list[Any] = [user_id]
    if field_name is not None:
        sql += " AND p.field = ?"
        params.append(field_name)
    entries = []
    for row in s.conn.execute(sql + " ORDER BY p.id", params):
        reverting = row[4] == REVERT_SOURCE
        entries.append({"field": row[1], "value": _value(row[3]), "old": _value(row[2]), "set_at": row[8],
                        "source_at": row[10], "order_id": row[5], "source": row[4], "item_id": row[6],
                        "agent": row[7], "kind": "revert" if reverting else "sync", "reverted_by": row[9]})
    fields = [field_name] if field_name is not None else sorted({e["field"] for e in entries})
    last = {name: [e for e in entries if e["field"] == name][-1] for name in fields
            if any(e["field"] == name for e in entries)}
    current = _current_values(s, user_id, fields, {name: e["value"] for name, e in last.items()})
    summary = {}
    for name in fields:
        entry = last.get(name)
        outside = name in current["outside"]
        summary[name] = {"current": current["values"].get(name), "last_recorded": entry["value"] if entry else None,
                         "changes": sum(1 for e in entries if e["field"] == name),
                         "last_writer": None if entry is None else
                         ({"kind": "outside_workctl", "after": entry["set_at"]} if outside else
                          {"kind": entry["kind"], "order_id": entry["order_id"], "source": entry["source"],
                           "agent": entry["agent"], "at": entry["set_at"], "source_at": entry["source_at"]}),
                         # the value now differs from the last one workctl wrote: changed outside workctl
                         "changed_outside": outside}
    return {"user_id": user_id, "field": field_name, "exists_locally": current["exists"],
            "fields": summary, "history": entries}


def _current_values(s: Session, user_id: int, fields: list[str], recorded: Mapping[str, Any]) -> dict[str, Any]:
    """The user's current values of ``fields`` and which of them differ (as stored) from ``recorded``."""
    nothing: dict[str, Any] = {"exists": False, "values": {}, "outside": set()}
    with s.target() as target:
        try:
            cols = targets.columns(target)
            if "id" not in cols:
                return nothing
            present = [f for f in fields if f.lower() in cols]
            with targets.stored_form(target, cols) as form:
                rows = targets.read_users(target, [cols[f.lower()].name for f in present],
                                          [form.normalise("id", user_id)])
                row = next(iter(rows.values()), None)
                if row is None:
                    return nothing
                values = dict(zip(present, row, strict=True))
                outside = {f for f, v in values.items() if f in recorded and not same(v, form.normalise(f, recorded[f]))}
        except targets.database_errors(target):  # a target that cannot be read says nothing about the user
            return nothing
    return {"exists": True, "values": values, "outside": outside}
