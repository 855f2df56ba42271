"""retry: put failed or dead-lettered items back in the queue with a fresh set of attempts."""

from __future__ import annotations

from typing import Any

from ..errors import Conflict, IllegalTransition, Usage
from ..jsonio import loads
from ..store import write_tx
from .lifecycle import Actor, move_item, refresh_order, set_outcome
from .session import Session

RETRYABLE = ("failed", "dead_lettered")


def _wanted(s: Session, item_id: str | None, order_id: str | None) -> tuple[str, list[str]]:
    """(the order, the items to retry), or an error saying why there is nothing to retry."""
    if item_id:
        row = s.item_row(item_id)
        if row["state"] not in RETRYABLE:
            raise IllegalTransition(f"item {item_id} is '{row['state']}'; only failed or dead-lettered "
                                    "items can be retried", code="not_retryable")
        return row["order_id"], [item_id]
    assert order_id is not None
    s.order_row(order_id)
    wanted = [r[0] for r in s.conn.execute(
        "SELECT id FROM items WHERE order_id = ? AND state IN ('failed', 'dead_lettered') ORDER BY seq",
        (order_id,))]
    if not wanted:
        raise Conflict(f"order {order_id} has no failed or dead-lettered items to retry", code="not_retryable")
    return order_id, wanted


def retry(s: Session, *, item_id: str | None = None, order_id: str | None = None,
          actor: Actor) -> dict[str, Any]:
    if bool(item_id) == bool(order_id):
        raise Usage("give exactly one of ITEM_ID or --order ORDER_ID")
    parent, wanted = _wanted(s, item_id, order_id)
    now = s.now()
    retried = []
    with write_tx(s.conn) as conn:
        for wanted_id in wanted:
            current = s.item_row(wanted_id)
            if current["state"] not in RETRYABLE:
                continue  # moved since we looked; nothing to do for it
            move_item(conn, item_id=wanted_id, order_id=parent, current=current["state"], target="queued",
                      now=now, actor=actor,
                      payload={"previous_attempts": current["attempts"], "previous_error": loads(current["error"])},
                      sets={"attempts": 0, "visible_at": ""})
            set_outcome(conn, wanted_id, now=now, error=None)
            retried.append(wanted_id)
        order_state = refresh_order(conn, parent, now=now, actor=actor)
    return {"retried": retried, "order": {"id": parent, "state": order_state}}
