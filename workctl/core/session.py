"""A Session is one open store plus the injected clock and config: what every core operation runs on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..clock import Clock, iso
from ..config import Config
from ..errors import NotFound
from ..jsonio import loads
from ..store import sqlite_hotpath
from ..store.hotpath import HotPath
from ..store.target import Target
from ..store.base import Connection, Row


# An item as the engine reads it: the narrow row the claims work on, with its input and its outcome.
ITEM_SELECT = ("SELECT i.n, i.id, i.order_id, i.seq, i.type, i.priority, i.state, i.attempts, i.max_attempts, "
               "i.visible_at, i.leased_by, i.lease_token, i.lease_expires_at, i.updated_at, inp.input, r.result, "
               "r.error, r.submitted_by FROM items i JOIN item_inputs inp ON inp.n = i.n "
               "LEFT JOIN item_results r ON r.n = i.n")


@dataclass
class Session:
    conn: Connection
    db_path: str
    config: Config
    clock: Clock
    hot: HotPath = sqlite_hotpath  # the store's own (conn.hot); SQLite's by default, for sessions built by hand

    def now(self) -> str:
        return iso(self.clock())

    def order_row(self, order_id: str) -> Row:
        row = self.conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        if row is None:
            raise NotFound(f"no order with id '{order_id}'", code="order_not_found")
        return row

    def order_head(self, order_id: str) -> Row:
        """The order's id, type, state and source, not its payload (megabytes for a large sync order, which a
        per-batch existence check would read and copy each time); NotFound for an unknown id."""
        row = self.conn.execute("SELECT id, type, state, source FROM orders WHERE id = ?", (order_id,)).fetchone()
        if row is None:
            raise NotFound(f"no order with id '{order_id}'", code="order_not_found")
        return row

    def type_settings(self, name: str, known: frozenset[str] | None = None) -> dict[str, Any]:
        """What an order type is given of the config: its ``[types."<name>"]`` table, plus the
        ``[target]`` table as ``target_config`` (``allow_fields``, ``max_value_chars``). With ``known``
        (the type's ``settings_keys``), a key the type does not read is refused as a typo."""
        target = self.config.raw.get("target") if isinstance(self.config.raw, dict) else None
        return {**self.config.type_settings(name, known),
                "target_config": dict(target) if isinstance(target, dict) else {}}

    def target(self) -> Target:
        """The database holding the users table (the store's own, or ``[target] db``)."""
        return Target(self.conn, self.db_path, self.config.target_db)

    def item_row(self, item_id: str) -> Row:
        row = self.conn.execute(ITEM_SELECT + " WHERE i.id = ?", (item_id,)).fetchone()
        if row is None:
            raise NotFound(f"no item with id '{item_id}'", code="item_not_found")
        return row


def order_summary(row: Row) -> dict[str, Any]:
    return {"id": row["id"], "type": row["type"], "state": row["state"], "priority": row["priority"],
            "payload": loads(row["payload"]), "item_count": row["item_count"],
            "requested_by": row["requested_by"], "created_at": row["created_at"],
            "updated_at": row["updated_at"]}


def item_summary(row: Row) -> dict[str, Any]:
    return {"id": row["id"], "order_id": row["order_id"], "seq": row["seq"], "type": row["type"],
            "state": row["state"], "attempts": row["attempts"], "max_attempts": row["max_attempts"],
            "leased_by": row["leased_by"], "lease_expires_at": row["lease_expires_at"],
            "submitted_by": row["submitted_by"], "error": loads(row["error"]),
            "retry_at": row["visible_at"] if row["state"] == "queued" and row["visible_at"] else None,
            "updated_at": row["updated_at"]}
