"""``workctl revert ORDER_ID``: put back the values an applied ``user.data.sync`` order overwrote.

The recorded changes are the order's ``provenance`` rows (or, for an order applied before provenance
was kept, the changes of its stored diff). Each one is restored with one guarded statement,
``UPDATE users SET f = <old> WHERE id = ? AND f IS <new>``, so a value that changed since the order
wrote it is never overwritten: it is reported as skipped (``changed_since``, ``user_missing``,
``column_missing`` or ``field_not_allowed``). All of it runs in one transaction on the target database,
which also records the revert in its own marker table ``_workctl_reverted`` (like approve's
``_workctl_applied``). The store then records, in one transaction: a ``reverts`` row (its primary key
makes a second revert impossible), ``reverted_by`` on the restored provenance rows, one provenance row
per restored field with source ``revert``, and a ``reverted`` event on the order.

With a separate target file the target commits first; a crash before the store commit is healed by
running revert again: it finds the target's marker, reuses that outcome and only records it.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ...core import outbox
from ...core.ids import new_id
from ...core.lifecycle import Actor, append_event
from ...core.session import Session
from ...errors import Conflict, IllegalTransition, Invalid
from ...jsonio import dumps, loads
from ...store import target as targets
from ...store.sqlite import write_tx
from ...store.target import quote, user_columns
from .fields import AT_SUFFIX, FROM_SUFFIX, FieldRules, allowed_columns
from .provenance import REVERT_SOURCE

SYNC_TYPE = "user.data.sync"
SKIPPED_IN_EVENT = 100


def recorded_changes(conn: sqlite3.Connection, order_row: sqlite3.Row) -> list[dict[str, Any]]:
    """The changes the order applied and nobody reverted yet: provenance rows, else the stored diff."""
    changes = [{"provenance_id": r[0], "user_id": r[1], "field": r[2], "old": loads(r[3]), "new": loads(r[4])}
               for r in conn.execute(
                   "SELECT id, user_id, field, old, new FROM provenance WHERE order_id = ? AND source IS NOT ? "
                   "ORDER BY id", (order_row["id"], REVERT_SOURCE))]
    if changes:
        return changes
    diff = loads(order_row["diff"]) or {}
    return [{"provenance_id": None, "user_id": c["user_id"], "field": c["field"], "old": c["old"], "new": c["new"]}
            for c in diff.get("changes") or []]


def _restore(conn: sqlite3.Connection, order_id: str, revert_id: str, changes: list[dict[str, Any]],
             allowed: set[str], now: str, *, dry_run: bool) -> dict[str, Any]:
    """Inside an open transaction on the target: restore what still holds the order's value."""
    done = targets.reverted_outcome(conn, order_id)
    if done is not None:
        return loads(done)
    columns = {c.lower() for c in user_columns(conn)}  # SQLite names are case-insensitive
    restored: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for change in changes:
        name, user_id = change["field"], change["user_id"]
        reason = None
        if name.lower() not in columns:
            reason = "column_missing"
        elif name not in allowed:
            reason = "field_not_allowed"
        if reason:
            skipped.append({**_public(change), "current": None, "reason": reason})
            continue
        column = quote(name)
        if dry_run:
            row = conn.execute(f"SELECT {column} IS ?, {column} FROM users WHERE id = ?",
                               (change["new"], user_id)).fetchone()
            still = row is not None and bool(row[0])
        else:
            stamps, values = "", []
            for suffix, value in ((FROM_SUFFIX, REVERT_SOURCE), (AT_SUFFIX, now)):
                if (name + suffix).lower() in columns:
                    stamps += f", {quote(name + suffix)} = ?"
                    values.append(value)
            cursor = conn.execute(f"UPDATE users SET {column} = ?{stamps} WHERE id = ? AND {column} IS ?",
                                  (change["old"], *values, user_id, change["new"]))
            still = cursor.rowcount == 1
            row = None if still else conn.execute(f"SELECT 1, {column} FROM users WHERE id = ?",
                                                  (user_id,)).fetchone()
        if still:
            restored.append({**_public(change), "provenance_id": change["provenance_id"]})
        else:
            skipped.append({**_public(change), "current": None if row is None else row[1],
                            "reason": "user_missing" if row is None else "changed_since"})
    outcome = {"revert_id": revert_id, "reverted_at": now, "restored": restored, "skipped": skipped}
    if not dry_run:
        targets.mark_reverted(conn, order_id, revert_id, now, dumps(outcome))
    return outcome


def _public(change: dict[str, Any]) -> dict[str, Any]:
    """A change as the revert reports it: the order wrote ``new`` over ``old``; the revert puts ``old`` back."""
    return {"user_id": change["user_id"], "field": change["field"], "order_wrote": change["new"],
            "restore": change["old"]}


def _already(conn: sqlite3.Connection, order_id: str) -> Conflict | None:
    row = conn.execute("SELECT id, actor, created_at FROM reverts WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return None
    return Conflict(f"order {order_id} was already reverted (revert {row[0]} by {row[1]} at {row[2]}); "
                    "a revert cannot be applied twice", code="already_reverted",
                    details=[{"revert_id": row[0], "actor": row[1], "reverted_at": row[2]}])


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
    settings = FieldRules.from_settings(s.type_settings(SYNC_TYPE))
    changes = recorded_changes(s.conn, row)
    now = s.now()
    revert_id = new_id()
    target = s.target()

    if dry_run:
        with target as tconn:
            tconn.execute("BEGIN")
            try:
                allowed = set(allowed_columns(tconn, settings))
                outcome = _restore(tconn, order_id, revert_id, changes, allowed, now, dry_run=True)
            finally:
                tconn.execute("ROLLBACK")
        return _response(order_id, outcome, len(changes), dry_run=True)

    if not target.same:
        with target as tconn, write_tx(tconn):
            allowed = set(allowed_columns(tconn, settings))
            outcome = _restore(tconn, order_id, revert_id, changes, allowed, now, dry_run=False)
    with write_tx(s.conn) as conn:
        earlier = _already(conn, order_id)
        if earlier:
            raise earlier
        if target.same:
            allowed = set(allowed_columns(conn, settings))
            outcome = _restore(conn, order_id, revert_id, changes, allowed, now, dry_run=False)
        _record(conn, order_id, outcome, actor, now)
        _notify(conn, s, row, outcome, now)
    return _response(order_id, outcome, len(changes), dry_run=False)


def _notify(conn: sqlite3.Connection, s: Session, row: sqlite3.Row, outcome: dict[str, Any], now: str) -> None:
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


def _record(conn: sqlite3.Connection, order_id: str, outcome: dict[str, Any], actor: Actor, now: str) -> None:
    """The store side of a revert, in the caller's transaction."""
    revert_id, restored, skipped = outcome["revert_id"], outcome["restored"], outcome["skipped"]
    who = f"{actor.type}:{actor.id}"
    conn.execute("INSERT INTO reverts (order_id, id, actor, restored, skipped, result, created_at) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)", (order_id, revert_id, who, len(restored), len(skipped),
                                                  dumps(outcome), now))
    conn.executemany("UPDATE provenance SET reverted_by = ? WHERE id = ? AND reverted_by IS NULL",
                     [(revert_id, c["provenance_id"]) for c in restored if c["provenance_id"] is not None])
    conn.executemany(
        "INSERT INTO provenance (user_id, field, old, new, source, order_id, item_id, agent, applied_at) "
        "VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)",
        [(c["user_id"], c["field"], dumps(c["order_wrote"]), dumps(c["restore"]), REVERT_SOURCE, order_id, who,
          now) for c in restored])
    append_event(conn, now=now, actor=actor, event="reverted", entity="order", order_id=order_id,
                 payload={"revert_id": revert_id, "restored": len(restored), "skipped": len(skipped),
                          "skipped_changes": [{k: c[k] for k in ("user_id", "field", "reason")}
                                              for c in skipped[:SKIPPED_IN_EVENT]]})


def _response(order_id: str, outcome: dict[str, Any], recorded: int, *, dry_run: bool) -> dict[str, Any]:
    restored = [{k: v for k, v in c.items() if k != "provenance_id"} for c in outcome["restored"]]
    return {"order": {"id": order_id, "state": "completed"}, "revert_id": None if dry_run else outcome["revert_id"],
            "dry_run": dry_run,
            "stats": {"recorded": recorded, "restored": len(restored), "skipped": len(outcome["skipped"])},
            "restored": restored, "skipped": outcome["skipped"]}
