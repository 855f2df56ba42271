"""Leases: the atomic claim (checkout), heartbeat, release, and reclaiming expired leases.

Every follow-up write is fenced: ``WHERE id = ? AND state = 'leased' AND leased_by = ? AND
lease_expires_at > now AND lease_token = ?``. No write path accepts a missing token (``require_token``:
exit 2), so a stale process with the same agent id can never overwrite work that was re-leased. Zero
rows means the lease is gone, and nothing was written; the caller then reads the row once to say
precisely why.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from ..clock import after
from ..errors import Conflict, IllegalTransition, LeaseLost, NoWork, Usage
from ..jsonio import loads
from ..limits import MAX_TTL_SECONDS, bounded_int
from ..store.hotpath import Claim, Leased, Released
from ..store.sql import where
from ..store import write_tx
from ..types import get_type
from .ids import new_token
from .session import Session

def lease_ttl(s: Session, ttl: int | None) -> int:
    """The lease length asked for (bounded), or the configured one."""
    if ttl is None:
        return int(s.config.ttl_seconds)
    return bounded_int(ttl, "ttl", 1, MAX_TTL_SECONDS)


def checkout(s: Session, *, agent: str, order_id: str | None = None, type_name: str | None = None,
             ttl: int | None = None) -> dict[str, Any]:
    """Lease the next claimable item (an expired lease is claimable: the claim reclaims it, no sweeper
    needed); raise NoWork (exit 3) when there is none."""
    ttl = lease_ttl(s, ttl)
    if order_id:
        s.order_head(order_id)  # NotFound before taking any lock (the payload is not read)
    if type_name:
        get_type(type_name)  # an unknown type is exit 4, not "no work"
    now = s.now()
    request = Claim(agent=agent, token=new_token(), expires=after(s.clock(), ttl), order_id=order_id,
                    type_name=type_name)
    leased = s.hot.claim(s.conn, request, now)  # atomic on its own: one transaction
    if leased is None:
        raise no_work(s, order_id, type_name, now)
    return {"item": leased_item(s, leased)}


def leased_item(s: Session, leased: Leased) -> dict[str, Any]:
    """The checkout response's item."""
    return {"id": leased.id, "order_id": leased.order_id, "type": leased.type, "state": "leased",
            "input": loads(leased.input), "attempts": leased.attempts, "max_attempts": leased.max_attempts,
            "lease_expires_at": leased.lease_expires_at,
            "heartbeat_every_seconds": s.config.heartbeat_every_seconds, "lease_token": leased.lease_token}


def no_work(s: Session, order_id: str | None, type_name: str | None, now: str) -> NoWork:
    scope = f"order {order_id}" if order_id else (f"type {type_name}" if type_name else "any order")
    clause, params = where(order_id=order_id, type=None if order_id else type_name)
    clause = f"{clause} AND" if clause else "WHERE"
    waiting = s.conn.execute(f"SELECT count(*), min(visible_at) FROM items {clause} state = 'queued' "
                             "AND visible_at > ?", (*params, now)).fetchone()
    later = f"; {waiting[0]} waiting to be retried, the first at {waiting[1]}" if waiting[0] else ""
    return NoWork(f"no items available to check out ({scope}){later}")


def require_token(token: str | None, action: str) -> str:
    """The lease token of a fenced write, or exit 2 saying how to pass it (the variable first: an option's
    value shows in ``ps``)."""
    if not token:
        raise Usage(f"{action} needs the lease token that checkout printed: set WORKCTL_LEASE_TOKEN=<token> in "
                    "the environment (preferred: it does not show in ps) or pass --lease-token <token>",
                    code="lease_token_required")
    return token


def lease_problem(row: Any, agent: str, token: str, now: str) -> Conflict:
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


def check_lease(s: Session, item_id: str, agent: str, token: str) -> Any:
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
    if s.hot.heartbeat(s.conn, item_id=item_id, agent=agent, token=token, expires=expires, now=now) is None:
        raise lease_problem(s.item_row(item_id), agent, token, now)
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
    release = Released(state=target, attempts=attempts, retry_at=retry_at, error=record, payload=payload)
    # The release is atomic on its own; the failed users it reports are recorded in the same transaction.
    with write_tx(s.conn) if failed_users else nullcontext(s.conn) as conn:
        order_state = s.hot.release(conn, item_id=item_id, agent=agent, token=token, now=now, release=release)
        if order_state is None:
            raise lease_problem(s.item_row(item_id), agent, token, now)
        if failed_users:
            get_type(row["type"]).record_released(conn, {"id": item_id, "order_id": row["order_id"],
                                                         "input": loads(row["input"]), "attempts": row["attempts"]},
                                                  failed_users, now)
    return {"item": {"id": item_id, "state": target, "attempts": attempts, "max_attempts": row["max_attempts"],
                     "retry_at": retry_at or None, "attempt_counted": counted},
            "order": {"id": row["order_id"], "state": order_state}}


def _retry_at(s: Session, attempts: int) -> str:
    base, cap = s.config.retry_backoff_seconds, s.config.retry_backoff_cap_seconds
    if base <= 0:
        return ""
    return after(s.clock(), min(cap, base * 2 ** max(attempts - 1, 0)))


def reclaim_expired(s: Session, conn: Any, now: str) -> dict[str, int]:
    """maintain's bulk sweep: expired leases go back to the queue, or fail at max_attempts."""
    requeued, failed = s.hot.reclaim_expired(conn, now)
    return {"reclaimed": requeued, "failed": failed}
