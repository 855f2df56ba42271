"""cancel: withdraw an order that was not applied. The order and every item not yet finished move to
``cancelled`` (terminal) in one transaction, each with its event; an agent still holding one of its items
finds out at its next heartbeat or submit (``order_cancelled``, exit 6), and no checkout hands them out."""

from __future__ import annotations

from typing import Any

from ..errors import Conflict
from ..jsonio import dumps
from ..store import write_tx
from . import outbox
from .lifecycle import CANCELLABLE_ORDER_STATES, Actor, move_item, move_order
from .reject import target_not_applied
from .session import Session

_LEASE_CLEARED = {"leased_by": None, "lease_token": None, "lease_expires_at": None, "visible_at": ""}
_OPEN_ITEM_STATES = ("queued", "leased", "submitted", "failed", "dead_lettered")


def _refuse(row: Any) -> Conflict:
    return Conflict(f"cannot cancel order {row['id']}: it is '{row['state']}' (only an order that was not applied "
                    f"can be cancelled: {', '.join(sorted(CANCELLABLE_ORDER_STATES))})", code="not_cancellable",
                    details=[{"state": row["state"]}])


def preview(s: Session, order_id: str) -> dict[str, Any]:
    """What cancel would do (the confirmation shows it): the order's state and its open items by state."""
    row = s.order_row(order_id)
    if row["state"] not in CANCELLABLE_ORDER_STATES:
        raise _refuse(row)
    counts = dict(s.conn.execute(
        f"SELECT state, count(*) FROM items WHERE order_id = ? AND state IN ({', '.join('?' for _ in _OPEN_ITEM_STATES)}) "
        "GROUP BY state", (order_id, *_OPEN_ITEM_STATES)).fetchall())
    return {"order": {"id": order_id, "type": row["type"], "state": row["state"]}, "items": counts}


def cancel(s: Session, order_id: str, *, reason: str | None, actor: Actor) -> dict[str, Any]:
    row = s.order_row(order_id)
    if row["state"] not in CANCELLABLE_ORDER_STATES:
        raise _refuse(row)
    hooks = outbox.configured(s.config)
    with target_not_applied(s, order_id, "cancel"):
        now = s.now()
        with write_tx(s.conn) as conn:
            current = s.order_row(order_id)
            if current["state"] not in CANCELLABLE_ORDER_STATES:
                raise _refuse(current)
            items = conn.execute(
                f"SELECT id, state, leased_by FROM items WHERE order_id = ? AND state IN "
                f"({', '.join('?' for _ in _OPEN_ITEM_STATES)}) ORDER BY seq", (order_id, *_OPEN_ITEM_STATES)).fetchall()
            for item_id, state, holder in items:
                move_item(conn, item_id=item_id, order_id=order_id, current=state, target="cancelled", now=now,
                          actor=actor, payload={"reason": reason, "agent": holder} if holder else {"reason": reason},
                          sets=_LEASE_CLEARED)
            move_order(conn, order_id=order_id, current=current["state"], target="cancelled", now=now, actor=actor,
                       payload={"reason": reason, "items": len(items)},
                       sets={"error": dumps({"reason": reason, "cancelled_by": f"{actor.type}:{actor.id}"})})
            outbox.notify(conn, hooks, "order.cancelled", {"id": order_id, "type": current["type"]},
                          {"state_before": current["state"], "reason": reason, "items_cancelled": len(items)}, now)
    return {"order": {"id": order_id, "state": "cancelled", "previous_state": row["state"]},
            "items": {"cancelled": len(items), "leased": sum(1 for _, state, _ in items if state == "leased")},
            "reason": reason}
