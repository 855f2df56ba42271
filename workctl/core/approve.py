"""approve (and its dry run, which is also ``workctl diff``): apply every item's result exactly once.

The order and its results are read and checked, and the order type prepares its apply (reads the
target, parses, diffs: ``OrderType.prepare_apply``), all before any lock. The write transaction then
re-checks that nothing the preparation relied on moved — the order (its newest event id, the
watermark) here, the affected target rows inside the type's ``apply`` — writes, adds the target's
marker row and records the completion, all at once; the write lock is held for that only. With a
separate target file the target commits first and its marker makes a retried approve finish the
store side without applying twice.

A write the target refuses — at the statement (UNIQUE, CHECK, NOT NULL, a trigger) or at COMMIT (a
deferred foreign key) — is ``apply_refused`` (exit 5) naming the user, the field and the constraint;
nothing is applied and the order stays ``submitted``. Nothing after the commit (the type's
``after_apply``, recording its failure) changes the outcome of a committed approve.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..errors import Conflict, IllegalTransition, Invalid
from ..jsonio import Encoded, dumps, loads
from ..store import target as targets
from ..store import write_tx
from ..types import ApplyContext, OrderType, get_type
from ..types.base import PreparedDiff
from . import outbox
from .idempotency import Guard
from .lifecycle import ITEM_DONE_STATES, Actor, append_event, item_counts, move_item, move_order
from .session import Session
from ..store.base import Connection, Row

def _crash_point(name: str) -> None:
    """Test hook for crash tests: WORKCTL_TEST_CRASH_AT=<name> kills the process right here (kill -9).

    The points of approve, in order: after_apply (apply and marker written, inside the target's open
    transaction), after_target_commit (separate target only: committed there, not yet in the store),
    before_store_commit (everything written, the store's COMMIT not yet run), after_store_commit."""
    if os.environ.get("WORKCTL_TEST_CRASH_AT") == name:
        os.kill(os.getpid(), 9)

def _apply_once(conn: Connection, order_type: OrderType, ctx: ApplyContext, order: dict[str, Any],
                items: list[dict[str, Any]]) -> tuple[dict[str, Any], Encoded]:
    """Inside an open write transaction on the target: apply unless the marker says it was done.
    Returns the diff and its JSON text (encoded once, stored wherever the diff is kept)."""
    done = targets.applied_diff(conn, order["id"])
    if done is not None:
        return loads(done), Encoded(done)
    diff = order_type.apply(ctx, order, items)
    encoded = diff.encoded if isinstance(diff, PreparedDiff) else None
    diff_json = Encoded(encoded if encoded is not None else dumps(diff))
    # In the store's own file the marker commits with orders.diff: it only needs to exist. A separate
    # target keeps the diff itself, to finish the store side after a crash between the two commits.
    targets.mark_applied(conn, order["id"], str(ctx.now), STORED_IN_ORDERS if ctx.store is conn else diff_json)
    _crash_point("after_apply")
    return diff, diff_json

STORED_IN_ORDERS = '{"stored_in":"orders.diff"}'

def watermark(conn: Connection, order_id: str) -> int:
    """The order's newest event id: every transition of the order or its items appends one (one seek)."""
    return conn.execute("SELECT coalesce(max(id), 0) FROM events WHERE order_id = ?", (order_id,)).fetchone()[0]

def _check_unchanged(conn: Connection, order_id: str, seen: int) -> None:
    """Approve applies the results it read; refuse if the order moved since (state or newer events)."""
    current = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    if current["state"] != "submitted":
        raise not_ready(current, conn, "approve")
    if watermark(conn, order_id) != seen:
        raise Conflict(f"order {order_id} changed while approve was reading its results (it was rejected, "
                       "requeued and resubmitted); nothing was applied: review it and approve again",
                       code="order_changed")

def not_ready(order: Row, conn: Connection, action: str) -> IllegalTransition:
    """Why an order is not in a state ``action`` (approve, reject, preview) accepts."""
    counts = {state: n for state, n in item_counts(conn, order["id"]).items() if n}
    done = sum(counts.get(st, 0) for st in ITEM_DONE_STATES)
    summary = ", ".join(f"{n} {st}" for st, n in sorted(counts.items()))
    if order["state"] in ("queued", "in_progress", "failed", "dead_lettered"):
        hint = f"{done} of {order['item_count']} items submitted ({summary}); {action} needs every item submitted"
    else:
        hint = f"{action} is only possible for a submitted order"
    return IllegalTransition(f"cannot {action} order {order['id']}: it is '{order['state']}'; {hint}",
                             code="order_not_submitted",
                             details=[{"state": order["state"], "items": counts}])

def _read(s: Session, order_id: str) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """The submitted order, its items' results (in plan order) and the watermark read before them."""
    row = s.order_row(order_id)
    if row["state"] != "submitted":
        raise not_ready(row, s.conn, "approve")
    # Read before the results: if the order moves before approve's transaction (a reject --requeue and a
    # resubmission leave it 'submitted' again, with other results), the transaction sees a newer event.
    seen = watermark(s.conn, order_id)
    order = {"id": row["id"], "type": row["type"], "payload": loads(row["payload"])}
    # A submitted item is not touched again before approve, so its updated_at is its submit time.
    items = [{"id": r[0], "state": r[1], "result": loads(r[2]), "submitted_by": r[3], "submitted_at": r[4]}
             for r in s.conn.execute("SELECT i.id, i.state, r.result, r.submitted_by, i.updated_at FROM items i "
                                     "LEFT JOIN item_results r ON r.n = i.n WHERE i.order_id = ? ORDER BY i.seq",
                                     (order_id,))]
    return order, items, seen

def approve(s: Session, order_id: str, *, actor: Actor, dry_run: bool = False,
            idempotency_key: str | None = None) -> dict[str, Any]:
    guard = Guard.make(f"approve:{order_id}", None if dry_run else idempotency_key, {"order_id": order_id})
    if (earlier := guard.replay(s.conn)) is not None:
        return earlier
    order, items, seen = _read(s, order_id)
    order_type = get_type(order["type"])
    problems = order_type.can_approve(order["payload"], [it["result"] for it in items])
    if problems:
        raise Invalid("the order cannot be approved: " + "; ".join(p["message"] for p in problems),
                      code="approval_check_failed", details=problems)
    settings = s.type_settings(order["type"], order_type.settings_keys)
    if dry_run:
        return {"order": {"id": order_id, "state": "submitted"},
                "diff": _dry_run(s, order_type, settings, order, items), "dry_run": True}
    hooks = outbox.configured(s.config)  # a malformed [[webhooks]] is refused here, before anything is written
    prepared = _prepare(s, order_type, settings, order, items)  # reads, parses and diffs: no lock held
    now = s.now()
    staging = _context(s.conn, s, settings, now, prepared)
    order_type.stage_applied(staging, order, items)  # small transactions of its own
    committed = False
    try:
        response = _commit(s, order_type, settings, order, items, seen, guard, hooks, actor, now, prepared)
        committed = True
    finally:
        if not committed:
            _unstage(order_type, staging)
    return response

def _unstage(order_type: OrderType, ctx: ApplyContext) -> None:
    try:
        order_type.unstage_applied(ctx)
    except (Exception, KeyboardInterrupt):  # noqa: BLE001 — best effort: staged rows of a failed approve never count
        pass

def _commit(s: Session, order_type: OrderType, settings: dict[str, Any], order: dict[str, Any],
            items: list[dict[str, Any]], seen: int, guard: Guard, hooks: list[outbox.Webhook], actor: Actor,
            now: str, prepared: Any) -> dict[str, Any]:
    """The write transaction(s) of an approve: check nothing moved, apply, record, complete."""
    order_id = order["id"]
    target = s.target()
    applied: tuple[dict[str, Any], Encoded] | None = None
    if not target.same:
        # Separate file: commit the apply + marker there first; a crash before the store commit is
        # healed by the next approve, which finds the marker and does not apply again.
        # The check runs under the target's write lock, which reject also takes before it looks for the
        # marker: a reject either ran before (seen here) or runs after this commit (and sees the marker).
        with target as tconn, _refusals(tconn):
            with write_tx(tconn):
                _check_unchanged(s.conn, order_id, seen)
                applied = _apply_once(tconn, order_type, _context(tconn, s, settings, now, prepared), order, items)
        _crash_point("after_target_commit")
    with s.conn.durable():  # the apply's commit is the one that must survive power loss
        with _refusals(s.conn), write_tx(s.conn) as conn:
            if (earlier := guard.replay(conn)) is not None:
                return earlier
            _check_unchanged(conn, order_id, seen)
            diff, diff_json = applied or _apply_once(conn, order_type, _context(conn, s, settings, now, prepared),
                                                     order, items)
            _finish(conn, order_id, items, diff, diff_json, actor, now)
            order_type.record_applied(conn, order, items, diff, now)
            outbox.enqueue(conn, hooks, order, diff, now)  # sent after the commit (Workctl.approve)
            response = {"order": {"id": order_id, "state": "completed"}, "diff": diff}
            guard.record(conn, response, now)
            _crash_point("before_store_commit")
    _crash_point("after_store_commit")
    _after_apply(s, order_type, order, diff)
    return response

def _context(conn: Connection, s: Session, settings: dict[str, Any], now: str | None,
             prepared: Any, *, dry_run: bool = False) -> ApplyContext:
    return ApplyContext(target=conn, settings=settings, now=now, store=s.conn, prepared=prepared, dry_run=dry_run)

def _prepare(s: Session, order_type: OrderType, settings: dict[str, Any], order: dict[str, Any],
             items: list[dict[str, Any]]) -> Any:
    """The type's preparation in one read transaction of the target (a consistent snapshot, no lock)."""
    with s.target() as tconn:
        tconn.execute("BEGIN")
        try:
            return order_type.prepare_apply(_context(tconn, s, settings, None, None), order, items)
        finally:
            tconn.execute("ROLLBACK")

@contextmanager
def _refusals(conn: Connection) -> Iterator[None]:
    """A COMMIT the target refused (a deferred foreign key of users): ``apply_refused`` naming the rows,
    found while the failed transaction is still open, then rolled back. Statement-level refusals are
    named by the type's apply; anything else is left to the store's error translation."""
    try:
        yield
    except targets.integrity_errors(conn) as exc:
        found: list[targets.Refusal] = []
        if conn.in_transaction:
            try:
                found = targets.foreign_key_refusals(conn)
            finally:
                conn.execute("ROLLBACK")
        if found:
            raise targets.refused(found, when=" at commit") from exc
        raise

def _dry_run(s: Session, order_type: OrderType, settings: dict[str, Any], order: dict[str, Any],
             items: list[dict[str, Any]]) -> dict[str, Any]:
    """The diff approve would produce: the type's preparation (and, for a type that prepares nothing, its
    apply in a transaction that is rolled back)."""
    with s.target() as tconn:
        tconn.execute("BEGIN")
        try:
            ctx = _context(tconn, s, settings, None, None, dry_run=True)
            ctx.prepared = order_type.prepare_apply(ctx, order, items)
            return order_type.apply(ctx, order, items)
        finally:
            tconn.execute("ROLLBACK")

def _after_apply(s: Session, order_type: OrderType, order: dict[str, Any], diff: dict[str, Any]) -> None:
    """The type's post-commit hook; its failure is recorded as an event (if the store lets us), never
    undoes the apply and never changes approve's outcome."""
    try:
        order_type.after_apply(order, diff)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 — the apply is committed
        try:
            with write_tx(s.conn) as conn:
                append_event(conn, now=s.now(), actor=Actor.system(), event="after_apply_failed", entity="order",
                             order_id=order["id"], payload={"error": str(exc) or type(exc).__name__})
        except (Exception, KeyboardInterrupt):  # noqa: BLE001 — a locked store must not turn success into failure
            pass

def _finish(conn: Connection, order_id: str, items: list[dict[str, Any]], diff: dict[str, Any],
            diff_json: Encoded, actor: Actor, now: str) -> None:
    move_order(conn, order_id=order_id, current="submitted", target="approved", now=now, actor=actor,
               sets={"approved_at": now})
    # The event names the diff; the diff itself is stored once, in orders.diff (a 1M-user diff is ~250 MB,
    # and the events table stays lean: every transition appends to it).
    summary = {"summary": diff.get("summary"), "stats": diff.get("stats"), "changes": len(diff.get("changes") or ()),
               "stored_in": "orders.diff"}
    move_order(conn, order_id=order_id, current="approved", target="applied", now=now, actor=Actor.system(),
               payload={"diff": summary}, sets={"applied_at": now, "diff": diff_json})
    for item in items:
        move_item(conn, item_id=item["id"], order_id=order_id, current="submitted", target="accepted",
                  now=now, actor=actor)
        move_item(conn, item_id=item["id"], order_id=order_id, current="accepted", target="completed",
                  now=now, actor=Actor.system())
    move_order(conn, order_id=order_id, current="applied", target="completed", now=now, actor=Actor.system(),
               payload={"summary": diff.get("summary")}, sets={"completed_at": now})

def preview(s: Session, order_id: str, *, actor: Actor) -> dict[str, Any]:
    """``workctl diff``: what approve would change (a submitted order) or changed (a completed one).

    A submitted order is previewed by approve's own dry run, so the preview cannot drift from what
    approve writes. Masking sensitive values is the renderer's job: the document returned is exact."""
    row = s.order_row(order_id)
    order = {"id": row["id"], "type": row["type"], "state": row["state"]}
    if row["state"] == "completed":
        return {"order": order, "applied": True, "diff": loads(row["diff"]) or {}}
    if row["state"] != "submitted":
        raise not_ready(row, s.conn, "preview")
    result = approve(s, order_id, actor=actor, dry_run=True)
    return {"order": order, "applied": False, "diff": result["diff"]}

ApproveFn = Callable[..., dict[str, Any]]
