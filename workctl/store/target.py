"""The target: the database holding the ``users`` table that approve writes into and revert restores.

By default that is the store's own database (one file, one transaction for apply and bookkeeping);
``[target] db`` (or ``WORKCTL_TARGET_DB``) names a second SQLite file. Everything that touches the
target goes through here: opening it, reading its columns and user ids, and the marker tables that make
an apply (and a revert) exactly-once across a crash between the target's commit and the store's.

Identifiers only reach SQL through ``quote`` after they were found among the table's columns.
"""

from __future__ import annotations

import os
import sqlite3
from ..errors import Invalid

APPLIED_MARKER = "_workctl_applied"
REVERTED_MARKER = "_workctl_reverted"
BUSY_TIMEOUT_S = 30


def quote(name: str) -> str:
    """An SQL identifier, double-quoted (only ever for names checked against the table's columns)."""
    return '"' + name.replace('"', '""') + '"'


def connect_target(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    return conn


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


class Target:
    """``with session.target() as conn:`` — the connection to the target database.

    When the target is the store's own file this is the store's connection (so approve applies and
    records in one transaction); otherwise a connection of its own, closed on exit."""

    def __init__(self, store_conn: sqlite3.Connection, store_path: str, target_path: str | None):
        self.store_conn = store_conn
        self.path = target_path or store_path
        self.same = same_file(self.path, store_path)
        self._own: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        if self.same:
            return self.store_conn
        if not os.path.exists(self.path):
            raise Invalid(f"target database {self.path} does not exist", code="target_missing")
        self._own = connect_target(self.path)
        return self._own

    def __exit__(self, *exc: object) -> None:
        if self._own is not None:
            self._own.close()
            self._own = None


def user_columns(conn: sqlite3.Connection) -> list[str]:
    """The columns of ``users`` in table order (empty when there is no such table)."""
    return [row[1] for row in conn.execute("SELECT * FROM pragma_table_info('users')")]


def local_user_ids(target_db: Target) -> list[int]:
    with target_db as target:
        try:
            return [row[0] for row in target.execute("SELECT id FROM users ORDER BY id")]
        except sqlite3.OperationalError as exc:
            raise Invalid(f"the target database has no users table: {exc}", code="no_users_table") from exc


# -- exactly-once markers (written in the target's own transaction) -----------------------------------
def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
        is not None


def read_marker(conn: sqlite3.Connection, table: str, order_id: str, column: str) -> str | None:
    """The JSON text a marker table holds for the order, or None when it was not applied/reverted there."""
    if not _has_table(conn, table):
        return None
    row = conn.execute(f"SELECT {column} FROM {table} WHERE order_id = ?", (order_id,)).fetchone()
    return None if row is None else row[0]


def applied_diff(conn: sqlite3.Connection, order_id: str) -> str | None:
    """The diff (JSON text) an earlier apply of this order recorded in the target, if any."""
    return read_marker(conn, APPLIED_MARKER, order_id, "diff")


def mark_applied(conn: sqlite3.Connection, order_id: str, now: str, diff_json: str) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {APPLIED_MARKER} (order_id TEXT PRIMARY KEY, "
                 "applied_at TEXT NOT NULL, diff TEXT NOT NULL)")
    conn.execute(f"INSERT INTO {APPLIED_MARKER} (order_id, applied_at, diff) VALUES (?, ?, ?)",
                 (order_id, now, diff_json))


def reverted_outcome(conn: sqlite3.Connection, order_id: str) -> str | None:
    return read_marker(conn, REVERTED_MARKER, order_id, "result")


def mark_reverted(conn: sqlite3.Connection, order_id: str, revert_id: str, now: str, result_json: str) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {REVERTED_MARKER} (order_id TEXT PRIMARY KEY, "
                 "revert_id TEXT NOT NULL, reverted_at TEXT NOT NULL, result TEXT NOT NULL)")
    conn.execute(f"INSERT INTO {REVERTED_MARKER} (order_id, revert_id, reverted_at, result) VALUES (?, ?, ?, ?)",
                 (order_id, revert_id, now, result_json))


