"""maintain: the periodic sweep — reclaim expired leases, dead-letter old failures, purge idempotency
keys, prune old events of finished orders. (Webhook delivery follows it, in ``Workctl.maintain``.)"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ..clock import iso
from ..store.sqlite import write_tx
from . import idempotency
from .leases import reclaim_expired
from .lifecycle import Actor, append_event, move_item, refresh_order
from .session import Session


def maintain(s: Session) -> dict[str, Any]:
    config = s.config
    moment = s.clock()
    now = iso(moment)
    with write_tx(s.conn) as conn:
        leases = reclaim_expired(conn, now)
        cutoff = iso(moment - timedelta(seconds=config.dead_letter_after_seconds))
        dead = conn.execute("SELECT id, order_id FROM items WHERE state = 'failed' AND updated_at <= ?",
                            (cutoff,)).fetchall()
        for item_id, order_id in dead:
            move_item(conn, item_id=item_id, order_id=order_id, current="failed", target="dead_lettered",
                      now=now, actor=Actor.system())
        for order_id in {order_id for _, order_id in dead}:
            refresh_order(conn, order_id, now=now)
        purged = idempotency.purge(conn, iso(moment - timedelta(days=config.idempotency_days)))
        pruned = 0
        if config.event_days > 0:
            pruned = conn.execute(
                "DELETE FROM events WHERE created_at < ? AND order_id IN "
                "(SELECT id FROM orders WHERE state IN ('completed', 'rejected'))",
                (iso(moment - timedelta(days=config.event_days)),)).rowcount
        if any((leases["reclaimed"], leases["failed"], dead, purged, pruned)):
            append_event(conn, now=now, actor=Actor.system(), event="maintained", entity="store", order_id=None,
                         payload={**leases, "dead_lettered": len(dead), "keys_purged": purged,
                                  "events_pruned": pruned})
    return {"leases_reclaimed": leases["reclaimed"], "items_failed": leases["failed"],
            "items_dead_lettered": len(dead), "idempotency_keys_purged": purged, "events_pruned": pruned}
