"""States and the one table of allowed transitions; every state change in workctl goes through here.

``move_item`` / ``move_order`` check the table, update the row guarded by its current state (a
compare-and-set: 0 rows means someone else moved it first) and append the audit event, all on the
caller's open write transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import IllegalTransition
from ..jsonio import Encoded, dumps

ORDER_STATES = ("queued", "in_progress", "submitted", "approved", "applied", "completed",
                "rejected", "failed", "dead_lettered", "cancelled")
ITEM_STATES = ("queued", "leased", "submitted", "accepted", "completed", "rejected", "failed",
               "dead_lettered", "cancelled")

# from-state -> {to-state: event name}. None is "does not exist yet".
# cancelled: an operator withdrew an order that was not applied (workctl cancel); terminal, like its items.
ORDER_TRANSITIONS: dict[str | None, dict[str, str]] = {
    None: {"queued": "proposed"},
    "queued": {"in_progress": "started", "cancelled": "cancelled"},
    "in_progress": {"submitted": "submitted", "failed": "failed", "cancelled": "cancelled"},
    "submitted": {"approved": "approved", "rejected": "rejected", "queued": "requeued", "cancelled": "cancelled"},
    "approved": {"applied": "applied"},
    "applied": {"completed": "completed"},
    "failed": {"in_progress": "retried", "dead_lettered": "dead_lettered", "cancelled": "cancelled"},
    "dead_lettered": {"in_progress": "retried", "cancelled": "cancelled"},
    "completed": {},
    "rejected": {},
    "cancelled": {},
}

ITEM_TRANSITIONS: dict[str | None, dict[str, str]] = {
    None: {"queued": "planned"},
    "queued": {"leased": "leased", "failed": "failed", "cancelled": "cancelled"},
    # leased -> queued is either a release (agent) or a lease expiry (system); callers name the event.
    "leased": {"queued": "released", "submitted": "submitted", "failed": "failed", "cancelled": "cancelled"},
    "submitted": {"accepted": "accepted", "queued": "requeued", "rejected": "rejected", "cancelled": "cancelled"},
    "accepted": {"completed": "completed"},
    "failed": {"queued": "retried", "dead_lettered": "dead_lettered", "cancelled": "cancelled"},
    "dead_lettered": {"queued": "retried", "cancelled": "cancelled"},
    "completed": {},
    "rejected": {},
    "cancelled": {},
}

# Orders an operator can still withdraw (workctl cancel); and the open orders sync resumes.
CANCELLABLE_ORDER_STATES = frozenset(state for state, moves in ORDER_TRANSITIONS.items()
                                     if state and "cancelled" in moves)
FINISHED_ORDER_STATES = frozenset({"completed", "rejected", "cancelled"})

# An item whose work is done as far as the order's readiness is concerned.
ITEM_DONE_STATES = frozenset({"submitted", "accepted", "completed"})


@dataclass(frozen=True)
class Actor:
    type: str  # "agent" | "user" | "system"
    id: str

    @classmethod
    def system(cls) -> Actor:
        return cls("system", "workctl")


def check(entity: str, current: str | None, target: str) -> str:
    """Return the event name of ``current -> target`` or raise IllegalTransition."""
    table = ORDER_TRANSITIONS if entity == "order" else ITEM_TRANSITIONS
    allowed = table.get(current, {})
    if target not in allowed:
        options = ", ".join(sorted(allowed)) or "none (terminal state)"
        raise IllegalTransition(
            f"illegal {entity} transition: cannot go from '{current}' to '{target}' "
            f"(allowed from '{current}': {options})",
            details=[{"entity": entity, "from": current, "to": target}],
        )
    return allowed[target]


def append_event(conn: sqlite3.Connection, *, now: str, actor: Actor, event: str, entity: str,
                 order_id: str | None, item_id: str | None = None, from_state: str | None = None,
                 to_state: str | None = None, payload: Any = None) -> None:
    conn.execute(
        "INSERT INTO events (order_id, item_id, entity, event, from_state, to_state, actor_type, "
        "actor_id, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (order_id, item_id, entity, event, from_state, to_state, actor.type, actor.id,
         None if payload is None else payload if isinstance(payload, Encoded) else dumps(payload), now),
    )


# Columns a transition may set besides state/updated_at; fixed names, never user input.
_ITEM_COLUMNS = frozenset({"attempts", "leased_by", "lease_token", "lease_expires_at", "visible_at",
                           "last_heartbeat_at", "result", "error", "submitted_by"})
_ORDER_COLUMNS = frozenset({"diff", "error", "submitted_at", "approved_at", "applied_at", "completed_at"})


def _set_clause(sets: Mapping[str, Any], allowed: frozenset[str]) -> tuple[str, list[Any]]:
    unknown = set(sets) - allowed
    if unknown:  # a programming error, not user input
        raise ValueError(f"not a transition column: {sorted(unknown)}")
    names = sorted(sets)
    return "".join(f", {name} = ?" for name in names), [sets[name] for name in names]


def move_item(conn: sqlite3.Connection, *, item_id: str, order_id: str, current: str, target: str,
              now: str, actor: Actor, event: str | None = None, payload: Any = None,
              sets: Mapping[str, Any] | None = None, guard: str = "", guard_params: tuple[Any, ...] = ()) -> bool:
    """Move one item ``current -> target`` (compare-and-set on the state) and log the event.

    ``guard`` is an extra fixed SQL condition (e.g. the lease fence); when it does not hold nothing
    is written and False is returned, so the caller can say why.
    """
    default_event = check("item", current, target)
    clause, params = _set_clause(sets or {}, _ITEM_COLUMNS)
    cursor = conn.execute(
        f"UPDATE items SET state = ?, updated_at = ?{clause} WHERE id = ? AND state = ?{guard}",
        [target, now, *params, item_id, current, *guard_params],
    )
    if cursor.rowcount != 1:
        if guard:
            return False
        raise IllegalTransition(f"item {item_id} is no longer '{current}'; it was changed concurrently")
    append_event(conn, now=now, actor=actor, event=event or default_event, entity="item",
                 order_id=order_id, item_id=item_id, from_state=current, to_state=target, payload=payload)
    return True


def move_order(conn: sqlite3.Connection, *, order_id: str, current: str, target: str, now: str,
               actor: Actor, event: str | None = None, payload: Any = None,
               sets: Mapping[str, Any] | None = None) -> None:
    """Move one order ``current -> target`` (compare-and-set on the state) and log the event."""
    default_event = check("order", current, target)
    clause, params = _set_clause(sets or {}, _ORDER_COLUMNS)
    cursor = conn.execute(
        f"UPDATE orders SET state = ?, updated_at = ?{clause} WHERE id = ? AND state = ?",
        [target, now, *params, order_id, current],
    )
    if cursor.rowcount != 1:
        raise IllegalTransition(f"order {order_id} is no longer '{current}'; it was changed concurrently")
    append_event(conn, now=now, actor=actor, event=event or default_event, entity="order",
                 order_id=order_id, from_state=current, to_state=target, payload=payload)


def derived_order_state(current: str, present: frozenset[str] | set[str]) -> str:
    """The state an order should be in, given which item states its items are in.

    A submitted order and everything after it is moved only by approve/reject, never derived.
    """
    if current in ("submitted", "approved", "applied", "completed", "rejected", "cancelled") or not present:
        return current
    if present <= ITEM_DONE_STATES:
        return "submitted"
    if present & {"queued", "leased"}:
        if current == "queued" and present <= {"queued"}:
            return "queued"
        return "in_progress"
    if "failed" in present:
        return "failed"
    # Nothing failed or in play, but something was dead-lettered: the order is dead-lettered. From
    # in_progress that is two hops (failed, then dead_lettered), which refresh_order walks and logs.
    if "dead_lettered" in present:
        return "dead_lettered"
    return current


def _path_to(current: str, target: str) -> list[str]:
    """Shortest legal path between two order states (derivation may need two hops, e.g. queued→in_progress→submitted)."""
    frontier: list[list[str]] = [[current]]
    seen = {current}
    while frontier:
        path = frontier.pop(0)
        for nxt in ORDER_TRANSITIONS.get(path[-1], {}):
            if nxt == target:
                return path[1:] + [nxt]
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(path + [nxt])
    raise IllegalTransition(f"order cannot get from '{current}' to '{target}'")


# One statement, one index seek per state on items(order_id, state): independent of the order's size.
_PRESENT_SQL = "SELECT " + ", ".join(
    f"EXISTS (SELECT 1 FROM items WHERE order_id = ?1 AND state = '{state}')" for state in ITEM_STATES)


def present_item_states(conn: sqlite3.Connection, order_id: str) -> frozenset[str]:
    flags = conn.execute(_PRESENT_SQL, (order_id,)).fetchone()
    return frozenset(state for state, flag in zip(ITEM_STATES, flags, strict=True) if flag)


def refresh_order(conn: sqlite3.Connection, order_id: str, *, now: str, actor: Actor | None = None) -> str:
    """Bring the order's state in line with its items (on the caller's transaction); return it."""
    current = conn.execute("SELECT state FROM orders WHERE id = ?", (order_id,)).fetchone()[0]
    target = derived_order_state(current, present_item_states(conn, order_id))
    if target == current:
        return current
    state = current
    for step in _path_to(current, target):
        extra = {"submitted_at": now} if step == "submitted" else {}
        move_order(conn, order_id=order_id, current=state, target=step, now=now,
                   actor=actor or Actor.system(), sets=extra)
        state = step
    return state
