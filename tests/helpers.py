"""Test helpers, in one module: run workctl (in-process or as a real process), build and read stores and
users tables, build agent results, drive real processes (ready/go, kill -9), check event trails, and
report measured figures. Fixtures live in conftest.py; everything else a test shares is here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections import defaultdict
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from typer.testing import CliRunner

from workctl.cli.app import app
from workctl.core.lifecycle import ITEM_STATES, ITEM_TRANSITIONS, ORDER_STATES, ORDER_TRANSITIONS

REPO = Path(__file__).resolve().parents[1]
NOW = "2026-01-01T00:00:00Z"


# -- running workctl ----------------------------------------------------------------------------------
@dataclass
class Ran:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def run(db: Path | str, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Ran:
    result = CliRunner().invoke(app, ["--db", str(db), *args], input=input, env=env, catch_exceptions=False)
    return Ran(result.exit_code, result.stdout, result.stderr)


def run_process(db: Path | str, *args: str, env: dict[str, str] | None = None, input: str | None = None) -> Ran:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "workctl", "--db", str(db), *args], capture_output=True,
                          text=True, env=full_env, input=input, timeout=120)
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def build_pinned(folder: Path, build: Callable[[Path], Any]) -> Any:
    """``build(folder)`` with time pinned to NOW, no plugins, nothing from the environment and ``folder``
    as the working directory: how module-scoped template stores are made (the per-test fixtures of
    conftest.py do not reach a module-scoped fixture)."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        for name in ("WORKCTL_DB", "WORKCTL_CONFIG", "WORKCTL_TARGET_DB", "WORKCTL_AGENT_ID", "WORKCTL_LEASE_TOKEN"):
            mp.delenv(name, raising=False)
        mp.setenv("WORKCTL_LOAD_PLUGINS", "0")
        mp.setenv("WORKCTL_NOW", NOW)
        mp.chdir(folder)
        return build(folder)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a workctl child process: this checkout, no plugins, nothing inherited that
    would point it elsewhere (store, config, target, crash hook)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORKCTL_LOAD_PLUGINS": "0"}
    for name in ("WORKCTL_DB", "WORKCTL_CONFIG", "WORKCTL_TARGET_DB", "WORKCTL_NOW", "WORKCTL_AGENT_ID",
                 "WORKCTL_TEST_CRASH_AT", "WORKCTL_DEBUG"):
        env.pop(name, None)
    env.update(extra)
    return env


def free_port() -> int:
    """A loopback port nothing listens on (yet): a dead source, or a server's port chosen in advance."""
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def workctl_cmd(db: Path | str, *args: str) -> list[str]:
    """argv of a real ``workctl`` process (the console script's entry point, via -m)."""
    return [sys.executable, "-m", "workctl", "--db", str(db), *args]


def python_cmd(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(script), *args]


def as_on_a_terminal() -> None:
    """``preexec_fn`` for a process a test will Ctrl-C: SIGINT back to its default. A suite started as a
    background job of a non-interactive shell (``cmd &``, as some CI runners do) ignores SIGINT, every
    child inherits that, and Python then installs no KeyboardInterrupt handler; at a terminal it is never
    ignored, which is what these tests stand for."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill9(proc: subprocess.Popen[Any]) -> None:
    """kill -9 the process and everything in its process group (start it with start_new_session=True)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def start_ready_processes(argvs: list[list[str]], *, cwd: Path, env: dict[str, str]) -> list[subprocess.Popen[str]]:
    """Start processes that print 'ready' once set up and then wait for a line on stdin; return them
    once all are ready (so a race or a kill starts from a known point, not from interpreter start-up)."""
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=cwd, env=env, start_new_session=True) for argv in argvs]
    try:
        for proc in procs:
            assert proc.stdout is not None
            ready = proc.stdout.readline()
            if ready != "ready\n":
                err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
                raise AssertionError(f"child not ready: {ready!r} {err}")
    except BaseException:
        for proc in procs:
            if proc.poll() is None:
                kill9(proc)
        raise
    return procs


def go(procs: Iterable[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


# -- stores and users tables ----------------------------------------------------------------------------
PG_URL = os.environ.get("WORKCTL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@functools.cache
def pg_unreachable() -> str | None:
    """Why the PostgreSQL server of the tests cannot be used (None when it can)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    try:
        psycopg.connect(PG_URL, connect_timeout=5).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL server at {PG_URL}: {str(exc).strip().splitlines()[0]}"
    return None


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, as a store URL, dropped afterwards. Skips the test when there is no
    server — or fails it when ``WORKCTL_TEST_PG`` is set (CI), so a missing server never passes."""
    import psycopg
    import pytest

    reason = pg_unreachable()
    if reason:
        if os.environ.get("WORKCTL_TEST_PG"):
            pytest.fail(f"WORKCTL_TEST_PG is set but {reason}")
        pytest.skip(reason)
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {name}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {name} CASCADE")


def is_url(db: Path | str) -> bool:
    return str(db).startswith(("postgresql://", "postgres://"))


class _PgTestConnection:
    """A plain psycopg connection that takes the tests' ``?`` placeholders and hands rows out by name and
    position (what ``sqlite3.Row`` offers the SQLite side). Test-local: not the store's own connection."""

    def __init__(self, url: str):
        import psycopg
        from psycopg.rows import dict_row

        self.raw = psycopg.connect(url, autocommit=False, row_factory=dict_row)

    def execute(self, sql: str, params: Any = ()) -> Any:
        cursor = self.raw.execute(sql.replace("%", "%%").replace("?", "%s"), params or None)
        return _PgRows(cursor)

    def executemany(self, sql: str, rows: Any) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(sql.replace("%", "%%").replace("?", "%s"), rows)

    def commit(self) -> None:
        self.raw.commit()

    def close(self) -> None:
        self.raw.commit()
        self.raw.close()


class _Row(dict[str, Any]):
    """A row readable by column name and by position."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int | slice):
            return tuple(self.values())[key]
        return super().__getitem__(key)

    def __iter__(self) -> Any:  # like a tuple: tuple(row), a, b = row
        return iter(list(self.values()))

    def keys(self) -> Any:
        return super().keys()

    def items(self) -> Any:
        return super().items()


class _PgRows:
    def __init__(self, cursor: Any):
        self.cursor = cursor

    def fetchone(self) -> Any:
        row = self.cursor.fetchone() if self.cursor.description else None
        return None if row is None else _Row(row)

    def fetchall(self) -> list[Any]:
        return [_Row(r) for r in self.cursor.fetchall()] if self.cursor.description else []

    def __iter__(self) -> Any:
        return iter(self.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self.cursor.rowcount)


def connect(db: Path | str) -> Any:
    """A plain connection to a store's database, SQLite file or PostgreSQL URL; rows by name and position."""
    if is_url(db):
        return _PgTestConnection(str(db))
    conn = sqlite3.connect(str(db))
    conn.row_factory = sqlite3.Row
    return conn


USERS_SCHEMA = ("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT, email TEXT, phone TEXT, "
                "company TEXT, last_seen TEXT, sessions INTEGER, plan TEXT, mrr INTEGER, currency TEXT, password TEXT, "
                "is_admin INTEGER DEFAULT 0, role TEXT)")


def make_users(path: str | Path, count: int = 150, *, start: int = 1, filled: bool = False) -> None:
    """Create ``users`` (if missing) in the store's database (a SQLite file or a PostgreSQL URL) with users
    start..start+count-1.

    A user has only a name unless ``filled``, which gives every column an old value (so a sync of any
    source changes something) and sensitive columns (password, is_admin, role) something to protect."""
    conn = connect(path)
    try:
        if not is_url(path):
            conn.execute("PRAGMA synchronous = OFF")  # test data: skip the fsyncs, keep the suite fast
        conn.execute(USERS_SCHEMA)
        if filled:
            conn.executemany(
                "INSERT INTO users (id, name, email, phone, company, last_seen, sessions, plan, mrr, currency, "
                "password, is_admin, role) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(i, f"User {i}", f"user{i}@old.example", f"+1-555-{i:04d}", "Old Co", "2025-12-01T00:00:00Z",
                  i % 7, "free", 0, "USD", f"hash-{i}", 0, "member") for i in range(start, start + count)])
        else:
            conn.executemany("INSERT INTO users (id, name) VALUES (?, ?)",
                             [(i, f"User {i}") for i in range(start, start + count)])
        conn.commit()
    finally:
        conn.close()


def read_users(path: str | Path) -> dict[int, dict[str, Any]]:
    with closing(connect(path)) as conn:
        return {row["id"]: dict(row) for row in conn.execute("SELECT * FROM users ORDER BY id")}


def events(db: str | Path, where: str = "1 = 1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """The events table, oldest first, read through a separate plain connection."""
    where = "1 = 1" if where == "1" else where
    with closing(connect(db)) as conn:
        return [dict(r) for r in conn.execute(f"SELECT * FROM events WHERE {where} ORDER BY id", params)]


_KEYS = {"orders": "id", "items": "id", "events": "id", "idempotency_keys": "scope, key_hash"}


def rows(db: str | Path, table: str, order_by: str = "rowid") -> list[tuple[Any, ...]]:
    """Every row of a table as plain tuples (for "nothing changed" comparisons)."""
    if order_by == "rowid" and is_url(db):  # PostgreSQL has no rowid: the table's key, else every column
        order_by = _KEYS.get(table, "1")
    with closing(connect(db)) as conn:
        return [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY {order_by}")]


def table_snapshot(db: str | Path) -> dict[str, list[tuple[Any, ...]]]:
    """The whole workflow state of a store: orders, items, events and idempotency keys."""
    return {table: rows(db, table) for table in ("orders", "items", "events", "idempotency_keys")}


def file_snapshot(path: Path | str) -> tuple[str, str]:
    """(sha256 of the main file, logical dump) after folding the WAL into it: byte-for-byte "unchanged"."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    dump = "\n".join(conn.iterdump())
    conn.close()
    return hashlib.sha256(Path(path).read_bytes()).hexdigest(), dump


# -- agent results -------------------------------------------------------------------------------------
def result_for_item(item_input: dict[str, Any], **overrides: Any) -> dict[str, Any]:
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


def result_for_users(user_ids: list[int], **overrides: Any) -> dict[str, Any]:
    """A valid result for the seed's order (email, phone, company) with realistic values."""
    result = {"success": True, "synced_users": [
        {"user_id": uid, "data": {"email": f"user{uid}@example.com", "phone": f"+1555{uid:07d}",
                                  "company": f"Company {uid % 7}"}, "verified": True} for uid in user_ids],
        "errors": []}
    result.update(overrides)
    return result


def propose_sync(db: Path | str, payload: dict[str, Any], *pre: str, env: dict[str, str] | None = None) -> str:
    """Propose a user.data.sync order through the CLI (``pre``: global options such as --config); its id."""
    ran = run(db, *pre, "propose", "user.data.sync", "--payload", json.dumps(payload), "--json", env=env)
    assert ran.exit_code == 0, ran.stderr
    return ran.json["order"]["id"]


def work_order(db: Path | str, order_id: str, data: dict[int, dict[str, Any]], *pre: str,
               env: dict[str, str] | None = None, agent: str = "agent", extra: dict[str, Any] | None = None,
               entry_extra: dict[int, dict[str, Any]] | None = None) -> list[Ran]:
    """The agent commands by hand: check out every item of the order and submit a result built from
    ``data`` (a user without data is a failed user); ``extra`` adds top-level keys (``fetched_at``),
    ``entry_extra[user]`` keys of that user's entry (``updated_at``). Returns the submits' results."""
    submitted = []
    while True:
        leased = run(db, *pre, "checkout", order_id, "--agent", agent, "--json", env=env)
        if leased.exit_code == 3:
            return submitted
        assert leased.exit_code == 0, leased.stderr
        item = leased.json["item"]
        ids = item["input"]["user_ids"]
        result = {"success": True, **(extra or {}),
                  "synced_users": [{"user_id": u, "data": data[u], "verified": True, **(entry_extra or {}).get(u, {})}
                                   for u in ids if u in data],
                  "failed_users": [{"user_id": u, "error": "not_found: no such user"} for u in ids if u not in data]}
        ran = run(db, *pre, "submit", item["id"], "--agent", agent, "--lease-token", item["lease_token"],
                  "--result", json.dumps(result), "--json", env=env)
        submitted.append(ran)
        if ran.exit_code != 0:
            return submitted


# -- the event trail -------------------------------------------------------------------------------
def lease_violations(events: list[dict[str, Any]]) -> list[str]:
    """Double leases in an event trail.

    Replays every item's lease: a 'leased' event opens a lease until its expiry (moved on by
    'heartbeat'); 'submitted', 'released', 'failed' and 'lease_expired' from 'leased' close it. A
    violation is a second 'leased' while one is open, or a 'lease_expired' (reclaim) logged before the
    lease's expiry time: either would mean two agents held the item at once.
    """
    open_leases: dict[str, tuple[str, str]] = {}  # item -> (agent, expires)
    problems = []
    for ev in events:
        item = ev["item_id"]
        if item is None or ev["entity"] != "item":
            continue
        payload = json.loads(ev["payload"]) if ev["payload"] else {}
        if ev["event"] == "leased":
            if item in open_leases:
                problems.append(f"event {ev['id']}: {item} leased by {ev['actor_id']} while held by "
                                f"{open_leases[item][0]}")
            open_leases[item] = (ev["actor_id"], payload.get("lease_expires_at", ""))
        elif ev["event"] == "heartbeat":
            if item not in open_leases or open_leases[item][0] != ev["actor_id"]:
                problems.append(f"event {ev['id']}: heartbeat on {item} by {ev['actor_id']} without its lease")
            else:
                open_leases[item] = (ev["actor_id"], payload["lease_expires_at"])
        elif ev["from_state"] == "leased":
            held = open_leases.pop(item, None)
            if held is None:
                problems.append(f"event {ev['id']}: {ev['event']} of {item} that was not leased")
            elif ev["event"] == "lease_expired" and ev["created_at"] < held[1]:
                problems.append(f"event {ev['id']}: lease of {item} reclaimed at {ev['created_at']}, "
                                f"before it expired at {held[1]}")
            elif ev["actor_type"] == "agent" and ev["actor_id"] != held[0]:
                problems.append(f"event {ev['id']}: {ev['event']} of {item} by {ev['actor_id']}, "
                                f"but {held[0]} held the lease")
    return problems


def chain_problems(db: Path | str) -> list[str]:
    """Every order's and item's transition events, in order, must chain through the transition table
    from its first state to the state its row is in now ("every transition has its event")."""
    conn = connect(db)
    try:
        orders = {r[0]: r[1] for r in conn.execute("SELECT id, state FROM orders").fetchall()}
        items = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, order_id, state FROM items")}
        events = conn.execute("SELECT id, entity, order_id, item_id, event, from_state, to_state FROM events "
                              "WHERE entity IN ('order', 'item') AND to_state IS NOT NULL ORDER BY id").fetchall()
        planned = {r[0] for r in conn.execute("SELECT order_id FROM events WHERE event = 'planned'")}
    finally:
        conn.close()
    problems = []
    order_at: dict[str, str | None] = {oid: None for oid in orders}
    item_at: dict[str, str] = {iid: "queued" for iid in items}  # items are created queued ('planned')
    for ev_id, entity, order_id, item_id, event, src, dst in events:
        if entity == "order":
            table, at, key = ORDER_TRANSITIONS, order_at, order_id
        else:
            table, at, key = ITEM_TRANSITIONS, item_at, item_id
        if key not in at:
            problems.append(f"event {ev_id}: {entity} {key} does not exist")
            continue
        if at[key] != src or dst not in table.get(src, {}):
            problems.append(f"event {ev_id}: {entity} {key} {src}->{dst} ({event}) but it was {at[key]}")
        at[key] = dst
    for oid, state in orders.items():
        if state not in ORDER_STATES:
            problems.append(f"order {oid} in unknown state {state}")
        if order_at[oid] != state:
            problems.append(f"order {oid} is {state} but its events end at {order_at[oid]}")
        if oid not in planned:
            problems.append(f"order {oid} has no 'planned' event")
    for iid, (_, state) in items.items():
        if state not in ITEM_STATES:
            problems.append(f"item {iid} in unknown state {state}")
        if item_at[iid] != state:
            problems.append(f"item {iid} is {state} but its events end at {item_at[iid]}")
    return problems


def per_item_counts(events: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for ev in events:
        if ev["item_id"]:
            counts[ev["item_id"]][ev["event"]] += 1
    return counts


# -- reading a store ----------------------------------------------------------------------------------
def query(db: Path | str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(connect(db)) as conn:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]


def sql(db: Path | str, *statements: str, params: tuple[Any, ...] = ()) -> None:
    """Run statements on a SQLite file (a users table, an edit outside workctl) and commit; ``params``
    go to the statements that have placeholders."""
    with closing(sqlite3.connect(db)) as conn:
        for statement in statements:
            conn.execute(statement, params if "?" in statement else ())
        conn.commit()


def order_state(db: Path | str, order_id: str, *pre: str) -> str:
    """The order's state as `workctl show --json` reports it (``pre``: global options such as --config)."""
    return run(db, *pre, "show", order_id, "--json").json["order"]["state"]


def newer_store(db: Path) -> Path:
    """A store as a newer workctl would leave it: a migration this version does not know."""
    assert run(db, "init").exit_code == 0
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                 "VALUES ('workctl', 'm999_from_the_future', '2030-01-01')")
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return db


def users_rows(db: Path | str, columns: str = "*") -> dict[int, tuple[Any, ...]]:
    with closing(connect(db)) as conn:
        return {r[0]: tuple(r[1:]) for r in conn.execute(f"SELECT id, {columns} FROM users ORDER BY id")}


def count(db: Path | str, sql: str, params: tuple[Any, ...] = ()) -> int:
    with closing(connect(db)) as conn:
        return conn.execute(sql, params).fetchone()[0]


def table_exists(db: Path | str, name: str) -> bool:
    with closing(connect(db)) as conn:
        if is_url(db):
            return conn.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()[0]
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
            is not None


# -- figures --------------------------------------------------------------------------------------------
def figure(name: str, **values: Any) -> None:
    """Report a measured figure: printed (visible with -s) and, when WORKCTL_RELIABILITY_FIGURES names
    a file, appended to it as one JSON line (docs/reliability.md quotes these)."""
    record = {"figure": name, **values, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"\nFIGURE {json.dumps(record)}")
    path = os.environ.get("WORKCTL_RELIABILITY_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def taken(items: dict[str, Any]) -> dict[str, int]:
    """What became of the items an agent run took: submitted, released (with an error) or lost."""
    return {key: items[key] for key in ("submitted", "released", "lost")}
