"""propose: validate a payload against its type, plan it into items, and store order + items at once."""

from __future__ import annotations

from typing import Any

from ..errors import Invalid
from ..jsonio import dumps
from ..limits import PRIORITY_MAX, PRIORITY_MIN, bounded_int
from ..store import write_tx
from ..types import get_type
from .ids import new_id
from .idempotency import Guard
from .lifecycle import Actor, append_event
from .session import Session, order_summary


# Orders that are still open work: sync resumes one of these rather than proposing the same scope again.
OPEN_STATES = ("queued", "in_progress", "submitted", "approved", "applied", "failed", "dead_lettered")


def _open_order(conn: Any, scope_key: str) -> Any:
    return conn.execute(
        f"SELECT * FROM orders WHERE scope_key = ? AND state IN ({', '.join('?' for _ in OPEN_STATES)}) "
        "ORDER BY created_at, id LIMIT 1", (scope_key, *OPEN_STATES)).fetchone()


def propose(s: Session, type_name: str, payload: Any, *, priority: int = 0, actor: Actor,
            idempotency_key: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Validate, plan and store an order. With ``resume``, an open order of the same scope (the type's
    ``scope_key``) is returned instead (``"resumed": true``), looked up under the write lock so that two
    runs proposing at once end up with one order."""
    order_type = get_type(type_name)
    bounded_int(priority, "priority", PRIORITY_MIN, PRIORITY_MAX)
    guard = Guard.make("propose", idempotency_key, {"type": type_name, "payload": payload, "priority": priority})
    if (earlier := guard.replay(s.conn)) is not None:
        return earlier
    order_type.validate_payload(payload)
    with s.target() as target:
        prepared = order_type.prepare(payload, {**s.type_settings(type_name, order_type.settings_keys), "target": target,
                                                  "store": s.conn})
    # Streamed: each planned item becomes its row dict at once (no second list of PlannedItems).
    items = [{"id": new_id(), "state": "queued", "input": p.input, "max_attempts": p.max_attempts}
             for p in order_type.plan(prepared)]
    if not items:
        raise Invalid("the order plans no work items", code="empty_plan")
    scope_key = order_type.scope_key(prepared)
    now = s.now()
    order_id = new_id()
    response = {
        "order": {"id": order_id, "type": type_name, "state": "queued", "priority": priority,
                  "payload": prepared, "created_at": now},
        "items": items,
    }
    with write_tx(s.conn) as conn:
        if (earlier := guard.replay(conn)) is not None:
            return earlier
        if resume and scope_key:
            conn.exclusive(f"scope:{scope_key}")  # two syncs of one scope at once: one order, one resumes it
            if (open_row := _open_order(conn, scope_key)) is not None:
                resumed = {"order": order_summary(open_row), "resumed": True}
                guard.record(conn, resumed, now)
                return resumed
        conn.execute(
            "INSERT INTO orders (id, type, state, priority, payload, requested_by, item_count, created_at, "
            "updated_at, scope_key, source, parent_id) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (order_id, type_name, priority, dumps(prepared), f"{actor.type}:{actor.id}", len(items), now, now,
             scope_key, order_type.source(prepared), order_type.parent(prepared)))
        conn.execute("INSERT INTO order_counts (order_id, state, queued) VALUES (?, 'queued', ?)",
                     (order_id, len(items)))
        append_event(conn, now=now, actor=actor, event="proposed", entity="order", order_id=order_id,
                     to_state="queued", payload={"type": type_name, "priority": priority})
        conn.executemany(
            "INSERT INTO items (id, order_id, seq, type, state, priority, max_attempts, updated_at) "
            "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
            ((it["id"], order_id, seq, type_name, priority, it["max_attempts"], now) for seq, it in enumerate(items)))
        # Inputs by the item's number, which the store assigned (one unique-index seek per item).
        conn.executemany("INSERT INTO item_inputs (n, input) SELECT n, ? FROM items WHERE id = ?",
                         ((dumps(it["input"]), it["id"]) for it in items))
        # Item creation is logged once per order (not once per item) so that large plans stay bulk.
        append_event(conn, now=now, actor=Actor.system(), event="planned", entity="order", order_id=order_id,
                     payload={"item_count": len(items), "items_state": "queued"})
        guard.record(conn, response, now)
    return response
