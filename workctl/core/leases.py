"""Leases: the atomic claim (checkout), heartbeat, release, and reclaiming expired leases.

Every follow-up write is fenced: ``WHERE id = ? AND state = 'leased' AND leased_by = ? AND
lease_expires_at > now AND lease_token = ?``. No write path accepts a missing token (``require_token``:
exit 2), so a stale process with the same agent id can never overwrite work that was re-leased. Zero
rows means the lease is gone, and nothing was written; the caller then reads the row once to say
precisely why.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ..clock import after
from ..errors import Conflict, IllegalTransition, LeaseLost, NoWork, Usage
from ..jsonio import dumps, loads
from ..limits import MAX_TTL_SECONDS, bounded_int
from ..store.sqlite import write_tx
from ..types import get_type
from .ids import new_token
from .lifecycle import Actor, append_event, move_item, refresh_order
from .session import Session

_LEASE_CLEARED = {"leased_by": None, "lease_token": None, "lease_expires_at": None, "visible_at": ""}
_FENCE = " AND leased_by = ? AND lease_expires_at > ? AND lease_token = ?"
_CLAIM_COLUMNS = "id, order_id, state, attempts, max_attempts, leased_by"
# The claim: the first claimable item in priority-then-age order, by one seek on a partial index
# that holds only queued/leased rows (see migrations). visible_at <= now admits queued rows ('') and
# leases that have expired.
# INDEXED BY on the any-order claim: without ANALYZE statistics SQLite otherwise prefers items_state
# (state IN …) and sorts every claimable row in a temp b-tree on each claim (O(queued) per checkout).
_CLAIM_ANY = (f"SELECT {_CLAIM_COLUMNS} FROM items INDEXED BY items_claim WHERE state IN ('queued', 'leased') "
              "AND visible_at <= ? ORDER BY priority DESC, n LIMIT 1")
_CLAIM_ORDER = (f"SELECT {_CLAIM_COLUMNS} FROM items WHERE state IN ('queued', 'leased') AND order_id = ? "
                "AND visible_at <= ? ORDER BY n LIMIT 1")
_CLAIM_TYPE = (f"SELECT {_CLAIM_COLUMNS} FROM items WHERE state IN ('queued', 'leased') AND type = ? "
               "AND visible_at <= ? ORDER BY priority DESC, n LIMIT 1")


def lease_ttl(s: Session, ttl: int | None) -> int:
    """The lease length asked for (bounded), or the configured one."""
    if ttl is None:
        return int(s.config.ttl_seconds)
    return bounded_int(ttl, "ttl", 1, MAX_TTL_SECONDS)


def claim_query(order_id: str | None, type_name: str | None, now: str) -> tuple[str, tuple[Any, ...]]:
    if order_id:
        return _CLAIM_ORDER, (order_id, now)
    if type_name:
        return _CLAIM_TYPE, (type_name, now)
    return _CLAIM_ANY, (now,)


def checkout(s: Session, *, agent: str, order_id: str | None = None, type_name: str | None = None,
             ttl: int | None = None) -> dict[str, Any]:
    """Lease the next claimable item; raise NoWork (exit 3) when there is none."""
    ttl = lease_ttl(s, ttl)
    if order_id:
        s.order_row(order_id)  # NotFound before taking any lock
    if type_name:
        get_type(type_name)  # an unknown type is exit 4, not "no work"
    now = s.now()
    expires = after(s.clock(), ttl)
    sql, params = claim_query(order_id, type_name, now)
    claimed = None
    with write_tx(s.conn) as conn:
        while claimed is None:
            row = conn.execute(sql, params).fetchone()
            if row is None:
                break
            item_id, item_order, state, attempts, max_attempts, holder = row
            if state == "leased":  # an expired lease: reclaimed by this claim, no sweeper needed
                if attempts >= max_attempts:
                    _exhaust(conn, item_id, item_order, state, attempts, now, holder)
                    continue
                move_item(conn, item_id=item_id, order_id=item_order, current="leased", target="queued",
                          now=now, actor=Actor.system(), event="lease_expired",
                          payload={"agent": holder, "attempts": attempts}, sets=_LEASE_CLEARED)
            elif attempts >= max_attempts:  # requeued for rework with no attempts left
                _exhaust(conn, item_id, item_order, "queued", attempts, now, None)
                continue
            token = new_token()
            move_item(conn, item_id=item_id, order_id=item_order, current="queued", target="leased",
                      now=now, actor=Actor("agent", agent),
                      payload={"lease_expires_at": expires, "attempt": attempts + 1},
                      sets={"attempts": attempts + 1, "leased_by": agent, "lease_token": token,
                            "lease_expires_at": expires, "visible_at": expires, "last_heartbeat_at": now})
            refresh_order(conn, item_order, now=now)
            claimed = item_id, token
    if claimed is None:
        scope = f"order {order_id}" if order_id else (f"type {type_name}" if type_name else "any order")
        waiting = s.conn.execute(
            "SELECT count(*), min(visible_at) FROM items WHERE state = 'queued' AND visible_at > ?"
            + (" AND order_id = ?" if order_id else " AND type = ?" if type_name else ""),
            (now, *([order_id] if order_id else [type_name] if type_name else []))).fetchone()
        later = f"; {waiting[0]} waiting to be retried, the first at {waiting[1]}" if waiting[0] else ""
        raise NoWork(f"no items available to check out ({scope}){later}")
    row = s.item_row(claimed[0])
    return {"item": {
        "id": row["id"], "order_id": row["order_id"], "type": row["type"], "state": row["state"],
        "input": loads(row["input"]), "attempts": row["attempts"], "max_attempts": row["max_attempts"],
        "lease_expires_at": row["lease_expires_at"],
        "heartbeat_every_seconds": s.config.heartbeat_every_seconds, "lease_token": claimed[1]}}


def _exhaust(conn: sqlite3.Connection, item_id: str, order_id: str, state: str, attempts: int, now: str,
             holder: str | None) -> None:
    error = {"code": "max_attempts_exceeded", "message": f"gave up after {attempts} attempts",
             "last_agent": holder}
    move_item(conn, item_id=item_id, order_id=order_id, current=state, target="failed", now=now,
              actor=Actor.system(), payload=error, sets={**_LEASE_CLEARED, "error": dumps(error)})
    refresh_order(conn, order_id, now=now)


def require_token(token: str | None, action: str) -> str:
    """The lease token of a fenced write, or exit 2 saying how to pass it (the variable first: an option's
    value shows in ``ps``)."""
    if not token:
        raise Usage(f"{action} needs the lease token that checkout printed: set WORKCTL_LEASE_TOKEN=<token> in "
                    "the environment (preferred: it does not show in ps) or pass --lease-token <token>",
                    code="lease_token_required")
    return token


def lease_problem(row: sqlite3.Row, agent: str, token: str, now: str) -> Conflict:
    """Why a fenced write to this item by this agent cannot proceed."""
    item = row["id"]
    if row["state"] == "cancelled":
        return Conflict(f"item {item}'s order {row['order_id']} was cancelled; stop working on it (nothing was "
                        "written)", code="order_cancelled")
    if row["state"] != "leased":
        return IllegalTransition(f"item {item} is '{row['state']}', not leased; check it out first",
                                 code="not_leased")
    if row["leased_by"] != agent:
        return Conflict(f"item {item} is leased by agent '{row['leased_by']}', not '{agent}'",
                        code="lease_held_by_other")
    if row["lease_expires_at"] <= now:
        return LeaseLost(f"lease on item {item} expired at {row['lease_expires_at']}; check out again",
                         code="lease_expired")
    if row["lease_token"] != token:
        return LeaseLost(f"lease token does not match the current lease on item {item} (the item was checked "
                         "out again since, or the token is wrong)",
                         code="stale_lease_token")
    return Conflict(f"item {item} changed concurrently; retry", code="lease_lost")


def fence(agent: str, token: str, now: str) -> tuple[str, tuple[Any, ...]]:
    return _FENCE, (agent, now, token)


def check_lease(s: Session, item_id: str, agent: str, token: str) -> sqlite3.Row:
    """Read-only pre-check (no lock) so bad requests fail fast; the fenced write re-checks."""
    row = s.item_row(item_id)
    now = s.now()
    if (row["state"] == "leased" and row["leased_by"] == agent and row["lease_expires_at"] > now
            and row["lease_token"] == token):
        return row
    raise lease_problem(row, agent, token, now)


def heartbeat(s: Session, item_id: str, *, agent: str, ttl: int | None = None,
              token: str | None = None) -> dict[str, Any]:
    token = require_token(token, "heartbeat")
    ttl = lease_ttl(s, ttl)
    check_lease(s, item_id, agent, token)
    now = s.now()
    expires = after(s.clock(), ttl)
    guard, guard_params = fence(agent, token, now)
    with write_tx(s.conn) as conn:
        cursor = conn.execute(
            "UPDATE items SET lease_expires_at = ?, visible_at = ?, last_heartbeat_at = ?, updated_at = ? "
            f"WHERE id = ? AND state = 'leased'{guard}", (expires, expires, now, now, item_id, *guard_params))
        if cursor.rowcount != 1:
            raise lease_problem(s.item_row(item_id), agent, token, now)
        row = s.item_row(item_id)
        append_event(conn, now=now, actor=Actor("agent", agent), event="heartbeat", entity="item",
                     order_id=row["order_id"], item_id=item_id, payload={"lease_expires_at": expires})
    return {"item": {"id": item_id, "state": "leased", "lease_expires_at": expires,
                     "heartbeat_every_seconds": s.config.heartbeat_every_seconds}}


def release(s: Session, item_id: str, *, agent: str, error: str | None = None, token: str | None = None,
            unavailable: str | None = None, failed_users: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Give the lease back. Without an error the attempt does not count and the item is claimable at
    once. With one, the attempt counts: an item that has used its last attempt fails, any other waits
    out an exponential backoff (retry_backoff_seconds · 2^(attempt-1), capped) before it can be
    claimed again, so a failing item is not hammered in a tight loop.

    ``unavailable`` (the source's name) is an outage, not the item's fault: the error is recorded as
    ``source_unavailable`` but the attempt does not count; the item waits out the first backoff step.
    ``failed_users`` go to the type's failure ledger in the same transaction (``record_released``)."""
    token = require_token(token, "release")
    row = check_lease(s, item_id, agent, token)
    now = s.now()
    guard, guard_params = fence(agent, token, now)
    counted = bool(error) and not unavailable
    attempts = row["attempts"] if counted else max(row["attempts"] - 1, 0)
    failed = counted and attempts >= row["max_attempts"]
    record: dict[str, Any] | None = None
    if unavailable:
        record = {"code": "source_unavailable", "message": error, "source": unavailable, "agent": agent}
    elif error:
        record = {"code": "released_with_error", "message": error, "agent": agent}
    target = "failed" if failed else "queued"
    retry_at = _retry_at(s, max(attempts, 1)) if record and not failed else ""
    payload: dict[str, Any] = {"attempts": attempts}
    if record:
        payload.update(error=error, retry_at=retry_at or None)
    if unavailable:
        payload.update(reason="source_unavailable", source=unavailable, attempt_counted=False)
    with write_tx(s.conn) as conn:
        moved = move_item(conn, item_id=item_id, order_id=row["order_id"], current="leased", target=target,
                          now=now, actor=Actor("agent", agent), event="failed" if failed else "released",
                          payload=payload,
                          sets={**_LEASE_CLEARED, "attempts": attempts, "visible_at": retry_at,
                                "error": dumps(record) if record else row["error"]},
                          guard=guard, guard_params=guard_params)
        if not moved:
            raise lease_problem(s.item_row(item_id), agent, token, now)
        if failed_users:
            get_type(row["type"]).record_released(conn, {"id": item_id, "order_id": row["order_id"],
                                                         "input": loads(row["input"]), "attempts": row["attempts"]},
                                                  failed_users, now)
        order_state = refresh_order(conn, row["order_id"], now=now)
    return {"item": {"id": item_id, "state": target, "attempts": attempts, "max_attempts": row["max_attempts"],
                     "retry_at": retry_at or None, "attempt_counted": counted},
            "order": {"id": row["order_id"], "state": order_state}}


def _retry_at(s: Session, attempts: int) -> str:
    base, cap = s.config.retry_backoff_seconds, s.config.retry_backoff_cap_seconds
    if base <= 0:
        return ""
    return after(s.clock(), min(cap, base * 2 ** max(attempts - 1, 0)))


def reclaim_expired(conn: sqlite3.Connection, now: str) -> dict[str, int]:
    """maintain's bulk sweep: expired leases go back to the queue, or fail at max_attempts."""
    rows = conn.execute(
        "SELECT id, order_id, attempts, max_attempts, leased_by FROM items "
        "WHERE state = 'leased' AND lease_expires_at <= ?", (now,)).fetchall()
    counts = {"reclaimed": 0, "failed": 0}
    for item_id, order_id, attempts, max_attempts, holder in rows:
        if attempts >= max_attempts:
            _exhaust(conn, item_id, order_id, "leased", attempts, now, holder)
            counts["failed"] += 1
        else:
            move_item(conn, item_id=item_id, order_id=order_id, current="leased", target="queued", now=now,
                      actor=Actor.system(), event="lease_expired",
                      payload={"agent": holder, "attempts": attempts}, sets=_LEASE_CLEARED)
            refresh_order(conn, order_id, now=now)
            counts["reclaimed"] += 1
    return counts
