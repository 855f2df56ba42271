"""reject: refuse a submitted order's results — for good, or back to the queue for rework (--requeue)."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from ..errors import IllegalTransition, Invalid
from ..jsonio import dumps, loads
from ..store import target as targets
from ..store import write_tx
from .approve import not_ready
from .idempotency import Guard
from .lifecycle import Actor, move_item, move_order, set_outcome
from .session import Session


def reject(s: Session, order_id: str, *, reason: str, requeue: bool = False, actor: Actor,
           idempotency_key: str | None = None) -> dict[str, Any]:
    if not reason.strip():
        raise Invalid("a rejection needs a reason (--reason)", code="reason_required")
    guard = Guard.make(f"reject:{order_id}", idempotency_key, {"reason": reason, "requeue": requeue})
    if (earlier := guard.replay(s.conn)) is not None:
        return earlier
    row = s.order_row(order_id)
    if row["state"] != "submitted":
        raise not_ready(row, s.conn, "reject")
    # A separate target may already hold this order's apply (an approve committed there but not in the
    # store): rejecting now would contradict the target, and a requeued rework would never be applied
    # (the marker short-circuits the next apply). Only approve can finish such an order.
    # The marker is looked for under the target's write lock, held until the reject is committed: an
    # approve applying to the target meanwhile either committed first (its marker is seen) or waits
    # and then sees this reject (approve re-checks the order under the same lock).
    with target_not_applied(s, order_id, "reject"):
        return _reject_in_store(s, order_id, reason=reason, requeue=requeue, actor=actor, guard=guard)


@contextlib.contextmanager
def target_not_applied(s: Session, order_id: str, action: str) -> Iterator[None]:
    """Hold a separate target's write lock while ``action`` (reject, cancel) decides a submitted order, and
    refuse if an approve that did not finish already applied it there (only approve can finish it)."""
    target = s.target()
    with contextlib.ExitStack() as held:
        if not target.same and os.path.exists(target.path):
            tconn = held.enter_context(target)
            held.enter_context(write_tx(tconn))
            if targets.applied_diff(tconn, order_id) is not None:
                raise IllegalTransition(
                    f"cannot {action} order {order_id}: its results were already applied to {target.path} "
                    "by an approve that did not finish; run approve again to record it", code="already_applied")
        yield


def _reject_in_store(s: Session, order_id: str, *, reason: str, requeue: bool, actor: Actor,
                     guard: Guard) -> dict[str, Any]:
    now = s.now()
    target = "queued" if requeue else "rejected"
    with write_tx(s.conn) as conn:
        if (earlier := guard.replay(conn)) is not None:
            return earlier
        current = s.order_row(order_id)
        if current["state"] != "submitted":
            raise not_ready(current, conn, "reject")
        items = conn.execute("SELECT i.id, r.result FROM items i LEFT JOIN item_results r ON r.n = i.n "
                             "WHERE i.order_id = ? AND i.state = 'submitted'", (order_id,)).fetchall()
        for item_id, result in items:
            # The rejected result stays in the audit trail; a requeued item starts clean.
            move_item(conn, item_id=item_id, order_id=order_id, current="submitted", target=target, now=now,
                      actor=actor, payload={"reason": reason, "result": loads(result)})
            if requeue:
                set_outcome(conn, item_id, now=now, result=None)
        move_order(conn, order_id=order_id, current="submitted", target=target, now=now, actor=actor,
                   payload={"reason": reason, "requeue": requeue}, sets={"error": dumps({"reason": reason})})
        response = {"order": {"id": order_id, "state": target}, "items": {"count": len(items), "state": target},
                    "reason": reason}
        guard.record(conn, response, now)
    return response
