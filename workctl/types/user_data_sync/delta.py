"""Delta sync (the seed's variation 5): fetch only the users a source changed since a cursor.

Payload: ``sync_mode`` (``full`` | ``delta``, default full) and ``since`` (an ISO-8601 date-time with a
zone, delta only). A delta order without ``since`` takes the source's stored cursor at propose time;
with no cursor stored yet it fetches every user (a full baseline) and, once applied, sets the cursor.

The cursor lives in ``sync_cursors`` (one row per source) and is moved only by ``advance``, which
``UserDataSync.record_applied`` calls inside the store transaction that completes the order. So a
crash before that commit, a rejected order, or an order still in flight never moves it. The new
cursor is the order's ``created_at``: every fetch of the order happened after it, so no change
before it can have been missed. It only moves forward, and never past a gap: an order whose
``since`` is later than the stored cursor (an explicit ``since``) does not move it.

Delta fetches ask the source with the query parameter the source config names (``delta_param``,
default ``updated_since``). A user the source reports as not changed goes into the batch result's
``unchanged_users`` (``[{"user_id": 7}]``), which counts as a success and is not written by apply.
Failed users of a delta order are in the error ledger like any others; ``workctl sync --retry-failed``
fetches them again in full mode.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from typing import Any, Mapping

from ...errors import Invalid
from ...core.lifecycle import Actor, append_event

MODES = ("full", "delta")


def parse_time(text: str) -> datetime | None:
    """An ISO-8601 date-time with a zone as an aware datetime; None if it is not one."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except (TypeError, ValueError, AttributeError):
        return None
    return value if value.tzinfo is not None else None


def get_cursor(conn: sqlite3.Connection, source: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT source, cursor, order_id, updated_at FROM sync_cursors WHERE source = ?",
                       (source,)).fetchone()
    return None if row is None else dict(zip(("source", "cursor", "order_id", "updated_at"), tuple(row), strict=True))


def prepare(payload: Mapping[str, Any], prepared: dict[str, Any], store: sqlite3.Connection | None) -> None:
    """Check ``sync_mode``/``since`` and fill a delta order's ``since`` from the stored cursor."""
    mode = payload.get("sync_mode", "full")
    if "since" in payload:
        if mode != "delta":
            raise Invalid("'since' needs sync_mode 'delta'", code="payload_invalid",
                          details=[{"path": "since", "message": "only valid with sync_mode delta"}])
        if parse_time(payload["since"]) is None:
            raise Invalid(f"since: {payload['since']!r} is not an ISO-8601 date-time with a zone",
                          code="payload_invalid",
                          details=[{"path": "since", "message": "must be a date-time with a zone, "
                                                                "e.g. 2026-01-05T09:00:00Z"}])
    if mode == "delta" and "since" not in payload and store is not None:
        cursor = get_cursor(store, payload["source"])
        if cursor is not None:
            prepared["since"] = cursor["cursor"]


def item_extras(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What an item's input carries for delta mode (nothing for a full order)."""
    if payload.get("sync_mode") != "delta":
        return {}
    extras: dict[str, Any] = {"sync_mode": "delta"}
    if "since" in payload:
        extras["since"] = payload["since"]
    return extras


def fetch_since(item_input: Mapping[str, Any]) -> str | None:
    """The ``since`` a fetch passes to the source: only for delta items that have one."""
    return item_input.get("since") if item_input.get("sync_mode") == "delta" else None


def advance(conn: sqlite3.Connection, order: Mapping[str, Any], now: str) -> dict[str, Any] | None:
    """Inside the store transaction that applies ``order``: move the source's cursor (delta orders only)."""
    payload = order["payload"]
    if payload.get("sync_mode") != "delta":
        return None
    source = payload["source"]
    row = conn.execute("SELECT created_at FROM orders WHERE id = ?", (order["id"],)).fetchone()
    new = row[0] if row else now
    current = get_cursor(conn, source)
    outcome: dict[str, Any] = {"source": source, "from": current["cursor"] if current else None, "to": new}
    since = parse_time(payload["since"]) if payload.get("since") else None
    old = parse_time(current["cursor"]) if current else None
    if current is not None and since is not None and old is not None and since > old:
        outcome.update(to=current["cursor"], kept=f"the order's since {payload['since']} is later than the "
                                                  f"cursor: changes in between were not fetched")
    elif old is not None and (parse_time(new) or datetime.min.replace(tzinfo=timezone.utc)) <= old:
        outcome.update(to=current["cursor"], kept="the cursor is already later than this order")  # type: ignore[index]
    else:
        conn.execute(
            "INSERT INTO sync_cursors (source, cursor, order_id, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, order_id = excluded.order_id, "
            "updated_at = excluded.updated_at", (source, new, order["id"], now))
    append_event(conn, now=now, actor=Actor.system(), event="cursor_kept" if "kept" in outcome else "cursor_advanced",
                 entity="order", order_id=order["id"], payload=outcome)
    return outcome


def cursors(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(zip(("source", "cursor", "order_id", "updated_at"), tuple(r), strict=True)) for r in conn.execute(
        "SELECT source, cursor, order_id, updated_at FROM sync_cursors ORDER BY source")]
