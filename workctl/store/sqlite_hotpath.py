"""The hot path on SQLite: claim, submit (and submit + claim-next in one transaction), heartbeat, release
and the expired-lease reclaim, as the few statements the lean schema needs (docs/hotpath-notes.md).

Each function is atomic: it joins the caller's write transaction when one is open, and otherwise runs in
a write transaction of its own (``BEGIN IMMEDIATE``). Each keeps every rule of the lifecycle: a transition is a compare-and-set (the fenced writes carry the lease token), each one
appends its audit event, and the order's per-state counts move with it, after which the order's state
is derived from those counts and moved along its path (with its events) when it changed. The rules
themselves come from ``workctl.states``, the one definition the engine and the PostgreSQL functions read
too; the contract tests run both stores through the same flows and compare the trails.
"""

from __future__ import annotations

import functools
import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from ..jsonio import dumps
from ..states import ITEM_STATES, ORDER_TRANSITIONS, derived_order_state, path_to
from .hotpath import Claim, Leased, Released, Submitted

RECLAIM_BATCH = 8  # expired leases requeued per claim (the rest by the next claims, or by maintain)
_RETURNING = "n, id, order_id, type, state, attempts, max_attempts, lease_token, lease_expires_at"
_CLAIM_SET = ("UPDATE items SET "
              "state = CASE WHEN attempts < max_attempts THEN 'leased' ELSE 'failed' END, "
              "attempts = attempts + (attempts < max_attempts), "
              "leased_by = CASE WHEN attempts < max_attempts THEN ? END, "
              "lease_token = CASE WHEN attempts < max_attempts THEN ? END, "
              "lease_expires_at = CASE WHEN attempts < max_attempts THEN ? END, "
              "visible_at = '', updated_at = ? WHERE n = ")
# INDEXED BY on every claim: without ANALYZE statistics the planner may prefer a plain index with the same
# leading column and scan every item of an order (O(done items) per checkout).
CLAIM_ANY = (_CLAIM_SET + "(SELECT n FROM items INDEXED BY items_claim WHERE state = 'queued' AND visible_at <= ? "
              "ORDER BY priority DESC, n LIMIT 1) RETURNING " + _RETURNING)
CLAIM_ORDER = (_CLAIM_SET + "(SELECT n FROM items INDEXED BY items_claim_order WHERE order_id = ? AND state = 'queued' "
                "AND visible_at <= ? ORDER BY n LIMIT 1) RETURNING " + _RETURNING)
CLAIM_TYPE = (_CLAIM_SET + "(SELECT n FROM items INDEXED BY items_claim_type WHERE type = ? AND state = 'queued' "
               "AND visible_at <= ? ORDER BY priority DESC, n LIMIT 1) RETURNING " + _RETURNING)
_FENCE = "id = ? AND state = 'leased' AND leased_by = ? AND lease_token = ? AND lease_expires_at > ?"
_EVENT = ("INSERT INTO events (order_id, item_id, entity, event, from_state, to_state, actor_type, actor_id, "
          "payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_COUNTS = ", ".join(ITEM_STATES)

Event = tuple[Any, ...]
F = TypeVar("F", bound=Callable[..., Any])


def _atomic(operation: F) -> F:
    """Run the operation in the caller's open transaction, or in a write transaction of its own."""
    @functools.wraps(operation)
    def run(conn: Any, *args: Any, **kwargs: Any) -> Any:
        if conn.in_transaction:
            return operation(conn, *args, **kwargs)
        from . import write_tx

        with write_tx(conn):
            return operation(conn, *args, **kwargs)
    return run  # type: ignore[return-value]


@dataclass
class _Tx:
    """What one transaction has done so far: its events (written in one executemany) and the count deltas
    per order (written once per order, at the end)."""

    now: str
    events: list[Event]
    deltas: defaultdict[str, dict[str, int]]

    @classmethod
    def start(cls, now: str) -> _Tx:
        return cls(now, [], defaultdict(lambda: defaultdict(int)))

    def item_event(self, order_id: str, item_id: str, event: str, src: str, dst: str, actor: tuple[str, str],
                   payload: Any) -> None:
        self.events.append((order_id, item_id, "item", event, src, dst, actor[0], actor[1],
                            None if payload is None else dumps(payload), self.now))
        self.deltas[order_id][src] -= 1
        self.deltas[order_id][dst] += 1


SYSTEM = ("system", "workctl")


def _settle(conn: sqlite3.Connection, tx: _Tx) -> dict[str, str]:
    """Write the events, move the counters (orders in id order), derive each order's state and walk it
    there with its events. Returns each touched order's state."""
    states: dict[str, str] = {}
    for order_id in sorted(tx.deltas):
        moves = {state: n for state, n in tx.deltas[order_id].items() if n}
        if not moves:  # e.g. a lease reclaimed and claimed again by the same transaction
            states[order_id] = conn.execute("SELECT state FROM order_counts WHERE order_id = ?",
                                            (order_id,)).fetchone()[0]
            continue
        clause = ", ".join(f"{state} = {state} + ?" for state in moves)
        row = conn.execute(f"UPDATE order_counts SET {clause} WHERE order_id = ? RETURNING state, {_COUNTS}",
                           [*moves.values(), order_id]).fetchone()
        current = row[0]
        present = frozenset(state for state, n in zip(ITEM_STATES, row[1:], strict=True) if n)
        target = derived_order_state(current, present)
        state = current
        if target != current:
            for step in path_to(current, target):
                submitted_at = ", submitted_at = ?" if step == "submitted" else ""
                conn.execute(f"UPDATE orders SET state = ?, updated_at = ?{submitted_at} WHERE id = ? AND state = ?",
                             [step, tx.now, *([tx.now] if submitted_at else []), order_id, state])
                tx.events.append((order_id, None, "order", ORDER_TRANSITIONS[state][step], state, step,
                                  *SYSTEM, None, tx.now))
                state = step
            conn.execute("UPDATE order_counts SET state = ? WHERE order_id = ?", (state, order_id))
        states[order_id] = state
    if tx.events:
        conn.executemany(_EVENT, tx.events)
    return states


def _error_of(conn: sqlite3.Connection, n: int, error: dict[str, Any], now: str) -> None:
    conn.execute("INSERT INTO item_results (n, error, updated_at) VALUES (?, ?, ?) "
                 "ON CONFLICT (n) DO UPDATE SET error = excluded.error, updated_at = excluded.updated_at",
                 (n, dumps(error), now))


def _reclaim(conn: sqlite3.Connection, tx: _Tx, limit: int | None) -> tuple[int, int]:
    """Requeue (or fail, at max_attempts) leases that expired: before a claim picks, so the claim keeps
    priority-then-age order and may take a requeued item itself. Returns (requeued, failed)."""
    sql = ("SELECT n, id, order_id, attempts, max_attempts, leased_by FROM items INDEXED BY items_leased "
           "WHERE state = 'leased' AND lease_expires_at <= ? ORDER BY lease_expires_at, n")
    rows = conn.execute(sql + (" LIMIT ?" if limit else ""), (tx.now, *([limit] if limit else []))).fetchall()
    requeued = failed = 0
    for n, item_id, order_id, attempts, max_attempts, holder in rows:
        exhausted = attempts >= max_attempts
        conn.execute("UPDATE items SET state = ?, leased_by = NULL, lease_token = NULL, lease_expires_at = NULL, "
                     "visible_at = '', updated_at = ? WHERE n = ?", ("failed" if exhausted else "queued", tx.now, n))
        if exhausted:
            error = {"code": "max_attempts_exceeded", "message": f"gave up after {attempts} attempts",
                     "last_agent": holder}
            _error_of(conn, n, error, tx.now)
            tx.item_event(order_id, item_id, "failed", "leased", "failed", SYSTEM, error)
            failed += 1
        else:
            tx.item_event(order_id, item_id, "lease_expired", "leased", "queued", SYSTEM,
                          {"agent": holder, "attempts": attempts})
            requeued += 1
    return requeued, failed


def _claim(conn: sqlite3.Connection, tx: _Tx, claim: Claim) -> tuple[Any, ...] | None:
    """The claim: one UPDATE that counts the attempt, or fails an item that has none left (and claims
    again). Returns the leased row, or None when nothing is claimable."""
    scope: tuple[str, ...]
    if claim.order_id:
        sql, scope = CLAIM_ORDER, (claim.order_id,)
    elif claim.type_name:
        sql, scope = CLAIM_TYPE, (claim.type_name,)
    else:
        sql, scope = CLAIM_ANY, ()
    while True:
        row = conn.execute(sql, (claim.agent, claim.token, claim.expires, tx.now, *scope, tx.now)).fetchone()
        if row is None:
            return None
        n, item_id, order_id, _type, state, attempts, _max, _token, expires = row
        if state == "failed":  # requeued for rework with no attempts left
            error = {"code": "max_attempts_exceeded", "message": f"gave up after {attempts} attempts",
                     "last_agent": None}
            _error_of(conn, n, error, tx.now)
            tx.item_event(order_id, item_id, "failed", "queued", "failed", SYSTEM, error)
            continue
        tx.item_event(order_id, item_id, "leased", "queued", "leased", ("agent", claim.agent),
                      {"lease_expires_at": expires, "attempt": attempts})
        return tuple(row)


def _leased(conn: sqlite3.Connection, row: tuple[Any, ...], states: dict[str, str]) -> Leased:
    n, item_id, order_id, type_name, _state, attempts, max_attempts, token, expires = row
    text = conn.execute("SELECT input FROM item_inputs WHERE n = ?", (n,)).fetchone()[0]
    return Leased(id=item_id, order_id=order_id, type=type_name, attempts=attempts, max_attempts=max_attempts,
                  lease_token=token, lease_expires_at=expires, input=text, order_state=states[order_id])


@_atomic
def claim(conn: sqlite3.Connection, request: Claim, now: str) -> Leased | None:
    tx = _Tx.start(now)
    _reclaim(conn, tx, RECLAIM_BATCH)
    row = _claim(conn, tx, request)
    states = _settle(conn, tx)
    return None if row is None else _leased(conn, row, states)


def _submit(conn: sqlite3.Connection, tx: _Tx, *, item_id: str, agent: str, token: str,
            result: str) -> tuple[str, int] | None:
    row = conn.execute("UPDATE items SET state = 'submitted', leased_by = NULL, lease_token = NULL, "
                       f"lease_expires_at = NULL, updated_at = ? WHERE {_FENCE} RETURNING n, order_id, attempts",
                       (tx.now, item_id, agent, token, tx.now)).fetchone()
    if row is None:
        return None
    n, order_id, attempts = row
    conn.execute("INSERT INTO item_results (n, result, submitted_by, updated_at) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (n) DO UPDATE SET result = excluded.result, submitted_by = excluded.submitted_by, "
                 "updated_at = excluded.updated_at", (n, result, agent, tx.now))
    tx.item_event(order_id, item_id, "submitted", "leased", "submitted", ("agent", agent), {"attempt": attempts})
    return order_id, attempts


@_atomic
def submit(conn: sqlite3.Connection, *, item_id: str, agent: str, token: str, result: str, now: str,
           then: Claim | None = None) -> tuple[Submitted | None, Leased | None]:
    """The fenced submit (None when the lease is gone: nothing written, nothing claimed), and with
    ``then`` the next claim, in the same transaction (``submit --next``)."""
    tx = _Tx.start(now)
    done = _submit(conn, tx, item_id=item_id, agent=agent, token=token, result=result)
    if done is None:
        return None, None
    row = None
    if then is not None:
        _reclaim(conn, tx, RECLAIM_BATCH)
        row = _claim(conn, tx, then)
    states = _settle(conn, tx)
    order_id, attempts = done
    submitted = Submitted(order_id=order_id, attempts=attempts, order_state=states[order_id])
    return submitted, None if row is None else _leased(conn, row, states)


@_atomic
def heartbeat(conn: sqlite3.Connection, *, item_id: str, agent: str, token: str, expires: str,
              now: str) -> str | None:
    """Extend the lease (fenced); the item's order id, or None when the lease is gone."""
    row = conn.execute(f"UPDATE items SET lease_expires_at = ?, updated_at = ? WHERE {_FENCE} RETURNING order_id",
                       (expires, now, item_id, agent, token, now)).fetchone()
    if row is None:
        return None
    conn.execute(_EVENT, (row[0], item_id, "item", "heartbeat", None, None, "agent", agent,
                          dumps({"lease_expires_at": expires}), now))
    return str(row[0])


@_atomic
def release(conn: sqlite3.Connection, *, item_id: str, agent: str, token: str, now: str,
            release: Released) -> str | None:
    """Give the lease back (fenced), as ``release`` says: the target state, the attempts to keep, when it
    may be claimed again, the error to record. The order's state, or None when the lease is gone."""
    row = conn.execute("UPDATE items SET state = ?, attempts = ?, visible_at = ?, leased_by = NULL, "
                       f"lease_token = NULL, lease_expires_at = NULL, updated_at = ? WHERE {_FENCE} "
                       "RETURNING n, order_id",
                       (release.state, release.attempts, release.retry_at, now, item_id, agent, token, now)).fetchone()
    if row is None:
        return None
    n, order_id = row
    if release.error is not None:
        _error_of(conn, n, release.error, now)
    tx = _Tx.start(now)
    tx.item_event(order_id, item_id, "failed" if release.state == "failed" else "released", "leased",
                  release.state, ("agent", agent), release.payload)
    return _settle(conn, tx)[order_id]


@_atomic
def reclaim_expired(conn: sqlite3.Connection, now: str) -> tuple[int, int]:
    """maintain's sweep: every expired lease requeued (or failed at max_attempts). (requeued, failed)"""
    tx = _Tx.start(now)
    counts = _reclaim(conn, tx, None)
    _settle(conn, tx)
    return counts
