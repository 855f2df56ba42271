"""The per-user error ledger (the seed's variation 1) and retries of exactly the failed users.

Every failed user of a submitted ``user.data.sync`` batch is written to ``sync_failures`` in the
submit's own transaction (``UserDataSync.record_submitted``): user, order, item, source, error class,
message, the item's attempt and the time. A batch that is refused (below ``min_success_ratio``) is
not submitted, so it writes nothing here; its error is on the item and in the audit trail.

The error class is what ``workctl sync`` puts before ``": "`` in each error (``not_found``,
``timeout``, ``http_404`` …); an agent's free-form error without such a prefix is class ``error``.

``retry_payload`` builds the follow-up order: the same source, fields and options, ``sync_mode``
full, ``retry_of`` the original order, and exactly the users that failed and have not been synced
since (by the original order after a requeue, or by an earlier retry of it).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from ...core.session import Session
from ...errors import Conflict, Invalid
from ...jsonio import loads
from ...limits import MAX_LIST_LIMIT, bounded_int
from ...store.sql import where
from ...store.base import Connection, Row

_CLASS = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
SYNC_TYPE = "user.data.sync"
# Options a retry inherits from the original order (user_ids are replaced; delta settings dropped).
_INHERITED = ("source", "fields", "batch_size", "max_attempts", "min_success_ratio", "field_map",
              "policies", "provenance_columns")


def error_class(message: str) -> str:
    prefix, sep, _ = message.partition(": ")
    return prefix if sep and _CLASS.match(prefix) else "error"


def record(conn: Connection, *, order_id: str, item_id: str, source: str,
           failed_users: Iterable[Mapping[str, Any]], attempt: int, now: str) -> int:
    """Write one ledger row per failed user (inside the caller's write transaction)."""
    rows = []
    for entry in failed_users:
        message = str(entry.get("error") or "failed")
        rows.append((order_id, item_id, int(entry["user_id"]), source, error_class(message), message,
                     attempt, now))
    if rows:
        conn.executemany(
            "INSERT INTO sync_failures (order_id, item_id, user_id, source, error_class, message, attempt, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return len(rows)


def _row(r: Row | tuple[Any, ...]) -> dict[str, Any]:
    keys = ("id", "order_id", "item_id", "user_id", "source", "error_class", "message", "attempt", "created_at")
    return dict(zip(keys, tuple(r), strict=True))


def failures_page(s: Session, order_id: str | None = None, *, source: str | None = None,
                  error_class: str | None = None, since: str | None = None, limit: int = 1000) -> dict[str, Any]:
    """The newest ``limit`` ledger rows, oldest first, and ``more``: how many older ones match too."""
    bounded_int(limit, "limit", 1, MAX_LIST_LIMIT)
    if order_id:
        s.order_head(order_id)  # order_not_found (exit 4) for an unknown id
    clause, params = where(order_id=order_id or None, source=source or None, error_class=error_class or None)
    if since is not None:
        clause = f"{clause} AND created_at >= ?" if clause else "WHERE created_at >= ?"
        params = [*params, since]
    rows = s.conn.execute(
        "SELECT id, order_id, item_id, user_id, source, error_class, message, attempt, created_at "
        f"FROM sync_failures {clause} ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
    more = 0
    if len(rows) == limit:
        older = f"{clause} AND id < ?" if clause else "WHERE id < ?"
        more = int(s.conn.execute(f"SELECT count(*) FROM sync_failures {older}", (*params, rows[-1][0])).fetchone()[0])
    return {"failures": [_row(r) for r in reversed(rows)], "more": more}


def _synced_by(s: Session, order_ids: list[str]) -> set[int]:
    """Users that the current results of these orders' items report as synced (or unchanged)."""
    done: set[int] = set()
    for order_id in order_ids:
        for (result,) in s.conn.execute("SELECT r.result FROM items i JOIN item_results r ON r.n = i.n "
                                        "WHERE i.order_id = ? AND r.result IS NOT NULL", (order_id,)):
            parsed = loads(result) or {}
            done.update(e["user_id"] for e in parsed.get("synced_users", []) if isinstance(e, dict))
            done.update(e["user_id"] for e in parsed.get("unchanged_users", []) if isinstance(e, dict))
    return done


def still_failed(s: Session, order_id: str) -> list[int]:
    """The order's failed users (ledger order) that no later result has synced."""
    ledger = [r[0] for r in s.conn.execute(
        "SELECT user_id FROM sync_failures WHERE order_id = ? ORDER BY id", (order_id,))]
    if not ledger:
        return []
    retries = [r[0] for r in s.conn.execute(
        "SELECT id FROM orders WHERE parent_id = ? AND type = ? AND state != 'rejected'", (order_id, SYNC_TYPE))]
    synced = _synced_by(s, [order_id, *retries])
    return [u for u in dict.fromkeys(ledger) if u not in synced]


def retry_payload(s: Session, order_id: str) -> dict[str, Any]:
    """The payload of a new order for exactly the failed users of ``order_id``."""
    row = s.order_row(order_id)
    if row["type"] != SYNC_TYPE:
        raise Invalid(f"order {order_id} is a {row['type']} order; --retry-failed handles {SYNC_TYPE}",
                      code="wrong_order_type")
    users = still_failed(s, order_id)
    if not users:
        raise Conflict(f"order {order_id} has no failed users left to retry (see workctl failures {order_id})",
                       code="not_retryable")
    original = loads(row["payload"])
    payload = {k: original[k] for k in _INHERITED if k in original}
    payload["user_ids"] = users
    payload["retry_of"] = order_id
    return payload
