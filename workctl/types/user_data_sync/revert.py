"""``workctl revert ORDER_ID``: put back the values an applied ``user.data.sync`` order overwrote.

The recorded changes are the order's ``provenance`` rows (or, for an order applied before provenance
was kept, the changes of its stored diff). A field is restored only where **this order is still its
last writer**: no later order wrote the field and still stands (a later order that was itself
reverted has given the field back), and the column still holds what this order wrote (compared as
the column stores it). Otherwise it is skipped, and the revert says why, per field: ``changed_since``
with ``changed_by`` (the later order that wrote the field, or ``outside_workctl`` for an edit workctl
did not make), ``user_missing``, ``column_missing`` or ``field_not_allowed``. So reverting A after B
and C wrote the same field never clobbers C, even when C wrote A's value again; C's own revert still
works, and after it B's, and then A's.

Each restore is one guarded statement (``… WHERE id = ? AND f IS <what the order wrote>``), all in one
transaction on the target database, which also records the revert in its marker table
``_workctl_reverted`` (like approve's ``_workctl_applied``). The store then records, in one
transaction: a ``reverts`` row (its primary key makes a second revert impossible), ``reverted_by`` on
the restored provenance rows, one provenance row per restored field with source ``revert`` and, as its
source time, the source time of the value it put back (the revert's own time for a value that came
from outside workctl), and a ``reverted`` event on the order.

With a separate target file the target commits first; a crash before the store commit is healed by
running revert again: it finds the target's marker, reuses that outcome and only records it.
"""

from __future__ import annotations

from typing import Any

from ...core import outbox
from ...core.ids import new_id
from ...core.lifecycle import Actor, append_event
from ...core.session import Session
from ...errors import Conflict, IllegalTransition, Invalid
from ...jsonio import dumps, loads
from ...store import target as targets
from ...store import write_tx
from ...store.target import same
from .fields import AT_SUFFIX, FROM_SUFFIX, FieldRules, allowed_columns
from .provenance import REVERT_SOURCE
from ...store.base import Connection, Row

SYNC_TYPE = "user.data.sync"
SKIPPED_IN_EVENT = 100


def recorded_changes(conn: Connection, order_row: Row) -> list[dict[str, Any]]:
    """The changes the order applied, each with the field's last writer and the source time of the value
    it overwrote: provenance rows, else (an order applied before provenance was kept) the stored diff."""
    changes = []
    for row in conn.execute(
            "SELECT p.id, p.user_id, p.field, p.old, p.new, q.order_id, q.source, q.applied_at, "
            "(SELECT r.source_at FROM provenance r WHERE r.user_id = p.user_id AND r.field = p.field "
            " AND r.id < p.id ORDER BY r.id DESC LIMIT 1), "
            "(SELECT r.new FROM provenance r WHERE r.user_id = p.user_id AND r.field = p.field "
            " AND r.id < p.id ORDER BY r.id DESC LIMIT 1) "
            # the latest later write of the field that still stands (a reverted one, or a revert, does not)
            "FROM provenance p LEFT JOIN provenance q ON q.id = (SELECT max(m.id) FROM provenance m "
            " WHERE m.user_id = p.user_id AND m.field = p.field AND m.id > p.id AND m.source IS DISTINCT FROM ? "
            " AND m.reverted_by IS NULL) "
            "WHERE p.order_id = ? AND p.source IS DISTINCT FROM ? ORDER BY p.id", (REVERT_SOURCE, order_row["id"], REVERT_SOURCE)):
        pid, user_id, name, old, new, later_order, later_source, later_at, prev_at, prev_new = row
        old_value = loads(old)
        changes.append({
            "provenance_id": pid, "user_id": user_id, "field": name, "old": old_value, "new": loads(new),
            "last_writer": None if later_order is None else {
                "kind": "sync", "order_id": later_order, "source": later_source, "at": later_at},
            # the value the order overwrote came from an earlier workctl write: its source time
            "restore_source_at": prev_at if prev_new is not None and loads(prev_new) == old_value else None})
    if changes:
        return changes
    diff = loads(order_row["diff"]) or {}
    return [{"provenance_id": None, "user_id": c["user_id"], "field": c["field"], "old": c["old"], "new": c["new"],
             "last_writer": None, "restore_source_at": None} for c in diff.get("changes") or []]


def _restore(conn: Connection, order_id: str, revert_id: str, changes: list[dict[str, Any]],
             allowed: set[str], now: str, *, dry_run: bool) -> dict[str, Any]:
    """Inside an open transaction on the target: restore what this order is still the last writer of."""
    done = targets.reverted_outcome(conn, order_id)
    if done is not None:
        return loads(done)
    cols = targets.columns(conn)
    restored: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    with targets.stored_form(conn, cols) as form:
        for change in changes:
            name = change["field"]
            reason = ("column_missing" if name.lower() not in cols else
                      "field_not_allowed" if name not in allowed else None)
            if reason:
                skipped.append({**_public(change), "current": None, "reason": reason})
                continue
            stored_id = form.normalise("id", change["user_id"])
            exists, current = targets.read_field(conn, name, stored_id)
            if not exists:
                skipped.append({**_public(change), "current": None, "reason": "user_missing"})
                continue
            wrote = form.normalise(name, change["new"])
            later = change["last_writer"] or (None if same(current, wrote) else {"kind": "outside_workctl"})
            if later is None and not dry_run:
                at = change["restore_source_at"] or now
                stamps = [(c, v) for c, v in ((name + FROM_SUFFIX, REVERT_SOURCE), (name + AT_SUFFIX, at))
                          if c.lower() in cols]
                if not targets.restore_field(conn, name, stored_id, change["old"], current, stamps):
                    later = {"kind": "outside_workctl"}
            if later is None:
                restored.append({**_public(change), "provenance_id": change["provenance_id"],
                                 "source_at": change["restore_source_at"] or now})
            else:
                skipped.append({**_public(change), "current": current, "reason": "changed_since",
                                "changed_by": later})
    outcome = {"revert_id": revert_id, "reverted_at": now, "restored": restored, "skipped": skipped}
    if not dry_run:
        targets.mark_reverted(conn, order_id, revert_id, now, dumps(outcome))
    return outcome


def _public(change: dict[str, Any]) -> dict[str, Any]:
    """A change as the revert reports it: the order wrote ``new`` over ``old``; the revert puts ``old`` back."""
    return {"user_id": change["user_id"], "field": change["field"], "order_wrote": change["new"],
            "restore": change["old"]}


def _already(conn: Connection, order_id: str) -> Conflict | None:
    row = conn.execute("SELECT id, actor, created_at FROM reverts WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return None
    return Conflict(f"order {order_id} was already reverted (revert {row[0]} by {row[1]} at {row[2]}); "
                    "a revert cannot be applied twice", code="already_reverted",
                    details=[{"revert_id": row[0], "actor": row[1], "reverted_at": row[2]}])


def _allowed(conn: Connection, rules: FieldRules) -> set[str]:
    return set(allowed_columns(conn, rules))


def revert(s: Session, order_id: str, *, actor: Actor, dry_run: bool = False) -> dict[str, Any]:
    row = s.order_row(order_id)
    if row["type"] != SYNC_TYPE:
        raise Invalid(f"order {order_id} is a {row['type']} order; only {SYNC_TYPE} orders can be reverted",
                      code="wrong_order_type")
    if row["state"] != "completed":
        raise IllegalTransition(f"cannot revert order {order_id}: it is '{row['state']}'; only an applied "
                                "(completed) order can be reverted", code="order_not_applied",
                                details=[{"state": row["state"]}])
    earlier = _already(s.conn, order_id)
    if earlier:
        raise earlier
    rules = FieldRules.from_settings(s.type_settings(SYNC_TYPE))
    now = s.now()
    revert_id = new_id()
    target = s.target()

    if dry_run:
        with target as tconn:
            tconn.execute("BEGIN")
            try:
                changes = recorded_changes(s.conn, row)
                outcome = _restore(tconn, order_id, revert_id, changes, _allowed(tconn, rules), now, dry_run=True)
            finally:
                tconn.execute("ROLLBACK")
        return _response(order_id, outcome, len(changes), dry_run=True)

    if not target.same:
        # The last writers are read under the target's write lock, which approve's target commit takes too.
        with target as tconn, write_tx(tconn):
            changes = recorded_changes(s.conn, row)
            outcome = _restore(tconn, order_id, revert_id, changes, _allowed(tconn, rules), now, dry_run=False)
    with write_tx(s.conn) as conn:
        earlier = _already(conn, order_id)
        if earlier:
            raise earlier
        if target.same:
            changes = recorded_changes(conn, row)
            outcome = _restore(conn, order_id, revert_id, changes, _allowed(conn, rules), now, dry_run=False)
        _record(conn, order_id, outcome, actor, now)
        _notify(conn, s, row, outcome, now)
    return _response(order_id, outcome, len(changes), dry_run=False)


def _notify(conn: Connection, s: Session, row: Row, outcome: dict[str, Any], now: str) -> None:
    """Outbox rows for the revert, in its store transaction (sent after commit, like approve's)."""
    hooks = outbox.configured(s.config)
    restored = outcome["restored"]
    if not hooks or not restored:
        return
    order = {"id": row["id"], "type": row["type"], "payload": loads(row["payload"])}
    diff = {"changes": [{"user_id": c["user_id"], "field": c["field"]} for c in restored],
            "stats": {"synced": len({c["user_id"] for c in restored})},
            "summary": f"Reverted {len(restored)} field changes of order {row['id']}"}
    outbox.enqueue(conn, hooks, order, diff, now, order_event="order.reverted")


def _record(conn: Connection, order_id: str, outcome: dict[str, Any], actor: Actor, now: str) -> None:
    """The store side of a revert, in the caller's transaction."""
    revert_id, restored, skipped = outcome["revert_id"], outcome["restored"], outcome["skipped"]
    who = f"{actor.type}:{actor.id}"
    conn.execute("INSERT INTO reverts (order_id, id, actor, restored, skipped, result, created_at) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)", (order_id, revert_id, who, len(restored), len(skipped),
                                                  dumps(outcome), now))
    conn.executemany("UPDATE provenance SET reverted_by = ? WHERE id = ? AND reverted_by IS NULL",
                     [(revert_id, c["provenance_id"]) for c in restored if c["provenance_id"] is not None])
    conn.executemany(
        "INSERT INTO provenance (user_id, field, old, new, source, order_id, item_id, agent, applied_at, source_at) "
        "VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
        [(c["user_id"], c["field"], dumps(c["order_wrote"]), dumps(c["restore"]), REVERT_SOURCE, order_id, who,
          now, c.get("source_at") or now) for c in restored])
    append_event(conn, now=now, actor=actor, event="reverted", entity="order", order_id=order_id,
                 payload={"revert_id": revert_id, "restored": len(restored), "skipped": len(skipped),
                          "skipped_changes": [{k: c[k] for k in ("user_id", "field", "reason")}
                                              for c in skipped[:SKIPPED_IN_EVENT]]})


def _response(order_id: str, outcome: dict[str, Any], recorded: int, *, dry_run: bool) -> dict[str, Any]:
    restored = [{k: v for k, v in c.items() if k not in ("provenance_id", "source_at")} for c in outcome["restored"]]
    return {"order": {"id": order_id, "state": "completed"}, "revert_id": None if dry_run else outcome["revert_id"],
            "dry_run": dry_run,
            "stats": {"recorded": recorded, "restored": len(restored), "skipped": len(outcome["skipped"])},
            "restored": restored, "skipped": outcome["skipped"]}
