"""Read-only views: status, order listings, order detail and the audit log."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable, Iterator

from ..clock import iso, parse as parse_iso

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
    # ``visible_at > ''`` matches the partial index items_backoff: only items backing off are read.
    backing_off = conn.execute("SELECT count(*) FROM items WHERE state = 'queued' AND visible_at > '' "
                               "AND visible_at > ?", (now,)).fetchone()[0]
    return {"orders": orders, "items": items,
            "leases": {"held": held, "expired_waiting": expired}, "retry_waiting": backing_off, "as_of": now}


class Page:
    """A listing streamed from the store one row at a time (never all in memory), at most ``limit`` rows.
    Once iterated, ``more()`` counts the rows after the last one shown (one count query), for the
    "… N more" line of a listing cut by ``--limit``."""

    def __init__(self, rows: Iterator[dict[str, Any]], *, limit: int | None, key: str,
                 count_after: Callable[[Any], int]) -> None:
        self._rows, self._limit, self._key, self._count_after = rows, limit, key, count_after
        self.shown = 0
        self.last: Any = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self._rows:
            self.shown += 1
            self.last = row[self._key]
            yield row

    def more(self) -> int:
        if self._limit is None or self.shown < self._limit:
            return 0
        return self._count_after(self.last)


def _limit_sql(limit: int | None) -> tuple[str, list[Any]]:
    if limit is None:
        return "", []
    bounded_int(limit, "limit", 1, MAX_LIST_LIMIT)
    return " LIMIT ?", [limit]


def order_status(s: Session, order_id: str, *, events: int = 10, limit: int | None = 100,
                 after_seq: int = -1) -> dict[str, Any]:
    """One order: its counters per item state, progress and an ETA from the throughput observed since it
    started, a page of its items (by seq; ``items_more`` counts those after the page), its last events.
    O(page), whatever the number of items."""
    order = _order_brief(s, order_id)
    counts = _order_counts(s, order_id)
    total = sum(counts.values())
    # Items after a seq, from the counters: propose numbers an order's items 0..n-1 (no count over them).
    page = item_page(s, order_id, limit=limit, after_seq=after_seq, detail=False,
                     count_after=lambda seq: max(total - seq - 1, 0))
    items = list(page)
    done = sum(n for st, n in counts.items() if st in ITEM_DONE_STATES)
    return {"order": order, "items": items, "items_more": page.more(), "counts": counts,
            "progress": {"done": done, "total": total}, "eta": _eta(s, order_id, counts, done),
            "events": list(reversed(log(s, order_id, limit=events, newest_first=True)))}


STATUS_PAYLOAD_BYTES = 65_536  # characters; a larger payload (1M user ids: megabytes) is left to `show --json`


def _order_brief(s: Session, order_id: str) -> dict[str, Any]:
    """The order's summary; its payload only when small, else its first 200 characters (``payload_head``,
    with ``payload_omitted``). The payload is read once, and only up to the bound."""
    row = s.conn.execute("SELECT id, type, state, priority, item_count, requested_by, created_at, updated_at, "
                         "substr(payload, 1, ?) AS payload FROM orders WHERE id = ?",
                         (STATUS_PAYLOAD_BYTES + 1, order_id)).fetchone()
    if row is None:
        raise NotFound(f"no order with id '{order_id}'", code="order_not_found")
    start = row["payload"]
    if start is not None and len(start) > STATUS_PAYLOAD_BYTES:
        brief = order_summary({**dict(zip(row.keys(), row, strict=True)), "payload": None})
        brief.update(payload_omitted=True, payload_head=start[:200])
        return brief
    return order_summary(row)


def _order_counts(s: Session, order_id: str) -> dict[str, int]:
    row = s.conn.execute(f"SELECT {', '.join(ITEM_STATES)} FROM order_counts WHERE order_id = ?",
                         (order_id,)).fetchone()
    return dict(zip(ITEM_STATES, (int(n) for n in row), strict=True)) if row else dict.fromkeys(ITEM_STATES, 0)


def _eta(s: Session, order_id: str, counts: dict[str, int], done: int) -> dict[str, Any] | None:
    """Items still to hand out over the rate observed since the order started (its first ``started``
    event, found in the first few of its events). None before any item is done or once none is left."""
    remaining = counts["queued"] + counts["leased"]
    if not remaining or not done:
        return None
    row = s.conn.execute("SELECT created_at FROM events WHERE order_id = ? AND entity = 'order' "
                         "AND event = 'started' ORDER BY id LIMIT 1", (order_id,)).fetchone()
    if row is None:
        return None
    moment = s.clock()
    elapsed = (moment - parse_iso(row[0])).total_seconds()
    if elapsed <= 0:
        return None
    rate = done / elapsed
    seconds = remaining / rate
    return {"remaining": remaining, "items_per_second": round(rate, 3), "seconds": round(seconds, 1),
            "finishes_at": iso(moment + timedelta(seconds=seconds))}


def item_page(s: Session, order_id: str, *, limit: int | None = None, after_seq: int = -1,
              detail: bool = True, count_after: Callable[[int], int] | None = None) -> Page:
    """The order's items by seq, streamed; ``detail`` adds each item's input and result."""
    tail, extra = _limit_sql(limit)
    rows = s.conn.stream(ITEM_SELECT + " WHERE i.order_id = ? AND i.seq > ? ORDER BY i.seq" + tail,
                         [order_id, after_seq, *extra])

    def items() -> Iterator[dict[str, Any]]:
        for r in rows:
            item = item_summary(r)
            if detail:
                item.update({"input": loads(r["input"]), "result": loads(r["result"])})
            yield item

    def counted_after(seq: int) -> int:
        return int(s.conn.execute("SELECT count(*) FROM items WHERE order_id = ? AND seq > ?",
                                  (order_id, seq)).fetchone()[0])

    return Page(items(), limit=limit, key="seq", count_after=count_after or counted_after)


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


def order_detail(s: Session, order_id: str) -> dict[str, Any]:
    row = s.order_row(order_id)
    order = order_summary(row)
    order.update({"diff": loads(row["diff"]), "error": loads(row["error"]),
                  "submitted_at": row["submitted_at"], "approved_at": row["approved_at"],
                  "applied_at": row["applied_at"], "completed_at": row["completed_at"]})
    return order


def show(s: Session, order_id: str) -> dict[str, Any]:
    return {"order": order_detail(s, order_id), "items": list(item_page(s, order_id))}


def show_page(s: Session, order_id: str, *, limit: int | None = None, after_seq: int = -1,
              brief: bool = False) -> dict[str, Any]:
    """The order in full with its items as a Page (streamed, at most ``limit``). ``brief``: the order's
    summary without a large payload or diff (for a table or a listing of the items), not its whole detail."""
    if brief:
        order = _order_brief(s, order_id)
        diff_bytes, diff = s.conn.execute(
            "SELECT length(diff), CASE WHEN length(diff) <= ? THEN diff END FROM orders WHERE id = ?",
            (STATUS_PAYLOAD_BYTES * 16, order_id)).fetchone()
        order.update(diff=loads(diff), **({"diff_bytes": diff_bytes} if diff_bytes and diff is None else {}))
    else:
        order = order_detail(s, order_id)
    return {"order": order, "items": item_page(s, order_id, limit=limit, after_seq=after_seq)}


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
    s.order_head(order_id)
    direction = "DESC" if newest_first else "ASC"
    sql = (f"SELECT {_EVENT_COLUMNS} FROM events WHERE order_id = ? AND id > ? ORDER BY id {direction}"
           + (" LIMIT ?" if limit else ""))
    params: list[Any] = [order_id, after_id] + ([limit] if limit else [])
    return [_event(row) for row in s.conn.execute(sql, params)]


def log_page(s: Session, order_id: str, *, after_id: int = 0, since: str | None = None,
             limit: int | None = None) -> Page:
    """The order's events oldest first, streamed: after event ``after_id``, created at or after ``since``,
    at most ``limit`` (``more()`` counts the rest)."""
    s.order_head(order_id)  # not_found first; the payload (megabytes) is not read
    cond, params = "order_id = ? AND id > ?", [order_id, after_id]
    if since is not None:
        cond += " AND created_at >= ?"
        params.append(since)
    tail, extra = _limit_sql(limit)
    rows = s.conn.stream(f"SELECT {_EVENT_COLUMNS} FROM events WHERE {cond} ORDER BY id" + tail,
                         [*params, *extra])

    def count_after(last_id: int) -> int:
        return int(s.conn.execute(f"SELECT count(*) FROM events WHERE {cond}",
                                  [order_id, last_id, *params[2:]]).fetchone()[0])

    return Page((_event(row) for row in rows), limit=limit, key="id", count_after=count_after)


def pending_sources(s: Session, type_name: str, order_id: str | None = None) -> list[str]:
    """The distinct payload sources of orders of this type that still have work to hand out."""
    if order_id:
        row = s.order_head(order_id)  # the source column: the payload is megabytes at 1M users
        if row["type"] != type_name:
            raise Invalid(f"order {order_id} is a {row['type']} order; this command handles {type_name}",
                          code="wrong_order_type")
        return [row["source"] if row["source"] is not None else loads(s.order_row(order_id)["payload"])["source"]]
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
        s.order_head(order_id)
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
