"""maintain: the periodic sweep — reclaim expired leases, dead-letter old failures, purge idempotency
keys, prune old events of finished orders. (Webhook delivery follows it, in ``Workctl.maintain``.)"""

from __future__ import annotations

import time
from contextlib import nullcontext
from datetime import timedelta
from itertools import takewhile
from typing import Any, Iterator

from ..clock import iso
from ..store import write_tx
from . import idempotency
from .leases import reclaim_expired
from .lifecycle import FINISHED_ORDER_STATES, Actor, append_event, move_item, refresh_order
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
    event_cutoff = iso(moment - timedelta(days=config.event_days)) if config.event_days > 0 else None
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
        if dry_run:
            pruned = sum(prune_events(s, event_cutoff, dry_run=True)) if event_cutoff else 0
            result.update(_counts(leases, dead, purged, pruned))
            raise _DryRun
    # The prune runs after the sweep's commit, in its own short transactions: a first prune of millions
    # of events must not hold the write lock (and so every agent) for seconds.
    pruned = sum(prune_events(s, event_cutoff)) if event_cutoff else 0
    result.update(_counts(leases, dead, purged, pruned))
    if any((leases["reclaimed"], leases["failed"], dead, purged, pruned)):
        with write_tx(s.conn) as conn:
            append_event(conn, now=now, actor=Actor.system(), event="maintained", entity="store", order_id=None,
                         payload={**leases, "dead_lettered": len(dead), "keys_purged": purged,
                                  "events_pruned": pruned})


def _counts(leases: dict[str, int], dead: list[Any], purged: int, pruned: int) -> dict[str, int]:
    return {"leases_reclaimed": leases["reclaimed"], "items_failed": leases["failed"],
            "items_dead_lettered": len(dead), "idempotency_keys_purged": purged, "events_pruned": pruned}


PRUNE_BATCH = 1000    # events per write transaction: a few ms of write lock on either backend
# Between two batches the lock is free for this long: SQLite's lock is not fair (a writer waiting in its
# busy handler sleeps, and a loop that takes the lock again at once would keep it from ever getting in).
PRUNE_PAUSE = 0.005
_ORDER_PAGE = 500     # finished orders read per query (ids only)
_FINISHED = "(" + ", ".join(f"'{state}'" for state in sorted(FINISHED_ORDER_STATES)) + ")"


def _finished_orders(conn: Any) -> Iterator[str]:
    """Ids of finished orders, read in pages by key (no cursor is held open across the prune's commits)."""
    last = ""
    while True:
        page = [r[0] for r in conn.execute(f"SELECT id FROM orders WHERE state IN {_FINISHED} AND id > ? "
                                           "ORDER BY id LIMIT ?", (last, _ORDER_PAGE)).fetchall()]
        yield from page
        if len(page) < _ORDER_PAGE:
            return
        last = page[-1]


def prune_events(s: Session, cutoff: str, *, batch: int = PRUNE_BATCH, dry_run: bool = False) -> Iterator[int]:
    """Delete the events of finished orders created before ``cutoff``, oldest first, in write transactions of
    at most ``batch`` events; yields each transaction's count after its commit (``dry_run``: counts only,
    nothing written, no transaction). An order is read from its oldest remaining event and left at its first
    event that is not old enough, so a repeat run reads one row per finished order: what was pruned is gone,
    and what is kept is never rescanned."""
    conn = s.conn
    orders = _finished_orders(conn)
    current, after = next(orders, None), 0
    while current is not None:
        budget, found, seeks = batch, 0, 0
        with nullcontext(conn) if dry_run else write_tx(conn):
            # Bounded by events deleted and by orders looked at (one seek each): either keeps it short.
            while current is not None and budget > 0 and seeks < batch:
                seeks += 1
                rows = conn.execute("SELECT id, created_at FROM events WHERE order_id = ? AND id > ? "
                                    "ORDER BY id LIMIT ?", (current, after, budget)).fetchall()
                old = list(takewhile(lambda r: r[1] < cutoff, rows))
                if old:
                    if not dry_run:
                        conn.execute("DELETE FROM events WHERE order_id = ? AND id >= ? AND id <= ?",
                                     (current, old[0][0], old[-1][0]))
                    found += len(old)
                    budget -= len(old)
                    after = old[-1][0]
                if len(old) < len(rows) or len(rows) < budget + len(old):  # this order is done
                    current, after = next(orders, None), 0
        if found:
            yield found
            if not dry_run and current is not None:
                time.sleep(PRUNE_PAUSE)
