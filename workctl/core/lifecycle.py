"""Every state change in workctl goes through here (the hot path's fast statements in the stores keep
the same rules): ``move_item`` / ``move_order`` check the one transition table (``workctl.states``),
update the row guarded by its current state (a compare-and-set: 0 rows means someone else moved it
first), keep the order's per-state item counts (``order_counts``) and append the audit event, all on
the caller's open write transaction. An order's state is derived from those counts (``refresh_order``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import IllegalTransition
from ..jsonio import Encoded, dumps

# The tables live in workctl.states (pure data, shared with the stores); re-exported for the engine.
from ..states import (CANCELLABLE_ORDER_STATES, FINISHED_ORDER_STATES, ITEM_DONE_STATES,  # noqa: F401
                      ITEM_STATES, ITEM_TRANSITIONS, ORDER_STATES, ORDER_TRANSITIONS, derived_order_state,
                      path_to)


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


def append_event(conn: Any, *, now: str, actor: Actor, event: str, entity: str,
                 order_id: str | None, item_id: str | None = None, from_state: str | None = None,
                 to_state: str | None = None, payload: Any = None) -> None:
    conn.execute(
        "INSERT INTO events (order_id, item_id, entity, event, from_state, to_state, actor_type, "
        "actor_id, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (order_id, item_id, entity, event, from_state, to_state, actor.type, actor.id,
         None if payload is None else payload if isinstance(payload, Encoded) else dumps(payload), now),
    )


# Columns a transition may set besides state/updated_at; fixed names, never user input. An item's input,
# result and error live in item_inputs / item_results (set_outcome), off the narrow row the claims read.
_ITEM_COLUMNS = frozenset({"attempts", "leased_by", "lease_token", "lease_expires_at", "visible_at"})
_ORDER_COLUMNS = frozenset({"diff", "error", "submitted_at", "approved_at", "applied_at", "completed_at"})
_COUNT_COLUMNS = frozenset(ITEM_STATES)
_COUNTS_SQL = f"SELECT state, {', '.join(ITEM_STATES)} FROM order_counts WHERE order_id = ?"


def _set_clause(sets: Mapping[str, Any], allowed: frozenset[str]) -> tuple[str, list[Any]]:
    unknown = set(sets) - allowed
    if unknown:  # a programming error, not user input
        raise ValueError(f"not a transition column: {sorted(unknown)}")
    names = sorted(sets)
    return "".join(f", {name} = ?" for name in names), [sets[name] for name in names]


def count(conn: Any, order_id: str, deltas: Mapping[str, int]) -> None:
    """Move the order's per-state item counts (one UPDATE of its order_counts row, in the caller's
    transaction). Every item transition keeps them exact: the order's state is derived from them."""
    moves = {state: n for state, n in deltas.items() if n}
    if not moves:
        return
    if not set(moves) <= _COUNT_COLUMNS:  # a programming error, not user input
        raise ValueError(f"not an item state: {sorted(set(moves) - _COUNT_COLUMNS)}")
    clause = ", ".join(f"{state} = {state} + ?" for state in moves)
    conn.execute(f"UPDATE order_counts SET {clause} WHERE order_id = ?", [*moves.values(), order_id])


def move_item(conn: Any, *, item_id: str, order_id: str, current: str, target: str,
              now: str, actor: Actor, event: str | None = None, payload: Any = None,
              sets: Mapping[str, Any] | None = None, guard: str = "", guard_params: tuple[Any, ...] = ()) -> bool:
    """Move one item ``current -> target`` (compare-and-set on the state), count it and log the event.

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
    count(conn, order_id, {current: -1, target: 1})
    append_event(conn, now=now, actor=actor, event=event or default_event, entity="item",
                 order_id=order_id, item_id=item_id, from_state=current, to_state=target, payload=payload)
    return True


_UNSET: Any = object()


def set_outcome(conn: Any, item_id: str, *, now: str, result: Any = _UNSET, error: Any = _UNSET,
                submitted_by: Any = _UNSET) -> None:
    """Write an item's result, error or submitter (JSON text or None) in item_results, keeping the others."""
    given = {name: value for name, value in (("result", result), ("error", error), ("submitted_by", submitted_by))
             if value is not _UNSET}
    names = sorted(given)
    updates = ", ".join(f"{name} = excluded.{name}" for name in names)
    conn.execute(
        f"INSERT INTO item_results (n, {', '.join(names)}, updated_at) "
        f"SELECT n, {', '.join('?' for _ in names)}, ? FROM items WHERE id = ? "
        f"ON CONFLICT (n) DO UPDATE SET {updates}, updated_at = excluded.updated_at",
        [*(given[name] for name in names), now, item_id])


def move_order(conn: Any, *, order_id: str, current: str, target: str, now: str,
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
    conn.execute("UPDATE order_counts SET state = ? WHERE order_id = ?", (target, order_id))
    append_event(conn, now=now, actor=actor, event=event or default_event, entity="order",
                 order_id=order_id, from_state=current, to_state=target, payload=payload)


def item_counts(conn: Any, order_id: str) -> dict[str, int]:
    """The order's items by state (from its counters: one row read, whatever the order's size)."""
    row = conn.execute(_COUNTS_SQL, (order_id,)).fetchone()
    return dict(zip(ITEM_STATES, tuple(row)[1:], strict=True)) if row is not None else {}


def refresh_order(conn: Any, order_id: str, *, now: str, actor: Actor | None = None) -> str:
    """Bring the order's state in line with its items' counts (on the caller's transaction); return it."""
    row = conn.execute(_COUNTS_SQL, (order_id,)).fetchone()
    current = row[0]
    target = derived_order_state(current, frozenset(s for s, n in zip(ITEM_STATES, tuple(row)[1:], strict=True) if n))
    if target == current:
        return str(current)
    state = current
    for step in path_to(current, target):
        extra = {"submitted_at": now} if step == "submitted" else {}
        move_order(conn, order_id=order_id, current=state, target=step, now=now,
                   actor=actor or Actor.system(), sets=extra)
        state = step
    return str(state)
