"""Read-only views: status, order listings, order detail and the audit log."""

from __future__ import annotations

from typing import Any, Iterator

from ..errors import Invalid, NotFound
from ..jsonio import loads
from ..limits import MAX_LIST_LIMIT, bounded_int
from ..store.sql import where
from .lifecycle import ITEM_DONE_STATES, ITEM_STATES, ORDER_STATES
from .session import ITEM_SELECT, Session, item_summary, order_summary


def status(s: Session, order_id: str | None = None, *, events: int = 10) -> dict[str, Any]:
    if order_id:
        return order_status(s, order_id, events=events)
    conn, now = s.conn, s.now()
    orders = dict.fromkeys(ORDER_STATES, 0)
    orders.update(conn.execute("SELECT state, count(*) FROM orders GROUP BY state").fetchall())
    # Items per state from the orders' counters: O(orders), whatever the number of items.
    totals = conn.execute(f"SELECT {', '.join(f'coalesce(sum({st}), 0)' for st in ITEM_STATES)} "
                          "FROM order_counts").fetchone()
    items = dict(zip(ITEM_STATES, (int(n) for n in totals), strict=True))
    held, expired = conn.execute(
        "SELECT count(*) FILTER (WHERE lease_expires_at > ?), count(*) FILTER (WHERE lease_expires_at <= ?) "
        "FROM items WHERE state = 'leased'", (now, now)).fetchone()
    backing_off = conn.execute("SELECT count(*) FROM items WHERE state = 'queued' AND visible_at > ?",
                               (now,)).fetchone()[0]
    return {"orders": orders, "items": items,
            "leases": {"held": held, "expired_waiting": expired}, "retry_waiting": backing_off, "as_of": now}


def order_status(s: Session, order_id: str, *, events: int = 10) -> dict[str, Any]:
    order = order_summary(s.order_row(order_id))
    items = [item_summary(r) for r in s.conn.execute(ITEM_SELECT + " WHERE i.order_id = ? ORDER BY i.seq",
                                                     (order_id,))]
    done = sum(1 for it in items if it["state"] in ITEM_DONE_STATES)
    return {"order": order, "items": items, "progress": {"done": done, "total": len(items)},
            "events": list(reversed(log(s, order_id, limit=events, newest_first=True)))}


def list_orders(s: Session, *, state: str | None = None, type_name: str | None = None,
                limit: int = 100) -> Iterator[dict[str, Any]]:
    bounded_int(limit, "limit", 1, MAX_LIST_LIMIT)
    clause, params = where(state=state or None, type=type_name or None)
    for row in s.conn.execute(f"SELECT * FROM orders {clause} ORDER BY created_at DESC, id DESC LIMIT ?",
                              [*params, limit]):
        yield order_summary(row)


def count_orders(s: Session, *, state: str | None = None, type_name: str | None = None) -> int:
    clause, params = where(state=state or None, type=type_name or None)
    return int(s.conn.execute(f"SELECT count(*) FROM orders {clause}", params).fetchone()[0])


def show(s: Session, order_id: str) -> dict[str, Any]:
    row = s.order_row(order_id)
    order = order_summary(row)
    order.update({"diff": loads(row["diff"]), "error": loads(row["error"]),
                  "submitted_at": row["submitted_at"], "approved_at": row["approved_at"],
                  "applied_at": row["applied_at"], "completed_at": row["completed_at"]})
    items = []
    for r in s.conn.execute(ITEM_SELECT + " WHERE i.order_id = ? ORDER BY i.seq", (order_id,)):
        item = item_summary(r)
        item.update({"input": loads(r["input"]), "result": loads(r["result"])})
        items.append(item)
    return {"order": order, "items": items}


def _event(row: tuple[Any, ...]) -> dict[str, Any]:
    keys = ("id", "order_id", "item_id", "entity", "event", "from", "to", "actor_type", "actor_id",
            "payload", "created_at")
    event = dict(zip(keys, row, strict=True))
    event["payload"] = loads(event["payload"])
    return event


_EVENT_COLUMNS = ("id, order_id, item_id, entity, event, from_state, to_state, actor_type, actor_id, "
                  "payload, created_at")


def log(s: Session, order_id: str, *, after_id: int = 0, limit: int | None = None,
        newest_first: bool = False) -> list[dict[str, Any]]:
    """Every event of the order and its items, oldest first (or the newest ``limit``)."""
    s.order_row(order_id)
    direction = "DESC" if newest_first else "ASC"
    sql = (f"SELECT {_EVENT_COLUMNS} FROM events WHERE order_id = ? AND id > ? ORDER BY id {direction}"
           + (" LIMIT ?" if limit else ""))
    params: list[Any] = [order_id, after_id] + ([limit] if limit else [])
    return [_event(row) for row in s.conn.execute(sql, params)]


def pending_sources(s: Session, type_name: str, order_id: str | None = None) -> list[str]:
    """The distinct payload sources of orders of this type that still have work to hand out."""
    if order_id:
        row = s.order_row(order_id)
        if row["type"] != type_name:
            raise Invalid(f"order {order_id} is a {row['type']} order; this command handles {type_name}",
                          code="wrong_order_type")
        return [loads(row["payload"])["source"]]
    return [r[0] for r in s.conn.execute(
        "SELECT DISTINCT source FROM orders WHERE type = ? AND source IS NOT NULL "
        "AND state IN ('queued', 'in_progress') ORDER BY 1", (type_name,))]


def pending_items(s: Session, *, order_id: str | None = None, type_name: str | None = None) -> int:
    """Items still to hand out (queued or leased)."""
    if order_id:  # from the order's counters: one row
        counts = s.conn.execute("SELECT queued + leased FROM order_counts WHERE order_id = ?", (order_id,)).fetchone()
        return int(counts[0]) if counts else 0
    sql = "SELECT coalesce(sum(c.queued + c.leased), 0) FROM order_counts c"
    if type_name:
        sql += " JOIN orders o ON o.id = c.order_id WHERE o.type = ?"
    return int(s.conn.execute(sql, (type_name,) if type_name else ()).fetchone()[0])


def item_log(s: Session, item_id: str, *, limit: int = 100) -> dict[str, Any]:
    """The item's own events and its order's order-level events, oldest first (the newest ``limit``)."""
    order_id = s.item_row(item_id)["order_id"]
    rows = s.conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE order_id = ? AND (item_id = ? OR item_id IS NULL) "
        "ORDER BY id DESC LIMIT ?", (order_id, item_id, limit)).fetchall()
    return {"item_id": item_id, "order_id": order_id, "events": [_event(r) for r in reversed(rows)]}


def has_leased(s: Session, agent_prefix: str, *, order_id: str | None = None, item_id: str | None = None) -> bool:
    """Whether ``agent_prefix`` (exactly, or as ``agent_prefix/…``) has a 'leased' event on the item or order."""
    if item_id is not None:
        order_id = s.item_row(item_id)["order_id"]
    elif order_id is not None:
        s.order_row(order_id)
    prefix = agent_prefix + "/"  # compared exactly (LIKE would be case-insensitive and see wildcards)
    sql = ("SELECT 1 FROM events WHERE order_id = ? AND event = 'leased' AND actor_type = 'agent' "
           "AND (actor_id = ? OR substr(actor_id, 1, ?) = ?)")
    params: list[Any] = [order_id, agent_prefix, len(prefix), prefix]
    if item_id is not None:
        sql += " AND item_id = ?"
        params.append(item_id)
    return s.conn.execute(sql + " LIMIT 1", params).fetchone() is not None


def troubles(s: Session, *, order_id: str | None = None, type_name: str | None = None,
             limit: int = 20) -> dict[str, Any]:
    """What an agent run must not call a success in its scope (one order, one type, or all): orders that are
    failed or dead-lettered (until an operator retries or cancels them), and items waiting because their
    source was unavailable at their last attempt."""
    clause, params = where(id=order_id, type=None if order_id else type_name)
    extra = f"{clause} AND" if clause else "WHERE"
    failed = [{"id": r[0], "type": r[1], "state": r[2]} for r in s.conn.execute(
        f"SELECT id, type, state FROM orders {extra} state IN ('failed', 'dead_lettered') "
        "ORDER BY created_at LIMIT ?", (*params, limit))]
    scope, scope_params = ("i.order_id = ? AND", [order_id]) if order_id else \
        ("i.type = ? AND", [type_name]) if type_name else ("", [])
    waiting = []
    for oid, items, error in s.conn.execute(
            f"SELECT i.order_id, count(*), max(r.error) FROM items i JOIN item_results r ON r.n = i.n "
            f"WHERE {scope} i.state = 'queued' AND r.error LIKE ? GROUP BY i.order_id ORDER BY i.order_id LIMIT ?",
            (*scope_params, '{"code":"source_unavailable"%', limit)):
        record = loads(error) or {}
        waiting.append({"order_id": oid, "items": items, "source": record.get("source"),
                        "error": record.get("message")})
    return {"failed_orders": failed, "waiting_for_source": waiting}


def order_state(s: Session, order_id: str) -> str:
    """Just the state (the payload of a big order is megabytes: not read here)."""
    row = s.conn.execute("SELECT state FROM orders WHERE id = ?", (order_id,)).fetchone()
    if row is None:
        raise NotFound(f"no order with id '{order_id}'", code="order_not_found")
    return str(row[0])
