"""Applying a ``user.data.sync`` order to the target's ``users`` table, in two steps.

``prepare`` runs before approve takes the write lock (it is also the whole of a dry run): it reads the
affected rows once, turns every incoming value into the value its column would store
(``store.target.StoredForm``: a TEXT column holds ``49`` as ``'49'``), keeps only real changes, lets
the conflict policies decide on source times (``provenance``), refuses values the column would refuse
(NOT NULL, a STRICT table's type) and builds the diff. ``write`` runs inside the write transaction: it
adds the provenance columns an order asked for and writes with one guarded ``executemany`` per set of
changed columns (``… WHERE id = ? AND <each column read> IS <what prepare read>``), so checking that
nothing moved costs no extra read. Only if a row moved since ``prepare`` (a local edit, another order)
or the target refused one does it undo that, re-read the changing rows, re-decide the moved ones and
write row by row. A user whose row did not change is not written, gets no provenance row and no
``user.updated`` notification. The target's own refusals (UNIQUE, CHECK, triggers, foreign keys) are
``apply_refused`` naming the user, the field and the constraint.

A user unchanged (or missing) at ``prepare`` that changes before the lock is treated like a change made
just after the apply: it is not written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ...errors import Invalid
from ...jsonio import dumps
from ...store import target as targets
from ...store.target import Refusal, StoredForm, same
from ..base import ApplyContext, PreparedDiff
from . import provenance
from .fields import FieldRules, allowed_columns, refusal_message

Outcome = dict[str, tuple[Any, Any]] | None  # field -> (old, new) as stored; {} unchanged; None missing


@dataclass
class Prepared:
    """Everything ``write`` needs: what was read, what was decided, and the diff."""

    payload: Mapping[str, Any]
    fields: list[str]
    names: list[str]                                # fields, then the plan's extra columns: what rows hold
    plan: provenance.FieldPlan
    form: StoredForm
    stored_id: dict[Any, Any]                       # user id -> the id as users.id stores it
    incoming: dict[Any, dict[str, Any]]             # user id -> {field: value as the column stores it}
    origins: dict[Any, provenance.Origin]
    rows: dict[Any, tuple[Any, ...]] = field(default_factory=dict)
    outcome: dict[Any, Outcome] = field(default_factory=dict)
    skipped: dict[Any, Counter[str]] = field(default_factory=dict)
    failed: int = 0
    diff: dict[str, Any] = field(default_factory=dict)
    groups: dict[tuple[str, ...], list[tuple[Any, list[Any]]]] = field(default_factory=dict)  # the writes
    moved: list[Any] = field(default_factory=list)  # users re-decided inside the lock
    provenance_mark: int = 0                        # the newest provenance row when prepare read
    staged: provenance.Staged | None = None         # provenance rows written ahead of the lock

    def __post_init__(self) -> None:
        self.position = {f: i for i, f in enumerate(self.fields)}

    def decide(self, user_id: Any) -> None:
        row = self.rows.get(user_id)
        if row is None:
            self.outcome[user_id] = None
            return
        position = self.position
        changed = {f: v for f, v in self.incoming[user_id].items() if not same(row[position[f]], v)}
        if changed and self.plan.active:
            kept, skipped = self.plan.keep(user_id, row, changed, self.origins[user_id].at)
            changed = kept
            if skipped:
                self.skipped[user_id] = skipped
            else:
                self.skipped.pop(user_id, None)
        self.outcome[user_id] = {f: (row[position[f]], changed[f]) for f in sorted(changed)}


def _fields(conn: Any, payload: Mapping[str, Any], rules: FieldRules) -> list[str]:
    cols = targets.check_users_table(conn)
    allowed = allowed_columns(conn, rules)
    lost = [f for f in payload["fields"] if f not in allowed]
    if lost:
        details = [{"path": f"fields.{payload['fields'].index(f)}",
                    "message": refusal_message(f, rules, (c.name for c in cols.values()), allowed)} for f in lost]
        raise Invalid(f"fields are no longer columns the sync may write: {', '.join(lost)}",
                      code="field_not_allowed", details=details)
    return list(payload["fields"])


def _incoming(items: Iterable[Mapping[str, Any]], form: StoredForm,
              fields: list[str]) -> tuple[dict[Any, dict[str, Any]], int]:
    """The synced data by user (a later item wins), each value as its column stores it; failed users."""
    normalise = {f: form.normaliser(f) for f in fields}
    incoming: dict[Any, dict[str, Any]] = {}
    failed = 0
    for item in items:
        result = item["result"] or {}
        for entry in result.get("synced_users", []):
            incoming[entry["user_id"]] = {f: normalise[f](v) for f, v in entry["data"].items()}
        failed += len(result.get("failed_users", []))
    return incoming, failed


def prepare(ctx: ApplyContext, order: Mapping[str, Any], items_in: Iterable[Mapping[str, Any]]) -> Prepared:
    """Read, normalise, decide and diff (before the lock; the target is in a read transaction)."""
    payload = order["payload"]
    conn = ctx.target
    rules = FieldRules.from_settings(ctx.settings)
    fields = _fields(conn, payload, rules)
    items = list(items_in)
    cols = targets.columns(conn)
    form = targets.stored_form(conn, cols)
    incoming, failed = _incoming(items, form, fields)
    plan = provenance.FieldPlan.build((c.name for c in cols.values()), payload, fields, form)
    id_form = form.normaliser("id")
    prep = Prepared(payload=payload, fields=fields, names=fields + plan.extra_columns, plan=plan, form=form,
                    stored_id={u: id_form(u) for u in incoming}, incoming=incoming,
                    origins=provenance.source_times(items), failed=failed)
    user_of = {sid: u for u, sid in prep.stored_id.items()}
    if ctx.store is not None:
        prep.provenance_mark = ctx.store.execute("SELECT coalesce(max(id), 0) FROM provenance").fetchone()[0]
    read = targets.read_users(conn, prep.names, prep.stored_id.values())
    prep.rows = {user_of[sid]: row for sid, row in read.items() if sid in user_of}
    plan.load_last_writes(ctx.store, list(prep.rows))
    for user_id in incoming:
        prep.decide(user_id)
    _refuse_unstorable(prep)
    plan.ensure_columns(conn, _changed_fields(prep), dry_run=True)
    prep.diff = PreparedDiff(_diff(prep), private=prep)
    if not ctx.dry_run:  # what the lock would otherwise spend time on: the rows to write, the diff's JSON
        prep.groups = _groups(prep)
        prep.diff.encoded = dumps(prep.diff)
    return prep


# Orders with more changes than this write their provenance before the lock (provenance.stage).
STAGE_ABOVE = provenance.STAGE_ROWS


def stage(ctx: ApplyContext, order: Mapping[str, Any]) -> None:
    """Before the lock: a large order's provenance rows, in transactions of their own (``provenance.stage``)."""
    prep = ctx.prepared
    if not isinstance(prep, Prepared) or ctx.store is None:
        return
    now = ctx.now or provenance.utc_now()
    provenance.sweep(ctx.store, order["id"], now)  # what an earlier, failed approve of the order left
    if len(prep.diff["changes"]) > STAGE_ABOVE:
        prep.staged = provenance.stage(ctx.store, order, prep.diff["changes"], prep.origins, now)


def unstage(ctx: ApplyContext) -> None:
    prep = ctx.prepared
    if isinstance(prep, Prepared) and prep.staged is not None and ctx.store is not None:
        provenance.unstage(ctx.store, prep.staged.attempt, ctx.now or "")


def _changed_fields(prep: Prepared) -> set[str]:
    return {f for out in prep.outcome.values() if out for f in out}


def _refuse_unstorable(prep: Prepared) -> None:
    """Values the column would refuse on its own (NOT NULL, the column's type): before any lock."""
    refusals = []
    for user_id, out in prep.outcome.items():
        for name, (_, new) in (out or {}).items():
            why = prep.form.refusal(name, new)
            if why:
                refusals.append(Refusal(user_id, [name], why))
    if refusals:
        raise targets.refused(refusals)


def _diff(prep: Prepared) -> dict[str, Any]:
    changes: list[dict[str, Any]] = []
    missing: list[Any] = []
    unchanged = updated = 0
    for user_id, out in prep.outcome.items():
        if out is None:
            missing.append(user_id)
        elif not out:
            unchanged += 1
        else:
            updated += 1
            changes.extend({"user_id": user_id, "field": n, "old": old, "new": new} for n, (old, new) in out.items())
    prep.plan.skipped = sum(prep.skipped.values(), Counter())
    return prep.plan.report({
        "before": {"updated_count": 0},
        "after": {"updated_count": updated},
        "summary": f"Synced data for {updated} users from {prep.payload['source']}",
        "changes": changes,
        "stats": {"users": len(prep.payload["user_ids"]), "synced": len(prep.incoming), "updated": updated,
                  "unchanged": unchanged, "missing_locally": len(missing), "failed": prep.failed},
        "missing_user_ids": sorted(missing),
    })


def write(ctx: ApplyContext, prep: Prepared) -> dict[str, Any]:
    """Inside the write transaction: write the prepared changes where the rows still hold what
    ``prepare`` read (one guarded ``executemany`` per set of changed columns). Only when a row moved
    since, or the target refused one, does it fall back to re-reading, re-deciding and writing row by
    row to name the refusal."""
    conn = ctx.target
    _fields(conn, prep.payload, FieldRules.from_settings(ctx.settings))
    prep.plan.ensure_columns(conn, _changed_fields(prep), dry_run=False)
    rewritten = _rewritten(ctx, prep)
    groups = prep.groups or _groups(prep)
    expected_rows = sum(len(rows) for rows in groups.values())
    conn.execute("SAVEPOINT workctl_apply")
    try:
        written = 0
        for columns, rows in groups.items():
            guarded = ([*r, *prep.rows[u]] for u, r in rows)
            written += targets.update_users_if_unchanged(conn, columns, prep.names, guarded)
        clean = written == expected_rows and not rewritten
    except targets.integrity_errors(conn):
        clean = False
    if clean:
        conn.execute("RELEASE SAVEPOINT workctl_apply")
        return prep.diff
    conn.execute("ROLLBACK TO SAVEPOINT workctl_apply")
    conn.execute("RELEASE SAVEPOINT workctl_apply")
    _recheck(ctx, prep, rewritten)
    prep.plan.ensure_columns(conn, _changed_fields(prep), dry_run=False)
    user_of = {sid: u for u, sid in prep.stored_id.items()}
    for columns, rows in _groups(prep).items():
        targets.update_users(conn, columns, [r for _, r in rows], user_of.get)
    return prep.diff


def _rewritten(ctx: ApplyContext, prep: Prepared) -> set[Any]:
    """Users about to change whose fields another order or a revert recorded a write of since ``prepare``
    read provenance (a value can come back to what was read, while the history moved on). Rows staged
    by this approve are skipped by id range, so this reads only what others wrote."""
    if ctx.store is None:
        return set()
    changing = {u for u, out in prep.outcome.items() if out}
    fields = set(prep.fields)
    staged = prep.staged
    ranges: list[tuple[int, int | None]] = [(prep.provenance_mark, None)]
    if staged is not None and staged.first_id is not None and staged.last_id is not None:
        mine = ctx.store.execute("SELECT count(*) FROM provenance WHERE id BETWEEN ? AND ?",
                                 (staged.first_id, staged.last_id)).fetchone()[0]
        if mine == staged.rows:  # nobody wrote between our staged chunks: skip that range
            ranges = [(prep.provenance_mark, staged.first_id), (staged.last_id, None)]
    attempt = staged.attempt if staged else None
    found: set[Any] = set()
    for low, high in ranges:
        bound = "" if high is None else " AND p.id < ?"
        params = (low, attempt) if high is None else (low, attempt, high)
        found.update(u for u, f in ctx.store.execute(
            f"SELECT DISTINCT p.user_id, p.field FROM provenance p WHERE p.id > ? AND p.attempt IS DISTINCT FROM ?{bound} "
            f"AND {provenance.LIVE}", params) if u in changing and f in fields)
    return found


def _recheck(ctx: ApplyContext, prep: Prepared, rewritten: set[Any]) -> None:
    """Re-read the rows about to change; re-decide those that moved since ``prepare`` (fresh rows, fresh
    provenance) and rebuild the diff."""
    changing = [u for u, out in prep.outcome.items() if out]
    fresh = targets.read_users(ctx.target, prep.names, (prep.stored_id[u] for u in changing))
    for user_id in changing:
        row = fresh.get(prep.stored_id[user_id])
        old = prep.rows[user_id]
        if row is None or user_id in rewritten or not all(map(same, row, old)):
            prep.moved.append(user_id)
            if row is None:
                prep.rows.pop(user_id)
            else:
                prep.rows[user_id] = row
    if not prep.moved:
        return
    moved = set(prep.moved)
    prep.plan.last = {k: v for k, v in prep.plan.last.items() if k[0] not in moved}
    prep.plan.load_last_writes(ctx.store, [u for u in prep.moved if u in prep.rows])
    for user_id in prep.moved:
        prep.decide(user_id)
    _refuse_unstorable(prep)
    prep.diff = PreparedDiff(_diff(prep), private=prep)


def _groups(prep: Prepared) -> dict[tuple[str, ...], list[tuple[Any, list[Any]]]]:
    """The writes by set of changed fields: ``{(fields…, provenance stamp columns…): [(user, [values…,
    stored id])]}``."""
    groups: dict[tuple[str, ...], list[tuple[Any, list[Any]]]] = {}
    stamps: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for user_id, out in prep.outcome.items():
        if not out:
            continue
        names = tuple(out)
        if names not in stamps:
            stamps[names] = prep.plan.stamp_columns(names)
        at = prep.origins[user_id].at_text
        values = [new for _, new in out.values()]
        values += [prep.plan.source if kind == "from" else at for _, kind in stamps[names]]
        groups.setdefault((*names, *(c for c, _ in stamps[names])), []).append((user_id, [*values, prep.stored_id[user_id]]))
    return groups


def apply(ctx: ApplyContext, order: Mapping[str, Any], items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The type's apply: the prepared diff in a dry run, else re-check and write (preparing first if the
    engine did not)."""
    prep = ctx.prepared if isinstance(ctx.prepared, Prepared) else prepare(ctx, order, items)
    try:
        return prep.diff if ctx.dry_run else write(ctx, prep)
    finally:
        prep.form.close()
