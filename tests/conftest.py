"""Shared fixtures: a manual clock, a store path in tmp_path, a seeded users table, a ready Workctl.

Everything runs on real SQLite files; time only moves when a test calls ``clock.advance``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

import pytest

from workctl import Workctl
from workctl.clock import ManualClock
from workctl.config import Config

@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No plugins, and nothing from the developer's environment or working directory leaks in."""
    monkeypatch.setenv("WORKCTL_LOAD_PLUGINS", "0")
    for name in ("WORKCTL_DB", "WORKCTL_CONFIG", "WORKCTL_NOW", "WORKCTL_TARGET_DB", "WORKCTL_AGENT_ID",
                 "WORKCTL_TEST_CRASH_AT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # so a stray ./workctl.toml or ./workctl.db is never picked up


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock("2026-01-01T00:00:00Z")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "w.db"


def seed_users(path: str | Path, count: int, *, start: int = 1) -> None:
    """Create ``users`` (if missing) in the SQLite file at ``path`` and insert users start..start+count-1."""
    conn = sqlite3.connect(str(path))
    try:
        conn.execute("PRAGMA synchronous = OFF")  # test data: skip the fsyncs, keep the suite fast
        conn.execute(
            "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name, email, phone, company, last_seen, "
            "sessions, plan, mrr, currency, password, is_admin, role)")
        conn.executemany(
            "INSERT INTO users (id, name, email, phone, company, last_seen, sessions, plan, mrr, currency, "
            "password, is_admin, role) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(i, f"User {i}", f"user{i}@old.example", f"+1-555-{i:04d}", "Old Co", "2025-12-01T00:00:00Z",
              i % 7, "free", 0, "USD", f"hash-{i}", 0, "member")
             for i in range(start, start + count)])
        conn.commit()
    finally:
        conn.close()


def read_users(path: str | Path) -> dict[int, dict[str, Any]]:
    conn = sqlite3.connect(str(path))
    conn.row_factory = sqlite3.Row
    try:
        return {row["id"]: dict(row) for row in conn.execute("SELECT * FROM users ORDER BY id")}
    finally:
        conn.close()


@pytest.fixture
def users_db() -> Callable[..., None]:
    """``users_db(path, n, start=1)``: create the users table with n users in that SQLite file."""
    return seed_users


@pytest.fixture
def make_wc(db_path: Path, clock: ManualClock) -> Callable[..., Workctl]:
    """Open further Workctl handles (other agents, other configs) on the same store; all are closed."""
    opened: list[Workctl] = []

    def make(path: str | Path | None = None, *, config: Config | None = None, user: str = "operator") -> Workctl:
        wc = Workctl(path or db_path, config=config or Config(), clock=clock, user=user)
        opened.append(wc)
        return wc

    yield make
    for wc in opened:
        wc.close()


@pytest.fixture
def wc(db_path: Path, users_db: Callable[..., None], make_wc: Callable[..., Workctl]) -> Workctl:
    """A Workctl on a fresh store whose own file also holds 150 users (the default target)."""
    users_db(db_path, 150)
    handle = make_wc()
    handle.session  # open (create and migrate) the store now, so tests can inspect it from the start
    return handle


def sync_result(item_input: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A valid ``user.data.sync`` result for an item: every batch user synced, verified, every field set.

    Values are derived from the user id and field name, so they always differ from the seeded ones.
    ``overrides`` replace top-level keys of the result (e.g. ``synced_users=[...]``).
    """
    result: dict[str, Any] = {
        "success": True,
        "synced_users": [
            {"user_id": uid, "data": {field: f"{field}-{uid}-new" for field in item_input["fields"]},
             "verified": True}
            for uid in item_input["user_ids"]
        ],
        "failed_users": [],
        "errors": [],
    }
    result.update(overrides)
    return result


@pytest.fixture(name="sync_result")
def sync_result_fixture() -> Callable[..., dict[str, Any]]:
    return sync_result


def events(db: str | Path, where: str = "1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """The events table, oldest first, read through a separate plain connection."""
    conn = sqlite3.connect(str(db))
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM events WHERE {where} ORDER BY id", params)]
    finally:
        conn.close()


def rows(db: str | Path, table: str, order_by: str = "rowid") -> list[tuple[Any, ...]]:
    """Every row of a table as plain tuples (for "nothing changed" comparisons)."""
    conn = sqlite3.connect(str(db))
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY {order_by}").fetchall()
    finally:
        conn.close()


def snapshot(db: str | Path) -> dict[str, list[tuple[Any, ...]]]:
    """The whole workflow state of a store: orders, items, events and idempotency keys."""
    return {table: rows(db, table) for table in ("orders", "items", "events", "idempotency_keys")}
