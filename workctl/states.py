"""The lifecycle as data: the states, the one table of allowed transitions, and how an order's state
follows from its items' states. Pure Python, no SQL: the engine (``core/lifecycle.py``), the stores'
hot paths (``store/sqlite_hotpath.py``) and the PostgreSQL functions generated from it
(``store/postgres_schema.py``) all read this one definition.
"""

from __future__ import annotations


from .errors import IllegalTransition

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


# Item states an order keeps a count of (order_counts): every item state.
COUNTED_STATES = ITEM_STATES


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


def path_to(current: str, target: str) -> list[str]:
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




def derivable_paths() -> dict[tuple[str, str], list[str]]:
    """Every (current, derived) pair derivation can ask for, with the path of states it walks (what the
    PostgreSQL functions are generated from)."""
    from itertools import combinations

    paths: dict[tuple[str, str], list[str]] = {}
    for current in ORDER_STATES:
        for size in range(1, len(ITEM_STATES) + 1):
            for present in combinations(ITEM_STATES, size):
                target = derived_order_state(current, frozenset(present))
                if target != current:
                    paths[(current, target)] = path_to(current, target)
    return paths
