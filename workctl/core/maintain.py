"""maintain: the periodic sweep — reclaim expired leases, dead-letter old failures, purge idempotency
keys, prune old events of finished orders. (Webhook delivery follows it, in ``Workctl.maintain``.)"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ..clock import iso
from ..store import write_tx
from . import idempotency
from .leases import reclaim_expired
from .lifecycle import Actor, append_event, move_item, refresh_order
from .session import Session


class _DryRun(Exception):
    """Raised at the end of a dry run's transaction so that it is rolled back."""


def maintain(s: Session, *, dry_run: bool = False) -> dict[str, Any]:
    """The sweep. ``dry_run`` runs the very same statements and rolls them back, so what it reports is
    exactly what a real run at this moment would do (webhooks: how many are due, none sent)."""
    result: dict[str, Any] = {}
    try:
        _sweep(s, result, dry_run=dry_run)
    except _DryRun:
        from .outbox import due_count

        result["webhooks_due"] = due_count(s.conn, s.now())
        result["dry_run"] = True
    return result


def _sweep(s: Session, result: dict[str, Any], *, dry_run: bool) -> None:
    config = s.config
    moment = s.clock()
    now = iso(moment)
    with write_tx(s.conn) as conn:
        leases = reclaim_expired(s, conn, now)
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
                "(SELECT id FROM orders WHERE state IN ('completed', 'rejected', 'cancelled'))",
                (iso(moment - timedelta(days=config.event_days)),)).rowcount
        if any((leases["reclaimed"], leases["failed"], dead, purged, pruned)):
            append_event(conn, now=now, actor=Actor.system(), event="maintained", entity="store", order_id=None,
                         payload={**leases, "dead_lettered": len(dead), "keys_purged": purged,
                                  "events_pruned": pruned})
        result.update({"leases_reclaimed": leases["reclaimed"], "items_failed": leases["failed"],
                       "items_dead_lettered": len(dead), "idempotency_keys_purged": purged, "events_pruned": pruned})
        if dry_run:
            raise _DryRun
