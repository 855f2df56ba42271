#!/usr/bin/env python3
"""SQL-level prototypes of workctl's checkout + submit hot path, on SQLite (stdlib sqlite3) and
PostgreSQL (psycopg 3), measured side by side against a raw claim + ack loop in the same run.

No workctl code is imported: every variant is plain SQL plus the few lines of Python the library
would run around it (the order-state derivation, the event payloads). Each variant keeps the
invariants of docs/hotpath-notes.md (one transaction per transition, fenced writes, reclaim by the
claim, attempts counted at checkout, an audit event per transition, derived order state, priority
then age, fixed-width ISO text timestamps, UUID text ids); ``--selftest`` exercises the rare paths
(expired lease reclaim, max_attempts, a stale token, claims by order and by type, the order's
derived states) and the claim plans on both backends.

Variants (``--variants``, keys; the backend's raw loop is the baseline and always runs). SQLite:

  raw       stdlib claim + ack, 2 txns per job (bench_peers.py's raw loop)
  a         today's schema and statements (15 per cycle)
  b         lean schema, checkout + submit (2 txns)         b-tuned  (b) + wal_autocheckpoint 10000
  c         lean + submit --next (1 txn per cycle)          d        (c) + wal_autocheckpoint 10000 [recommended]
  e         (d) + 2 claim indexes + events keyed by order   d-inclaim (d), leased rows kept in the claim indexes
  batch8    (d) with 8 leases per claim [not for the CLI]   raw-next, raw-tuned, huey (needs huey installed)
  L1 … L5   the ablation ladder (each breaks an invariant: what one piece costs)

PostgreSQL (the same schemas, psycopg 3, synchronous_commit on):

  pg-raw    psycopg claim + ack, autocommit, 2 txns per job (peers-pg.md's raw loop)
  pg-a      today's schema ported, one statement per round trip
  pg-b      lean, 2 txns, each a CTE statement + COMMIT     pg-b1  the same, autocommit, order derived in SQL
  pg-c      lean + submit --next, CTE + COMMIT              pg-d   (c) as one autocommit CTE statement
  pg-e      (d) with the reclaim as a 2nd statement in the same pipeline
  pg-f      lean + submit --next as ONE plpgsql call [recommended]   pg-f2  checkout + submit as 2 calls
  pg-c3     (c) as plain statements (3 round trips)         pg-nocnt (c) without the counter row [ablation]
  pg-batch8 8 leases per claim, 8 submits per txn           pg-raw-next  raw ack + claim-next

Usage (the PostgreSQL part needs psycopg in the interpreter: /work/benchvenv):
  python bench/hotpath_proto.py --backend sqlite --n 20000 --procs 4 --rounds 5
  /work/benchvenv/bin/python bench/hotpath_proto.py --backend pg --n 20000 --rounds 5 \\
      --dsn 'host=127.0.0.1 user=postgres dbname=bench_hotpath'
  python bench/hotpath_proto.py --backend sqlite --wal-only        # WAL bytes + statements per cycle
  /work/benchvenv/bin/python bench/hotpath_proto.py --selftest --backend both --dsn …
  /work/benchvenv/bin/python bench/hotpath_proto.py --scale --backend both --dsn …   # 1k vs 1M items
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections import defaultdict
from typing import Any, Callable

TTL = 300.0
LOCKED_SLEEP = 0.001
AGENT_PREFIX = "bench-"
TASK_TYPE = "task.batch"

# ------------------------------------------------------------------------------------------------
# What the library computes in Python around the SQL (copied, not imported: no workctl code here)
# ------------------------------------------------------------------------------------------------
ITEM_STATES = ("queued", "leased", "submitted", "accepted", "completed", "rejected", "failed",
               "dead_lettered")
DONE = frozenset({"submitted", "accepted", "completed"})
ORDER_TRANSITIONS = {
    "queued": {"in_progress": "started"},
    "in_progress": {"submitted": "submitted", "failed": "failed"},
    "submitted": {"approved": "approved", "rejected": "rejected", "queued": "requeued"},
    "approved": {"applied": "applied"}, "applied": {"completed": "completed"},
    "failed": {"in_progress": "retried", "dead_lettered": "dead_lettered"},
    "dead_lettered": {"in_progress": "retried"}, "completed": {}, "rejected": {},
}
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(value: Any) -> str:
    return _COMPACT(value)


def iso(t: float) -> str:
    """Fixed-width ISO-8601 UTC text, e.g. 2026-11-28T15:10:42.123456Z (compares correctly as text)."""
    whole = int(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + ".%06dZ" % int((t - whole) * 1e6)


def new_id() -> str:
    return str(uuid.uuid4())


def new_token() -> str:
    return os.urandom(16).hex()


def derive(current: str, present: set[str] | frozenset[str]) -> str:
    """workctl.lifecycle.derived_order_state, verbatim in behaviour."""
    if current in ("submitted", "approved", "applied", "completed", "rejected") or not present:
        return current
    if present <= DONE:
        return "submitted"
    if present & {"queued", "leased"}:
        if current == "queued" and present <= {"queued"}:
            return "queued"
        return "in_progress"
    if "failed" in present:
        return "failed"
    if "dead_lettered" in present:
        return "dead_lettered"
    return current


def order_path(current: str, target: str) -> list[str]:
    frontier, seen = [[current]], {current}
    while frontier:
        path = frontier.pop(0)
        for nxt in ORDER_TRANSITIONS.get(path[-1], {}):
            if nxt == target:
                return path[1:] + [nxt]
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(path + [nxt])
    raise RuntimeError(f"no order path {current} -> {target}")


class LeaseLost(Exception):
    pass


class Clock:
    """Wall time unless pinned (the self-test moves it by hand, as workctl's ManualClock)."""

    def __init__(self) -> None:
        self.pinned: float | None = None

    def __call__(self) -> float:
        return time.time() if self.pinned is None else self.pinned


CLOCK = Clock()


# ================================================================================================
# SQLite
# ================================================================================================

def sqlite_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # workctl's setting (WAL: fsync at checkpoint only)
    return conn


class SqliteVariant:
    key = ""
    name = ""
    backend = "sqlite"
    page_size: int | None = None

    def setup(self, path: str, n: int, orders: int = 1, types: tuple[str, ...] = (TASK_TYPE,),
              priorities: tuple[int, ...] = (0,), max_attempts: int = 3) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        if self.page_size:
            conn.execute(f"PRAGMA page_size = {self.page_size}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(self.ddl())
        conn.execute("BEGIN")
        task = 0
        per = n // orders
        now = iso(CLOCK())
        for o in range(orders):
            count = per if o < orders - 1 else n - per * (orders - 1)
            self.populate(conn, new_id(), types[o % len(types)], priorities[o % len(priorities)],
                          range(task, task + count), max_attempts, now)
            task += count
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    def ddl(self) -> str:
        raise NotImplementedError

    def populate(self, conn, order_id, type_name, priority, tasks, max_attempts, now) -> None:
        raise NotImplementedError

    def worker(self, path: str, agent: str):
        raise NotImplementedError


# ---------------------------- raw baseline (bench_peers.py's raw loop) --------------------------

class SqliteRaw(SqliteVariant):
    key, name = "raw", "raw sqlite3 claim+ack (2 txns, no audit)"

    def ddl(self) -> str:
        return """
        CREATE TABLE jobs (id INTEGER PRIMARY KEY, payload TEXT NOT NULL, state INTEGER NOT NULL DEFAULT 0,
          visible_at REAL NOT NULL, lease_token INTEGER, attempts INTEGER NOT NULL DEFAULT 0, result TEXT);
        CREATE INDEX jobs_claimable ON jobs(visible_at) WHERE state = 0;"""

    def populate(self, conn, order_id, type_name, priority, tasks, max_attempts, now) -> None:
        t = CLOCK()
        conn.executemany("INSERT INTO jobs(payload, visible_at) VALUES (?, ?)", ((str(i), t) for i in tasks))

    def worker(self, path: str, agent: str):
        return SqliteRawWorker(path)


class SqliteRawWorker:
    def __init__(self, path: str):
        self.c = sqlite_connect(path)
        self.token = os.getpid() << 20

    def claim(self):
        self.token += 1
        now = CLOCK()
        self.c.execute("BEGIN IMMEDIATE")
        try:
            row = self.c.execute(
                "UPDATE jobs SET visible_at = ?, lease_token = ?, attempts = attempts + 1 WHERE id = "
                "(SELECT id FROM jobs WHERE state = 0 AND visible_at <= ? ORDER BY visible_at LIMIT 1) "
                "RETURNING id, payload", (now + TTL, self.token, now)).fetchone()
            self.c.execute("COMMIT")
        except BaseException:
            if self.c.in_transaction:
                self.c.execute("ROLLBACK")
            raise
        return None if row is None else ((row[0], self.token), int(row[1]))

    def ack(self, handle) -> None:
        cur = self.c.execute("UPDATE jobs SET state = 1, result = 'ok' WHERE id = ? AND lease_token = ? "
                             "AND state = 0", handle)
        if cur.rowcount != 1:
            raise LeaseLost(handle)

    def close(self) -> None:
        self.c.close()


# ---------------------------- (a) today's schema and statements ---------------------------------

TODAY_DDL = """
CREATE TABLE orders (id TEXT PRIMARY KEY, type TEXT NOT NULL, state TEXT NOT NULL,
  priority INTEGER NOT NULL DEFAULT 0, payload TEXT NOT NULL, requested_by TEXT NOT NULL,
  item_count INTEGER NOT NULL, diff TEXT, error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
  submitted_at TEXT, approved_at TEXT, applied_at TEXT, completed_at TEXT);
CREATE INDEX orders_state_type ON orders(state, type);
CREATE INDEX orders_created ON orders(created_at);
CREATE TABLE items (n INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, order_id TEXT NOT NULL REFERENCES orders(id),
  seq INTEGER NOT NULL, type TEXT NOT NULL, state TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,
  input TEXT NOT NULL, result TEXT, error TEXT, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
  leased_by TEXT, lease_token TEXT, lease_expires_at TEXT, last_heartbeat_at TEXT,
  visible_at TEXT NOT NULL DEFAULT '', submitted_by TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE INDEX items_claim ON items(priority DESC, n) WHERE state IN ('queued', 'leased');
CREATE INDEX items_claim_order ON items(order_id, n) WHERE state IN ('queued', 'leased');
CREATE INDEX items_claim_type ON items(type, priority DESC, n) WHERE state IN ('queued', 'leased');
CREATE INDEX items_order_seq ON items(order_id, seq);
CREATE INDEX items_order_state ON items(order_id, state);
CREATE INDEX items_state ON items(state, lease_expires_at);
CREATE TABLE events (id INTEGER PRIMARY KEY, order_id TEXT, item_id TEXT, entity TEXT NOT NULL,
  event TEXT NOT NULL, from_state TEXT, to_state TEXT, actor_type TEXT NOT NULL, actor_id TEXT NOT NULL,
  payload TEXT, created_at TEXT NOT NULL);
CREATE INDEX events_order ON events(order_id, id);
CREATE INDEX events_item ON events(item_id, id);
CREATE INDEX events_created ON events(created_at);
"""
EVENT_INSERT = ("INSERT INTO events (order_id, item_id, entity, event, from_state, to_state, actor_type, "
                "actor_id, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_PRESENT_SQL = "SELECT " + ", ".join(
    f"EXISTS (SELECT 1 FROM items WHERE order_id = ?1 AND state = '{s}')" for s in ITEM_STATES)


class SqliteToday(SqliteVariant):
    key, name = "a", "(a) today's schema + statements"

    def ddl(self) -> str:
        return TODAY_DDL

    def populate(self, conn, order_id, type_name, priority, tasks, max_attempts, now) -> None:
        conn.execute("INSERT INTO orders (id, type, state, priority, payload, requested_by, item_count, "
                     "created_at, updated_at) VALUES (?, ?, 'queued', ?, ?, 'user:bench', ?, ?, ?)",
                     (order_id, type_name, priority, dumps({"tasks": len(tasks)}), len(tasks), now, now))
        conn.execute(EVENT_INSERT, (order_id, None, "order", "proposed", None, "queued", "user", "bench",
                                    None, now))
        conn.executemany(
            "INSERT INTO items (id, order_id, seq, type, state, priority, input, max_attempts, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
            ((new_id(), order_id, seq, type_name, priority, dumps({"task": t}), max_attempts, now, now)
             for seq, t in enumerate(tasks)))
        conn.execute(EVENT_INSERT, (order_id, None, "order", "planned", None, None, "system", "workctl",
                                    dumps({"item_count": len(tasks)}), now))

    def worker(self, path: str, agent: str):
        return SqliteTodayWorker(path, agent)


class SqliteTodayWorker:
    """The statements workctl runs today (leases.checkout, orders.submit, lifecycle.refresh_order)."""

    def __init__(self, path: str, agent: str, order_id: str | None = None, type_name: str | None = None):
        self.c = sqlite_connect(path)
        self.c.execute("PRAGMA foreign_keys = ON")
        self.c.row_factory = sqlite3.Row
        self.agent = agent
        if order_id:
            self.claim_sql, self.claim_args = (
                "SELECT id, order_id, state, attempts, max_attempts, leased_by FROM items WHERE state IN "
                "('queued', 'leased') AND order_id = ? AND visible_at <= ? ORDER BY n LIMIT 1", (order_id,))
        elif type_name:
            self.claim_sql, self.claim_args = (
                "SELECT id, order_id, state, attempts, max_attempts, leased_by FROM items WHERE state IN "
                "('queued', 'leased') AND type = ? AND visible_at <= ? ORDER BY priority DESC, n LIMIT 1",
                (type_name,))
        else:
            self.claim_sql, self.claim_args = (
                "SELECT id, order_id, state, attempts, max_attempts, leased_by FROM items INDEXED BY items_claim "
                "WHERE state IN ('queued', 'leased') AND visible_at <= ? ORDER BY priority DESC, n LIMIT 1", ())

    def _event(self, now, actor, event, order_id, item_id=None, frm=None, to=None, payload=None, entity="item"):
        self.c.execute(EVENT_INSERT, (order_id, item_id, entity, event, frm, to, actor[0], actor[1],
                                      None if payload is None else dumps(payload), now))

    def _move(self, item_id, order_id, current, target, now, actor, event, payload, sets, guard="", gp=()):
        names = sorted(sets)
        cur = self.c.execute(
            f"UPDATE items SET state = ?, updated_at = ?{''.join(f', {k} = ?' for k in names)} "
            f"WHERE id = ? AND state = ?{guard}", [target, now, *(sets[k] for k in names), item_id, current, *gp])
        if cur.rowcount != 1:
            return False
        self._event(now, actor, event, order_id, item_id, current, target, payload)
        return True

    def _refresh(self, order_id, now):
        current = self.c.execute("SELECT state FROM orders WHERE id = ?", (order_id,)).fetchone()[0]
        flags = self.c.execute(_PRESENT_SQL, (order_id,)).fetchone()
        target = derive(current, {s for s, f in zip(ITEM_STATES, flags, strict=False) if f})
        state = current
        if target != current:
            for step in order_path(current, target):
                extra = ", submitted_at = ?" if step == "submitted" else ""
                self.c.execute(f"UPDATE orders SET state = ?, updated_at = ?{extra} WHERE id = ? AND state = ?",
                               [step, now, *([now] if extra else []), order_id, state])
                self._event(now, ("system", "workctl"), ORDER_TRANSITIONS[state][step], order_id, None, state,
                            step, None, "order")
                state = step
        return state

    _CLEARED = {"leased_by": None, "lease_token": None, "lease_expires_at": None, "visible_at": ""}

    def claim(self):
        t = CLOCK()
        now, expires = iso(t), iso(t + TTL)
        claimed = None
        self.c.execute("BEGIN IMMEDIATE")
        try:
            while claimed is None:
                row = self.c.execute(self.claim_sql, (*self.claim_args, now)).fetchone()
                if row is None:
                    break
                item_id, order_id, state, attempts, max_attempts, holder = tuple(row)
                if state == "leased" or attempts >= max_attempts:
                    if attempts >= max_attempts:
                        error = {"code": "max_attempts_exceeded", "message": f"gave up after {attempts} attempts",
                                 "last_agent": holder}
                        self._move(item_id, order_id, state, "failed", now, ("system", "workctl"), "failed", error,
                                   {**self._CLEARED, "error": dumps(error)})
                        self._refresh(order_id, now)
                        continue
                    self._move(item_id, order_id, "leased", "queued", now, ("system", "workctl"), "lease_expired",
                               {"agent": holder, "attempts": attempts}, self._CLEARED)
                token = new_token()
                self._move(item_id, order_id, "queued", "leased", now, ("agent", self.agent), "leased",
                           {"lease_expires_at": expires, "attempt": attempts + 1},
                           {"attempts": attempts + 1, "leased_by": self.agent, "lease_token": token,
                            "lease_expires_at": expires, "visible_at": expires, "last_heartbeat_at": now})
                self._refresh(order_id, now)
                claimed = item_id, token
            self.c.execute("COMMIT")
        except BaseException:
            if self.c.in_transaction:
                self.c.execute("ROLLBACK")
            raise
        if claimed is None:
            return None
        row = self.c.execute("SELECT * FROM items WHERE id = ?", (claimed[0],)).fetchone()
        return (claimed[0], claimed[1]), json.loads(row["input"])["task"]

    def ack(self, handle, result=None) -> None:
        item_id, token = handle
        row = self.c.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()  # check_lease
        now = iso(CLOCK())
        if not (row["state"] == "leased" and row["leased_by"] == self.agent and row["lease_expires_at"] > now
                and row["lease_token"] == token):
            raise LeaseLost(item_id)
        self.c.execute("BEGIN IMMEDIATE")
        try:
            moved = self._move(item_id, row["order_id"], "leased", "submitted", now, ("agent", self.agent),
                               "submitted", {"attempt": row["attempts"]},
                               {"result": dumps(result if result is not None else {"ok": True}),
                                "submitted_by": self.agent, **self._CLEARED},
                               " AND leased_by = ? AND lease_expires_at > ? AND lease_token = ?",
                               (self.agent, now, token))
            if not moved:
                raise LeaseLost(item_id)
            self._refresh(row["order_id"], now)
            self.c.execute("COMMIT")
        except BaseException:
            if self.c.in_transaction:
                self.c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.c.close()


# ---------------------------- (b)/(c)/(d) the lean schema ---------------------------------------

class LeanFlags:
    """What a lean variant keeps; the defaults are the recommended design (docs/hotpath-notes.md).
    Switching one off is an ablation that breaks an invariant, to show what that piece costs."""

    submit_next = False          # submit and claim the next item in one transaction
    events = True                # an audit event per transition (invariant 4)
    counters = True              # per-order counters -> derived order state (invariant 5)
    results = True               # results in item_results (else: not stored; ablation)
    reclaim = "index"            # "index": items_leased(lease_expires_at) WHERE state='leased' + probe;
    #                              "inclaim": leased rows stay in the claim indexes, keyed on visible_at
    #                              (= the lease expiry) as today; "none": no reclaim (ablation)
    claim_indexes = "all"        # "all": any + by-order + by-type; "types": by-order + by-type (the any
    #                              claim is one seek per registered type); "any": any only (ablation)
    clustered_events = False     # events WITHOUT ROWID, PRIMARY KEY (order_id, seq)
    events_by_order_rowid = False  # events' rowid = order_n * 2^32 + the order's event seq: the table is
    #                                clustered by order with no secondary index (log = one rowid range)
    batch = 1                    # leases per claim statement (out of scope for the CLI)
    page_size: int | None = None
    autocheckpoint: int | None = None
    types: tuple[str, ...] = (TASK_TYPE, "user.data.sync")  # the type registry ("types" claims)


def lean_sqlite_ddl(f: LeanFlags) -> str:
    """The lean SQLite schema (docs/hotpath-notes.md explains every index)."""
    inclaim = f.reclaim == "inclaim"
    where = "state IN ('queued', 'leased')" if inclaim else "state = 'queued'"
    tail = ", visible_at" if inclaim else ""
    claim = []
    if f.claim_indexes in ("all", "any"):
        claim.append(f"CREATE INDEX items_claim ON items(priority DESC, n{tail}) WHERE {where};")
    if f.claim_indexes in ("all", "types"):
        claim.append(f"CREATE INDEX items_claim_order ON items(order_id, n{tail}) WHERE {where};")
        claim.append(f"CREATE INDEX items_claim_type ON items(type, priority DESC, n{tail}) WHERE {where};")
    if f.reclaim == "index":
        claim.append("CREATE INDEX items_leased ON items(lease_expires_at) WHERE state = 'leased';")
    if f.events_by_order_rowid:
        events = """
    CREATE TABLE events (id INTEGER PRIMARY KEY, order_id TEXT, item_id TEXT, entity TEXT NOT NULL,
      event TEXT NOT NULL, from_state TEXT, to_state TEXT, actor_type TEXT NOT NULL, actor_id TEXT NOT NULL,
      payload TEXT, created_at TEXT NOT NULL);  -- id = order_n << 32 | seq: no secondary index"""
    else:
        events = """
    CREATE TABLE events (order_id TEXT NOT NULL, seq INTEGER NOT NULL, item_id TEXT, entity TEXT NOT NULL,
      event TEXT NOT NULL, from_state TEXT, to_state TEXT, actor_type TEXT NOT NULL, actor_id TEXT NOT NULL,
      payload TEXT, created_at TEXT NOT NULL, PRIMARY KEY (order_id, seq)) WITHOUT ROWID;""" if f.clustered_events else """
    CREATE TABLE events (id INTEGER PRIMARY KEY, order_id TEXT, item_id TEXT, entity TEXT NOT NULL,
      event TEXT NOT NULL, from_state TEXT, to_state TEXT, actor_type TEXT NOT NULL, actor_id TEXT NOT NULL,
      payload TEXT, created_at TEXT NOT NULL);
    CREATE INDEX events_order ON events(order_id, id);"""
    nl = "\n    "
    return f"""
    CREATE TABLE orders (id TEXT PRIMARY KEY, type TEXT NOT NULL, state TEXT NOT NULL,
      priority INTEGER NOT NULL DEFAULT 0, payload TEXT NOT NULL, requested_by TEXT NOT NULL,
      item_count INTEGER NOT NULL, diff TEXT, error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
      submitted_at TEXT, approved_at TEXT, applied_at TEXT, completed_at TEXT);
    CREATE INDEX orders_state_type ON orders(state, type);
    CREATE INDEX orders_created ON orders(created_at);
    CREATE TABLE order_counts (order_id TEXT PRIMARY KEY, state TEXT NOT NULL,
      queued INTEGER NOT NULL DEFAULT 0, leased INTEGER NOT NULL DEFAULT 0, submitted INTEGER NOT NULL DEFAULT 0,
      accepted INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0,
      failed INTEGER NOT NULL DEFAULT 0, dead_lettered INTEGER NOT NULL DEFAULT 0,
      event_seq INTEGER NOT NULL DEFAULT 0, order_n INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
    CREATE TABLE items (n INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, order_id TEXT NOT NULL,
      seq INTEGER NOT NULL, type TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL,
      attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL, visible_at TEXT NOT NULL DEFAULT '',
      leased_by TEXT, lease_token TEXT, lease_expires_at TEXT, updated_at TEXT NOT NULL);
    {nl.join(claim)}
    CREATE INDEX items_failed ON items(updated_at) WHERE state = 'failed';
    CREATE INDEX items_order_seq ON items(order_id, seq);
    CREATE TABLE item_inputs (n INTEGER PRIMARY KEY, input TEXT NOT NULL);
    CREATE TABLE item_results (n INTEGER PRIMARY KEY, result TEXT, error TEXT, submitted_by TEXT,
      updated_at TEXT NOT NULL);{events}
    """


class SqliteLean(LeanFlags, SqliteVariant):
    key, name = "b", "(b) lean schema, checkout + submit (2 txns)"

    def ddl(self) -> str:
        return lean_sqlite_ddl(self)

    def populate(self, conn, order_id, type_name, priority, tasks, max_attempts, now) -> None:
        count = len(tasks)
        conn.execute("INSERT INTO orders (id, type, state, priority, payload, requested_by, item_count, "
                     "created_at, updated_at) VALUES (?, ?, 'queued', ?, ?, 'user:bench', ?, ?, ?)",
                     (order_id, type_name, priority, dumps({"tasks": count}), count, now, now))
        order_n = conn.execute("SELECT rowid FROM orders WHERE id = ?", (order_id,)).fetchone()[0]
        conn.execute("INSERT INTO order_counts (order_id, state, queued, event_seq, order_n) "
                     "VALUES (?, 'queued', ?, 2, ?)", (order_id, count, order_n))
        first = (conn.execute("SELECT coalesce(max(n), 0) FROM items").fetchone()[0]) + 1
        conn.executemany(
            "INSERT INTO items (n, id, order_id, seq, type, state, priority, max_attempts, updated_at) "
            "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
            ((first + seq, new_id(), order_id, seq, type_name, priority, max_attempts, now)
             for seq in range(count)))
        conn.executemany("INSERT INTO item_inputs (n, input) VALUES (?, ?)",
                         ((first + seq, dumps({"task": t})) for seq, t in enumerate(tasks)))
        for seq, (event, to, payload) in enumerate((("proposed", "queued", None),
                                                    ("planned", None, dumps({"item_count": count})))):
            if self.clustered_events:
                conn.execute("INSERT INTO events (order_id, seq, item_id, entity, event, from_state, to_state, "
                             "actor_type, actor_id, payload, created_at) VALUES (?, ?, NULL, 'order', ?, NULL, ?, "
                             "'system', 'workctl', ?, ?)", (order_id, seq + 1, event, to, payload, now))
            elif self.events_by_order_rowid:
                conn.execute("INSERT INTO events (id, order_id, item_id, entity, event, from_state, to_state, "
                             "actor_type, actor_id, payload, created_at) VALUES (?, ?, NULL, 'order', ?, NULL, ?, "
                             "'system', 'workctl', ?, ?)", ((order_n << 32) | (seq + 1), order_id, event, to,
                                                            payload, now))
            else:
                conn.execute(EVENT_INSERT, (order_id, None, "order", event, None, to, "system", "workctl",
                                            payload, now))

    def worker(self, path: str, agent: str, **kw):
        return SqliteLeanWorker(path, agent, self, **kw)


def lean_variant(key: str, name: str, base: type = SqliteLean, **flags: Any) -> SqliteLean:
    cls = type(f"Lean_{key}", (base,), {"key": key, "name": name, **flags})
    return cls()


_COUNT_COLUMNS = ITEM_STATES
_EXHAUSTED = "max_attempts_exceeded"


class SqliteLeanWorker:
    """checkout / submit / submit --next / heartbeat / release on the lean schema.

    A transaction: BEGIN IMMEDIATE; [fenced submit UPDATE … RETURNING; result upsert]; the expired-lease
    probe (a read that normally finds nothing); the claim UPDATE … RETURNING (input included); one
    executemany of the events; one UPDATE … RETURNING of the order's counters; COMMIT.
    """

    def __init__(self, path: str, agent: str, variant: SqliteLean, order_id: str | None = None,
                 type_name: str | None = None):
        self.c = sqlite_connect(path)
        if variant.autocheckpoint is not None:
            self.c.execute(f"PRAGMA wal_autocheckpoint = {int(variant.autocheckpoint)}")
        self.agent = agent
        self.v = variant
        self.pending: list[tuple[Any, Any]] = []  # submit --next: submits flushed by the next claim
        self.events: list[tuple[Any, ...]] = []
        self.deltas: dict[str, dict[str, int]] = {}
        self._buffer: list[tuple[Any, Any]] = []
        self._count_sql: dict[tuple[str, ...], str] = {}
        f = variant
        inclaim = f.reclaim == "inclaim"
        pred = "state IN ('queued', 'leased')" if inclaim else "state = 'queued'"
        limit = f.batch
        self.scope: dict[str, Any] = {}
        if order_id:
            self.scope = {"scope": order_id}
            pick = (f"SELECT n FROM items INDEXED BY items_claim_order WHERE order_id = :scope AND {pred} "
                    f"AND visible_at <= :now ORDER BY n LIMIT {limit}")
        elif type_name:
            self.scope = {"scope": type_name}
            pick = (f"SELECT n FROM items INDEXED BY items_claim_type WHERE type = :scope AND {pred} "
                    f"AND visible_at <= :now ORDER BY priority DESC, n LIMIT {limit}")
        elif f.claim_indexes == "types":  # one seek per registered type, the best of them
            self.scope = {f"t{i}": t for i, t in enumerate(f.types)}
            pick = ("SELECT n FROM (" + " UNION ALL ".join(
                f"SELECT * FROM (SELECT n, priority FROM items INDEXED BY items_claim_type WHERE type = :t{i} "
                f"AND {pred} AND visible_at <= :now ORDER BY priority DESC, n LIMIT {limit})"
                for i in range(len(f.types))) + f") ORDER BY priority DESC, n LIMIT {limit}")
        else:
            pick = (f"SELECT n FROM items INDEXED BY items_claim WHERE {pred} AND visible_at <= :now "
                    f"ORDER BY priority DESC, n LIMIT {limit}")
        self.pick_sql = pick
        ok = "attempts < max_attempts"
        token = ":token" if limit == 1 else "lower(hex(randomblob(16)))"  # one token per lease
        inp = "(SELECT input FROM item_inputs WHERE item_inputs.n = items.n)"
        if inclaim:
            # today's shape: read the head (queued or expired), then one UPDATE by n
            self.head_sql = ("SELECT n, id, order_id, state, attempts, max_attempts, leased_by FROM items "
                             f"WHERE n = ({pick})")
            self.lease_sql = ("UPDATE items SET state = 'leased', attempts = attempts + 1, leased_by = :agent, "
                              "lease_token = :token, lease_expires_at = :expires, visible_at = :expires, "
                              f"updated_at = :now WHERE n = :n RETURNING n, id, order_id, state, attempts, "
                              f"lease_token, {inp}")
        else:
            self.claim_sql = (
                f"UPDATE items SET state = CASE WHEN {ok} THEN 'leased' ELSE 'failed' END, "
                f"attempts = attempts + ({ok}), "
                f"leased_by = CASE WHEN {ok} THEN :agent END, lease_token = CASE WHEN {ok} THEN {token} END, "
                f"lease_expires_at = CASE WHEN {ok} THEN :expires END, updated_at = :now "
                f"WHERE n {'=' if limit == 1 else 'IN'} ({pick}) "
                f"RETURNING n, id, order_id, state, attempts, lease_token, {inp}")
        scope_filter = "AND order_id = ? " if order_id else "AND type = ? " if type_name else ""
        self.expired_sql = (
            "SELECT n, id, order_id, attempts, max_attempts, leased_by FROM items INDEXED BY items_leased "
            f"WHERE state = 'leased' AND lease_expires_at <= ? {scope_filter}ORDER BY lease_expires_at LIMIT 8")
        self.expired_args = (order_id,) if order_id else (type_name,) if type_name else ()
        clear_visible = ", visible_at = ''" if inclaim else ""
        self.submit_sql = (
            f"UPDATE items SET state = 'submitted', leased_by = NULL, lease_token = NULL, lease_expires_at = NULL"
            f"{clear_visible}, updated_at = ? WHERE id = ? AND state = 'leased' AND lease_token = ? "
            "AND lease_expires_at > ? RETURNING n, order_id, attempts")
        self.result_sql = (
            "INSERT INTO item_results (n, result, submitted_by, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (n) DO UPDATE SET result = excluded.result, error = NULL, "
            "submitted_by = excluded.submitted_by, updated_at = excluded.updated_at")

    # -- the pieces of a transaction --------------------------------------------------------------
    def _event(self, order_id, item_id, event, frm, to, actor, payload, now, entity="item"):
        if self.v.events:
            self.events.append((order_id, item_id, entity, event, frm, to, actor[0], actor[1],
                                None if payload is None else dumps(payload), now))
            if self.v.clustered_events or self.v.events_by_order_rowid:
                self.deltas.setdefault(order_id, {})  # the counter row hands out the event's seq

    def _delta(self, order_id: str, **changes: int) -> None:
        d = self.deltas.setdefault(order_id, {})
        for k, v in changes.items():
            d[k] = d.get(k, 0) + v

    def _flush(self, now: str) -> dict[str, str]:
        """Counters (one UPDATE … RETURNING per touched order), the order's derived state, the events."""
        states = {}
        for order_id, d in (self.deltas.items() if self.v.counters else ()):
            cols = tuple(sorted(k for k, v in d.items() if v))
            sql = self._count_sql.get(cols)
            if sql is None:
                sets = ", ".join(f"{k} = {k} + :{k}" for k in cols) + (", " if cols else "")
                sql = self._count_sql[cols] = (
                    f"UPDATE order_counts SET {sets}event_seq = event_seq + :nev WHERE order_id = :o "
                    f"RETURNING state, event_seq, order_n, {', '.join(_COUNT_COLUMNS)}")
            mine = sum(1 for e in self.events if e[0] == order_id)
            row = self.c.execute(sql, {**{k: d[k] for k in cols}, "o": order_id, "nev": mine}).fetchone()
            current, seq, order_n, counts = row[0], row[1], row[2], row[3:]
            target = derive(current, {s for s, k in zip(_COUNT_COLUMNS, counts, strict=False) if k > 0})
            states[order_id] = target
            if target != current:  # rare: the first checkout, the last submit, a failure
                state = current
                for step in order_path(current, target):
                    extra = ", submitted_at = :now" if step == "submitted" else ""
                    self.c.execute(f"UPDATE orders SET state = :to, updated_at = :now{extra} "
                                   "WHERE id = :o AND state = :frm", {"to": step, "now": now, "o": order_id, "frm": state})
                    self._event(order_id, None, ORDER_TRANSITIONS[state][step], state, step, ("system", "workctl"),
                                None, now, "order")
                    state = step
                extra_events = sum(1 for e in self.events if e[0] == order_id) - mine
                self.c.execute("UPDATE order_counts SET state = ?, event_seq = event_seq + ? WHERE order_id = ?",
                               (target, extra_events, order_id))
                seq += extra_events
            if self.v.clustered_events:
                mine_rows = [e for e in self.events if e[0] == order_id]
                self.c.executemany(
                    "INSERT INTO events (order_id, seq, item_id, entity, event, from_state, to_state, actor_type, "
                    "actor_id, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(e[0], seq - len(mine_rows) + i + 1, *e[1:]) for i, e in enumerate(mine_rows)])
            elif self.v.events_by_order_rowid:
                mine_rows = [e for e in self.events if e[0] == order_id]
                first = (order_n << 32) | (seq - len(mine_rows) + 1)
                self.c.executemany("INSERT INTO events (id, order_id, item_id, entity, event, from_state, to_state, "
                                   "actor_type, actor_id, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                   [(first + i, *e) for i, e in enumerate(mine_rows)])
        if not (self.v.clustered_events or self.v.events_by_order_rowid) and self.events:
            self.c.executemany(EVENT_INSERT, self.events)
        self.events.clear()
        self.deltas.clear()
        return states

    def _fail(self, n, item_id, order_id, frm, attempts, holder, now):
        error = {"code": _EXHAUSTED, "message": f"gave up after {attempts} attempts", "last_agent": holder}
        self._result_error(n, error, now)
        self._event(order_id, item_id, "failed", frm, "failed", ("system", "workctl"), error, now)
        self._delta(order_id, **{frm: -1}, failed=1)

    def _reclaim_expired(self, now: str) -> None:
        """Expired leases go back to queued (or fail at max_attempts) before the claim picks, so the
        claim itself keeps priority-then-age order. The probe is one read that normally finds nothing."""
        for n, item_id, order_id, attempts, max_attempts, holder in self.c.execute(
                self.expired_sql, (now, *self.expired_args)).fetchall():
            exhausted = attempts >= max_attempts
            self.c.execute(f"UPDATE items SET state = '{'failed' if exhausted else 'queued'}', leased_by = NULL, "
                           "lease_token = NULL, lease_expires_at = NULL, updated_at = ? WHERE n = ?", (now, n))
            if exhausted:
                self._fail(n, item_id, order_id, "leased", attempts, holder, now)
            else:
                self._event(order_id, item_id, "lease_expired", "leased", "queued", ("system", "workctl"),
                            {"agent": holder, "attempts": attempts}, now)
                self._delta(order_id, leased=-1, queued=1)

    def _result_error(self, n, error, now):
        if self.v.results:
            self.c.execute("INSERT INTO item_results (n, error, updated_at) VALUES (?, ?, ?) ON CONFLICT (n) DO "
                           "UPDATE SET error = excluded.error, updated_at = excluded.updated_at", (n, dumps(error), now))

    def _claim_inclaim(self, now: str, expires: str) -> list[tuple[Any, ...]]:
        while True:
            head = self.c.execute(self.head_sql, {**self.scope, "now": now}).fetchone()
            if head is None:
                return []
            n, item_id, order_id, state, attempts, max_attempts, holder = head
            if attempts >= max_attempts:
                self.c.execute("UPDATE items SET state = 'failed', leased_by = NULL, lease_token = NULL, "
                               "lease_expires_at = NULL, visible_at = '', updated_at = ? WHERE n = ?", (now, n))
                self._fail(n, item_id, order_id, state, attempts, holder, now)
                continue
            if state == "leased":
                self._event(order_id, item_id, "lease_expired", "leased", "queued", ("system", "workctl"),
                            {"agent": holder, "attempts": attempts}, now)
                self._delta(order_id, leased=-1, queued=1)
            n, item_id, order_id, state, attempts, token, item_input = self.c.execute(
                self.lease_sql, {"agent": self.agent, "token": new_token(), "expires": expires, "now": now,
                                 "n": n}).fetchone()
            self._event(order_id, item_id, "leased", "queued", "leased", ("agent", self.agent),
                        {"lease_expires_at": expires, "attempt": attempts}, now)
            self._delta(order_id, queued=-1, leased=1)
            return [((n, item_id, order_id, token), attempts, item_input)]

    def _claim(self, now: str, expires: str) -> list[tuple[Any, ...]]:
        if self.v.reclaim == "inclaim":
            return self._claim_inclaim(now, expires)
        if self.v.reclaim == "index":
            self._reclaim_expired(now)
        got = []
        while True:
            rows = self.c.execute(self.claim_sql, {**self.scope, "agent": self.agent, "token": new_token(),
                                                   "expires": expires, "now": now}).fetchall()
            if not rows:
                return got
            failed = False
            for n, item_id, order_id, state, attempts, token, item_input in rows:
                if state == "failed":  # requeued with no attempts left: the claim fails it instead
                    self._fail(n, item_id, order_id, "queued", attempts, None, now)
                    failed = True
                    continue
                self._event(order_id, item_id, "leased", "queued", "leased", ("agent", self.agent),
                            {"lease_expires_at": expires, "attempt": attempts}, now)
                self._delta(order_id, queued=-1, leased=1)
                got.append(((n, item_id, order_id, token), attempts, item_input))
            if got or not failed:
                return got

    def _submit(self, handle, result, now: str) -> None:
        n, item_id, order_id, token = handle
        row = self.c.execute(self.submit_sql, (now, item_id, token, now)).fetchone()
        if row is None:
            raise LeaseLost(item_id)
        if self.v.results:
            self.c.execute(self.result_sql, (n, dumps(result if result is not None else {"ok": True}), self.agent, now))
        self._event(order_id, item_id, "submitted", "leased", "submitted", ("agent", self.agent),
                    {"attempt": row[2]}, now)
        self._delta(order_id, leased=-1, submitted=1)

    def _tx(self, fn: Callable[[], Any]) -> Any:
        self.c.execute("BEGIN IMMEDIATE")
        try:
            out = fn()
            self.c.execute("COMMIT")
            return out
        except BaseException:
            self.events.clear()
            self.deltas.clear()
            if self.c.in_transaction:
                self.c.execute("ROLLBACK")
            raise

    # -- the API the self-test and the harness drive -----------------------------------------------
    def checkout(self, submits: list[tuple[Any, Any]] = ()) -> list[tuple[Any, ...]]:
        """BEGIN IMMEDIATE; [submits]; claim; events; counters; COMMIT — returns [(handle, attempts, input)]."""
        t = CLOCK()
        now, expires = iso(t), iso(t + TTL)

        def body():
            for handle, result in submits:
                self._submit(handle, result, now)
            got = self._claim(now, expires)
            self.last_states = self._flush(now)
            return got
        return self._tx(body)

    def submit(self, handle, result=None) -> None:
        self.submit_many([(handle, result)])

    def submit_many(self, submits) -> None:
        now = iso(CLOCK())

        def body():
            for handle, result in submits:
                self._submit(handle, result, now)
            self.last_states = self._flush(now)
        self._tx(body)

    def heartbeat(self, handle) -> str:
        n, item_id, order_id, token = handle
        t = CLOCK()
        now, expires = iso(t), iso(t + TTL)
        visible = ", visible_at = :exp" if self.v.reclaim == "inclaim" else ""

        def body():
            cur = self.c.execute(f"UPDATE items SET lease_expires_at = :exp{visible}, updated_at = :now WHERE id = :id "
                                 "AND state = 'leased' AND lease_token = :token AND lease_expires_at > :now",
                                 {"exp": expires, "now": now, "id": item_id, "token": token})
            if cur.rowcount != 1:
                raise LeaseLost(item_id)
            self._event(order_id, item_id, "heartbeat", None, None, ("agent", self.agent),
                        {"lease_expires_at": expires}, now)
            self._flush(now)
        self._tx(body)
        return expires

    def release(self, handle, error: str | None = None, backoff: float = 0.0) -> str:
        """Give the lease back: without an error the attempt does not count; with one it does, and the
        item waits out ``backoff`` (visible_at) or fails at max_attempts."""
        n, item_id, order_id, token = handle
        t = CLOCK()
        now = iso(t)

        def body():
            row = self.c.execute(
                "UPDATE items SET state = CASE WHEN :err IS NOT NULL AND attempts >= max_attempts THEN 'failed' "
                "ELSE 'queued' END, attempts = CASE WHEN :err IS NULL THEN max(attempts - 1, 0) ELSE attempts END, "
                "visible_at = CASE WHEN :err IS NULL OR attempts >= max_attempts THEN '' ELSE :retry END, "
                "leased_by = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = :now "
                "WHERE id = :id AND state = 'leased' AND lease_token = :token AND lease_expires_at > :now "
                "RETURNING state, attempts",
                {"err": error, "retry": iso(t + backoff) if backoff else "", "now": now, "id": item_id,
                 "token": token}).fetchone()
            if row is None:
                raise LeaseLost(item_id)
            state, attempts = row
            if error:
                self._result_error(n, {"code": "released_with_error", "message": error, "agent": self.agent}, now)
            self._event(order_id, item_id, "failed" if state == "failed" else "released", "leased", state,
                        ("agent", self.agent), {"attempts": attempts, **({"error": error} if error else {})}, now)
            self._delta(order_id, leased=-1, **{state: 1})
            self._flush(now)
            return state
        return self._tx(body)

    # -- harness protocol: claim() -> (handle, payload) | None ; ack(handle) ----------------------
    def claim(self):
        if self.v.batch > 1:
            if not self._buffer:
                submits, self.pending = self.pending, []
                self._buffer = [(handle, item_input) for handle, _a, item_input in self.checkout(submits)]
                if not self._buffer:
                    return None
            handle, item_input = self._buffer.pop(0)
            return handle, json.loads(item_input)["task"]
        submits, self.pending = (self.pending, []) if self.v.submit_next else ([], [])
        got = self.checkout(submits)
        if not got:
            return None
        handle, _attempts, item_input = got[0]
        return handle, json.loads(item_input)["task"]

    def ack(self, handle) -> None:
        if self.v.submit_next or self.v.batch > 1:
            self.pending.append((handle, None))
            if self.v.batch > 1 and len(self.pending) >= self.v.batch:
                submits, self.pending = self.pending, []
                self.submit_many(submits)
            return
        self.submit(handle)

    def close(self) -> None:
        if self.pending:
            submits, self.pending = self.pending, []
            self.submit_many(submits)
        self.c.close()


class SqliteRawNext(SqliteRaw):
    key, name = "raw-next", "raw sqlite3 ack + claim-next in 1 txn (no audit)"

    def worker(self, path: str, agent: str):
        return SqliteRawNextWorker(path)


class SqliteRawNextWorker(SqliteRawWorker):
    pending = None

    def claim(self):
        self.token += 1
        now = CLOCK()
        self.c.execute("BEGIN IMMEDIATE")
        try:
            if self.pending is not None:
                SqliteRawWorker.ack(self, self.pending)
                self.pending = None
            row = self.c.execute(
                "UPDATE jobs SET visible_at = ?, lease_token = ?, attempts = attempts + 1 WHERE id = "
                "(SELECT id FROM jobs WHERE state = 0 AND visible_at <= ? ORDER BY visible_at LIMIT 1) "
                "RETURNING id, payload", (now + TTL, self.token, now)).fetchone()
            self.c.execute("COMMIT")
        except BaseException:
            if self.c.in_transaction:
                self.c.execute("ROLLBACK")
            raise
        return None if row is None else ((row[0], self.token), int(row[1]))

    def ack(self, handle) -> None:
        self.pending = handle

    def close(self) -> None:
        if self.pending is not None:
            SqliteRawWorker.ack(self, self.pending)
        self.c.close()


class SqliteRawTuned(SqliteRaw):
    key, name = "raw-tuned", "raw sqlite3 claim+ack, wal_autocheckpoint 10000"

    def worker(self, path: str, agent: str):
        w = SqliteRawWorker(path)
        w.c.execute("PRAGMA wal_autocheckpoint = 10000")
        return w


class SqliteHuey(SqliteVariant):
    """huey.storage.SqliteStorage (bench_peers.py's adapter): dequeue = BEGIN EXCLUSIVE; SELECT; DELETE —
    at-most-once, no lease, no ack, no audit. Needs huey in the interpreter (/work/benchvenv)."""

    key, name = "huey", "huey SqliteStorage (at-most-once, no ack)"

    def setup(self, path: str, n: int, **kw) -> None:
        from huey.storage import SqliteStorage

        st = SqliteStorage(name="q", filename=path)
        for i in range(n):
            st.enqueue(str(i).encode())
        st.close()

    def worker(self, path: str, agent: str):
        return SqliteHueyWorker(path)


class SqliteHueyWorker:
    def __init__(self, path: str):
        from huey.storage import SqliteStorage

        self.s = SqliteStorage(name="q", filename=path)

    def claim(self):
        data = self.s.dequeue()
        return None if data is None else (None, int(bytes(data)))

    def ack(self, handle) -> None:
        pass

    def close(self) -> None:
        self.s.close()


_NEXT = {"submit_next": True}
_TUNED = {"autocheckpoint": 10000}  # page_size 2048/1024 measured no better once checkpoints are rarer
SQLITE_VARIANTS: dict[str, SqliteVariant] = {v.key: v for v in (
    SqliteRaw(), SqliteToday(),
    lean_variant("b", "(b) lean schema, checkout + submit (2 txns)"),
    lean_variant("c", "(c) lean + submit --next (1 txn per cycle)", **_NEXT),
    lean_variant("d", "(d) (c) + wal_autocheckpoint 10000", **_NEXT, **_TUNED),
    lean_variant("b-tuned", "(b) + wal_autocheckpoint 10000", **_TUNED),
    lean_variant("d-types", "(d) with 2 claim indexes (any = one seek per type)", **_NEXT, **_TUNED,
                 claim_indexes="types"),
    lean_variant("d-inclaim", "(d) with leased rows kept in the claim indexes (no items_leased)", **_NEXT,
                 **_TUNED, reclaim="inclaim"),
    lean_variant("d-clustered", "(d) with events clustered (order_id, seq)", **_NEXT, **_TUNED,
                 clustered_events=True),
    lean_variant("d-evrowid", "(d) with events keyed order_n<<32|seq (no events index)", **_NEXT, **_TUNED,
                 events_by_order_rowid=True),
    lean_variant("e", "(e) (d) + 2 claim indexes + events keyed by order (no events index)", **_NEXT, **_TUNED,
                 claim_indexes="types", events_by_order_rowid=True),
    lean_variant("e-inclaim", "(e) with leased rows kept in the claim indexes", **_NEXT, **_TUNED,
                 claim_indexes="types", events_by_order_rowid=True, reclaim="inclaim"),
    lean_variant("batch8", "(batch8) (d) with 8 leases per claim, 8 submits per txn [not for the CLI]",
                 **_NEXT, **_TUNED, batch=8),
    SqliteRawNext(), SqliteRawTuned(), SqliteHuey(),
    # the ablation ladder (each breaks an invariant: what that piece costs), all 1 txn per cycle
    lean_variant("L1", "L1 lean items, 1 claim index, no events/counters/results/reclaim", **_NEXT,
                 events=False, counters=False, results=False, reclaim="none", claim_indexes="any"),
    lean_variant("L2", "L2 = L1 + events (order_id, id)", **_NEXT, counters=False, results=False,
                 reclaim="none", claim_indexes="any"),
    lean_variant("L3", "L3 = L2 + per-order counters", **_NEXT, results=False, reclaim="none", claim_indexes="any"),
    lean_variant("L4", "L4 = L3 + item_results", **_NEXT, reclaim="none", claim_indexes="any"),
    lean_variant("L5", "L5 = L4 + items_leased + reclaim probe", **_NEXT, claim_indexes="any"),
    # L6 = L5 + the by-order and by-type claim indexes = (c)
)}
DEFAULT_SQLITE = ["raw", "a", "b", "b-tuned", "c", "d", "e", "d-inclaim", "batch8", "raw-next", "raw-tuned"]


# ================================================================================================
# PostgreSQL (psycopg 3; imported only here)
# ================================================================================================

def pg_connect(dsn: str, schema: str | None = None, autocommit: bool = True):
    import psycopg

    opts = f" options='-c search_path={schema}'" if schema else ""
    return psycopg.connect(dsn + opts, autocommit=autocommit)


class PgVariant:
    key = ""
    name = ""
    backend = "pg"
    dsn = ""

    @property
    def schema(self) -> str:
        return "hp_" + self.key.replace("-", "_")

    def setup(self, target: str, n: int, orders: int = 1, types: tuple[str, ...] = (TASK_TYPE,),
              priorities: tuple[int, ...] = (0,), max_attempts: int = 3) -> None:
        conn = pg_connect(target)
        conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {self.schema}")
        conn.execute(f"SET search_path = {self.schema}")
        for stmt in self.ddl().split(";"):
            if stmt.strip():
                conn.execute(stmt)
        now = iso(CLOCK())
        per, task = n // orders, 0
        with conn.transaction():
            for o in range(orders):
                count = per if o < orders - 1 else n - per * (orders - 1)
                self.populate(conn, new_id(), types[o % len(types)], priorities[o % len(priorities)],
                              range(task, task + count), max_attempts, now)
                task += count
        conn.execute("VACUUM ANALYZE")  # autovacuum is off on this server: see the notes
        conn.execute("CHECKPOINT")      # no checkpoint (and its full-page images) inside the timed part
        conn.close()

    def ddl(self) -> str:
        raise NotImplementedError

    def populate(self, conn, order_id, type_name, priority, tasks, max_attempts, now) -> None:
        raise NotImplementedError

    def drop(self, target: str) -> None:
        conn = pg_connect(target)
        conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        conn.close()


class PgRaw(PgVariant):
    """The raw psycopg loop of peers-pg.md: claim and ack, each its own autocommit transaction."""

    key, name = "pg-raw", "raw psycopg SKIP LOCKED claim+ack (2 txns, no audit)"

    def ddl(self) -> str:
        return """CREATE TABLE jobs (id bigserial PRIMARY KEY, payload text NOT NULL, state int NOT NULL DEFAULT 0,
          visible_at double precision NOT NULL, lease_token bigint, attempts int NOT NULL DEFAULT 0, result text);
          CREATE INDEX jobs_claimable ON jobs (visible_at) WHERE state = 0"""

    def populate(self, conn, order_id, type_name, priority, tasks, max_attempts, now) -> None:
        t = CLOCK()
        with conn.cursor().copy("COPY jobs (payload, visible_at) FROM STDIN") as cp:
            for i in tasks:
                cp.write_row((str(i), t))

    def worker(self, target: str, agent: str):
        return PgRawWorker(target, self.schema)


class PgRawWorker:
    CLAIM = ("UPDATE jobs SET visible_at = %s, lease_token = %s, attempts = attempts + 1 WHERE id = "
             "(SELECT id FROM jobs WHERE state = 0 AND visible_at <= %s ORDER BY visible_at LIMIT 1 "
             "FOR UPDATE SKIP LOCKED) RETURNING id, payload")
    ACK = "UPDATE jobs SET state = 1, result = 'ok' WHERE id = %s AND lease_token = %s AND state = 0"

    def __init__(self, target: str, schema: str):
        self.c = pg_connect(target, schema)
        self.token = os.getpid() << 20

    def claim(self):
        self.token += 1
        now = CLOCK()
        row = self.c.execute(self.CLAIM, (now + TTL, self.token, now)).fetchone()
        return None if row is None else ((row[0], self.token), int(row[1]))

    def ack(self, handle) -> None:
        if self.c.execute(self.ACK, handle).rowcount != 1:
            raise LeaseLost(handle)

    def close(self) -> None:
        self.c.close()


class PgRawNext(PgRaw):
    key, name = "pg-raw-next", "raw psycopg ack + claim-next, 1 statement per job (no audit)"

    def worker(self, target: str, agent: str):
        return PgRawNextWorker(target, self.schema)


class PgRawNextWorker(PgRawWorker):
    NEXT = ("WITH a AS (UPDATE jobs SET state = 1, result = 'ok' WHERE id = %(aid)s AND lease_token = %(atok)s "
            "AND state = 0 RETURNING id) "
            "UPDATE jobs SET visible_at = %(exp)s, lease_token = %(tok)s, attempts = attempts + 1 WHERE id = "
            "(SELECT id FROM jobs WHERE state = 0 AND visible_at <= %(now)s AND EXISTS (SELECT 1 FROM a) "
            "ORDER BY visible_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, payload, (SELECT count(*) FROM a)")
    pending = None

    def claim(self):
        if self.pending is None:
            return super().claim()
        self.token += 1
        now = CLOCK()
        (aid, atok), self.pending = self.pending, None
        with self.c.transaction():
            cur = self.c.execute(self.NEXT, {"aid": aid, "atok": atok, "exp": now + TTL, "tok": self.token,
                                             "now": now})
            row = cur.fetchone()
            if row is None:  # nothing claimed: was the ack itself applied?
                if self.c.execute("SELECT state FROM jobs WHERE id = %s", (aid,)).fetchone()[0] != 1:
                    self.c.execute(self.ACK, (aid, atok))
                return None
        return (row[0], self.token), int(row[1])

    def ack(self, handle) -> None:
        self.pending = handle

    def close(self) -> None:
        if self.pending is not None:
            PgRawWorker.ack(self, self.pending)
        self.c.close()


# ---------------------------- pg (a): today's schema, statement by statement --------------------

class PgToday(PgVariant):
    key, name = "pg-a", "(a) today's schema + statements, one round trip each"

    def ddl(self) -> str:
        return (TODAY_DDL.replace("INTEGER PRIMARY KEY", "bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
                .replace("REFERENCES orders(id)", "REFERENCES orders(id)"))

    def populate(self, conn, order_id, type_name, priority, tasks, max_attempts, now) -> None:
        conn.execute("INSERT INTO orders (id, type, state, priority, payload, requested_by, item_count, "
                     "created_at, updated_at) VALUES (%s, %s, 'queued', %s, %s, 'user:bench', %s, %s, %s)",
                     (order_id, type_name, priority, dumps({"tasks": len(tasks)}), len(tasks), now, now))
        with conn.cursor().copy("COPY items (id, order_id, seq, type, state, priority, input, max_attempts, "
                                "created_at, updated_at) FROM STDIN") as cp:
            for seq, t in enumerate(tasks):
                cp.write_row((new_id(), order_id, seq, type_name, "queued", priority, dumps({"task": t}),
                              max_attempts, now, now))

    def worker(self, target: str, agent: str):
        return PgTodayWorker(target, self.schema, agent)


class PgTodayWorker(SqliteTodayWorker):
    """SqliteTodayWorker's statements on psycopg (placeholders swapped, FOR UPDATE SKIP LOCKED on the
    claim's read). Note: its EXISTS-based order derivation is racy on PostgreSQL (see the notes)."""

    def __init__(self, target: str, schema: str, agent: str):
        import psycopg.rows

        self.c = _PgShim(pg_connect(target, schema, autocommit=True), psycopg.rows.dict_row)
        self.agent = agent
        self.claim_sql = ("SELECT id, order_id, state, attempts, max_attempts, leased_by FROM items "
                          "WHERE state IN ('queued', 'leased') AND visible_at <= ? ORDER BY priority DESC, n "
                          "LIMIT 1 FOR UPDATE SKIP LOCKED")
        self.claim_args = ()


class _PgShim:
    """Just enough of the sqlite3 surface for SqliteTodayWorker: '?' placeholders, BEGIN/COMMIT text."""

    def __init__(self, conn, row_factory):
        self.conn = conn
        self.row_factory = row_factory
        self._named = {}

    def execute(self, sql: str, params=()):

        if sql.startswith("BEGIN"):
            sql = "BEGIN"
        if "?1" in sql:
            sql, params = sql.replace("?1", "%(o)s"), {"o": params[0]}
        else:
            sql = sql.replace("?", "%s")
        cur = self.conn.cursor(row_factory=self.row_factory) if "SELECT *" in sql else self.conn.cursor()
        cur.execute(sql, params or None)
        return _RowCur(cur)

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.conn.info.transaction_status != TransactionStatus.IDLE

    def close(self):
        self.conn.close()


class _RowCur:
    def __init__(self, cur):
        self.cur = cur
        self.rowcount = cur.rowcount

    def fetchone(self):
        return self.cur.fetchone()

    def fetchall(self):
        return self.cur.fetchall()


# ---------------------------- pg lean --------------------------------------------------------------

def lean_pg_ddl(fillfactor: int = 80) -> str:
    """The lean PostgreSQL schema. Differences from SQLite: the static facts of an item (id, order,
    seq, input) live in item_bodies, which is never updated, because on PostgreSQL every non-HOT
    update of items adds an entry to EVERY index of items whose predicate the new row satisfies."""
    c = 'COLLATE "C"'
    return f"""
    CREATE TABLE orders (id text {c} PRIMARY KEY, type text NOT NULL, state text NOT NULL,
      priority int NOT NULL DEFAULT 0, payload text NOT NULL, requested_by text NOT NULL, item_count int NOT NULL,
      diff text, error text, created_at text {c} NOT NULL, updated_at text {c} NOT NULL, submitted_at text {c},
      approved_at text {c}, applied_at text {c}, completed_at text {c});
    CREATE INDEX orders_state_type ON orders (state, type);
    CREATE TABLE order_counts (order_id text {c} PRIMARY KEY, state text NOT NULL,
      queued int NOT NULL DEFAULT 0, leased int NOT NULL DEFAULT 0, submitted int NOT NULL DEFAULT 0,
      accepted int NOT NULL DEFAULT 0, completed int NOT NULL DEFAULT 0, rejected int NOT NULL DEFAULT 0,
      failed int NOT NULL DEFAULT 0, dead_lettered int NOT NULL DEFAULT 0, prev_state text)
      WITH (fillfactor = 50);
    CREATE TABLE items (id text {c} PRIMARY KEY, n bigint NOT NULL, order_id text {c} NOT NULL,
      type text {c} NOT NULL, priority int NOT NULL DEFAULT 0, state text {c} NOT NULL,
      attempts int NOT NULL DEFAULT 0, max_attempts int NOT NULL, visible_at text {c} NOT NULL DEFAULT '',
      leased_by text, lease_token text {c}, lease_expires_at text {c}, updated_at text {c} NOT NULL)
      WITH (fillfactor = {fillfactor});
    CREATE INDEX items_claim ON items (priority DESC, n) WHERE state = 'queued';
    CREATE INDEX items_claim_order ON items (order_id, n) WHERE state = 'queued';
    CREATE INDEX items_claim_type ON items (type, priority DESC, n) WHERE state = 'queued';
    CREATE INDEX items_leased ON items (lease_expires_at) WHERE state = 'leased';
    CREATE INDEX items_failed ON items (updated_at) WHERE state = 'failed';
    CREATE TABLE item_bodies (n bigint PRIMARY KEY, id text {c} NOT NULL, order_id text {c} NOT NULL,
      seq int NOT NULL, input text NOT NULL);
    CREATE INDEX item_bodies_order ON item_bodies (order_id, seq);
    CREATE TABLE item_results (n bigint PRIMARY KEY, result text, error text, submitted_by text,
      updated_at text {c} NOT NULL);
    CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, order_id text {c}, item_id text {c},
      entity text NOT NULL, event text NOT NULL, from_state text, to_state text, actor_type text NOT NULL,
      actor_id text NOT NULL, payload text, created_at text {c} NOT NULL);
    CREATE INDEX events_order ON events (order_id, id)
    """


_PG_FAIL_PAYLOAD = ("json_build_object('code', 'max_attempts_exceeded', 'message', 'gave up after ' || {a} || "
                    "' attempts', 'last_agent', {h})::text")


def sql_derive(cur: str, q: str, l: str, s: str, a: str, c: str, rj: str, f: str, dl: str) -> str:
    """derive() as a SQL expression over the counts (kept equal to it by --selftest)."""
    anyp = f"({q} + {l} + {s} + {a} + {c} + {rj} + {f} + {dl})"
    return (f"CASE WHEN {cur} IN ('submitted', 'approved', 'applied', 'completed', 'rejected') OR {anyp} = 0 "
            f"THEN {cur} WHEN {q} + {l} + {rj} + {f} + {dl} = 0 THEN 'submitted' "
            f"WHEN {q} + {l} > 0 THEN CASE WHEN {cur} = 'queued' AND {anyp} = {q} THEN 'queued' ELSE 'in_progress' END "
            f"WHEN {f} > 0 THEN 'failed' WHEN {dl} > 0 THEN 'dead_lettered' ELSE {cur} END")


def _order_paths_values() -> str:
    """Every (from, to) the derivation can ask for, with its steps: the order events, in SQL."""
    rows = []
    for cur in ("queued", "in_progress", "failed", "dead_lettered"):
        for tgt in ("in_progress", "submitted", "failed", "dead_lettered"):  # derive() never moves to queued
            if cur == tgt:
                continue
            try:
                steps = order_path(cur, tgt)
            except RuntimeError:
                continue
            frm = cur
            for i, step in enumerate(steps):
                rows.append(f"('{cur}', '{tgt}', {i}, '{frm}', '{step}', '{ORDER_TRANSITIONS[frm][step]}')")
                frm = step
    return "(VALUES " + ", ".join(rows) + ")"


def pg_cycle_sql(scope: str = "any", submit: bool = False, counters: bool = True, batch: int = 1,
                 sql_derive_state: bool = False, claim: bool = True, reclaim: bool = True) -> str:
    """ONE statement for a whole transaction: [the fenced submit + its result] + the reclaim of expired
    leases (normally 0 rows) + the claim + every event + the order counters, as data-modifying CTEs.
    With ``sql_derive_state`` the order's derived state, its transition and its events are in the
    statement too, so it runs in autocommit: one round trip, and the counter row's lock is held for the
    statement's tail and the commit flush only (no client round trip inside). The claim is gated on
    the submit having matched (a lost lease claims nothing).
    Parameters: now, expires, token, agent, [scope], [sid, stok, result]."""
    where = {"any": "", "order": "order_id = %(scope)s AND ", "type": "type = %(scope)s AND "}[scope]
    order = "n" if scope == "order" else "priority DESC, n"
    ok = "attempts < max_attempts"
    token = "%(token)s" if batch == 1 else "%(token)s || '-' || n"
    parts = []
    if submit:
        parts.append("""s AS (
      UPDATE items SET state = 'submitted', leased_by = NULL, lease_token = NULL, lease_expires_at = NULL,
        updated_at = %(now)s
      WHERE id = %(sid)s AND state = 'leased' AND lease_token = %(stok)s AND lease_expires_at > %(now)s
      RETURNING n, id, order_id, attempts)""")
        parts.append("""sr AS (
      INSERT INTO item_results (n, result, submitted_by, updated_at) SELECT n, %(result)s, %(agent)s, %(now)s FROM s
      ON CONFLICT (n) DO UPDATE SET result = excluded.result, error = NULL, submitted_by = excluded.submitted_by,
        updated_at = excluded.updated_at)""")
    # an empty r or c (a submit alone, a reclaim alone) keeps the rest of the statement unchanged
    if not reclaim:
        parts.append("r AS (SELECT NULL::bigint AS n, NULL::text AS id, NULL::text AS order_id, NULL::text AS state, "
                     "NULL::int AS attempts, NULL::text AS holder WHERE false)")
    if not claim:
        parts.append("c AS (SELECT NULL::bigint AS n, NULL::text AS id, NULL::text AS order_id, NULL::text AS state, "
                     "NULL::int AS attempts, NULL::text AS lease_token WHERE false)")
    if reclaim:
        parts.append(f"""r AS (
          UPDATE items i SET state = CASE WHEN i.attempts < i.max_attempts THEN 'queued' ELSE 'failed' END,
            leased_by = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = %(now)s
          FROM (SELECT id, leased_by AS holder FROM items WHERE {where}state = 'leased' AND lease_expires_at <= %(now)s
                ORDER BY lease_expires_at LIMIT 8 FOR UPDATE SKIP LOCKED) x
          WHERE i.id = x.id
          RETURNING i.n, i.id, i.order_id, i.state, i.attempts, x.holder)""")
    gate = "AND EXISTS (SELECT 1 FROM s) " if submit and sql_derive_state else ""
    pick = (f"SELECT id FROM items WHERE {where}state = 'queued' AND visible_at <= %(now)s {gate}"
            f"ORDER BY {order} LIMIT {batch} FOR UPDATE SKIP LOCKED")
    if claim:
        parts.append(f"""c AS (
          UPDATE items SET state = CASE WHEN {ok} THEN 'leased' ELSE 'failed' END, attempts = attempts + ({ok})::int,
            leased_by = CASE WHEN {ok} THEN %(agent)s END, lease_token = CASE WHEN {ok} THEN {token} END,
            lease_expires_at = CASE WHEN {ok} THEN %(expires)s END, updated_at = %(now)s
          WHERE id {'=' if batch == 1 else 'IN'} ({pick})
          RETURNING n, id, order_id, state, attempts, lease_token)""")
    ev = []
    if submit:
        ev.append("SELECT 0 AS k, order_id, id, 'submitted' AS event, 'leased' AS frm, 'submitted' AS too, "
                  "'agent' AS atype, %(agent)s AS aid, json_build_object('attempt', attempts)::text AS payload FROM s")
    ev.append("SELECT 1, order_id, id, CASE WHEN state = 'queued' THEN 'lease_expired' ELSE 'failed' END, 'leased', "
              "state, 'system', 'workctl', CASE WHEN state = 'queued' THEN json_build_object('agent', holder, "
              f"'attempts', attempts)::text ELSE {_PG_FAIL_PAYLOAD.format(a='attempts', h='holder')} END FROM r")
    ev.append("SELECT 2, order_id, id, CASE WHEN state = 'leased' THEN 'leased' ELSE 'failed' END, 'queued', state, "
              "CASE WHEN state = 'leased' THEN 'agent' ELSE 'system' END, "
              "CASE WHEN state = 'leased' THEN %(agent)s ELSE 'workctl' END, "
              "CASE WHEN state = 'leased' THEN json_build_object('lease_expires_at', %(expires)s::text, "
              f"'attempt', attempts)::text ELSE {_PG_FAIL_PAYLOAD.format(a='attempts', h='NULL::text')} END FROM c")
    parts.append(f"""re AS (
      INSERT INTO item_results (n, error, updated_at)
      SELECT n, {_PG_FAIL_PAYLOAD.format(a='attempts', h='holder')}, %(now)s FROM (
        SELECT n, attempts, holder FROM r WHERE state = 'failed'
        UNION ALL SELECT n, attempts, NULL FROM c WHERE state = 'failed') f
      ON CONFLICT (n) DO UPDATE SET error = excluded.error, updated_at = excluded.updated_at)""")
    if counters:
        deltas = ["SELECT order_id, (state = 'queued')::int AS dq, -1 AS dl, 0 AS ds, (state = 'failed')::int AS df FROM r",
                  "SELECT order_id, -1, (state = 'leased')::int, 0, (state = 'failed')::int FROM c"]
        if submit:
            deltas.append("SELECT order_id, 0, -1, 1, 0 FROM s")
        derive_set = (", prev_state = o.state, state = " + sql_derive(
            "o.state", "(o.queued + d.dq)", "(o.leased + d.dl)", "(o.submitted + d.ds)", "o.accepted", "o.completed",
            "o.rejected", "(o.failed + d.df)", "o.dead_lettered")) if sql_derive_state else ""
        parts.append("""k AS (
      UPDATE order_counts o SET queued = o.queued + d.dq, leased = o.leased + d.dl, submitted = o.submitted + d.ds,
        failed = o.failed + d.df""" + derive_set + """
      FROM (SELECT order_id, sum(dq)::int AS dq, sum(dl)::int AS dl, sum(ds)::int AS ds, sum(df)::int AS df FROM (
        """ + "\n        UNION ALL ".join(deltas) + """) x (order_id, dq, dl, ds, df) GROUP BY order_id) d
      WHERE o.order_id = d.order_id
      RETURNING o.order_id, o.state, o.queued, o.leased, o.submitted, o.accepted, o.completed, o.rejected, o.failed,
        o.dead_lettered, o.prev_state)""")
        if sql_derive_state:
            parts.append("""t AS (
      UPDATE orders SET state = k.state, updated_at = %(now)s,
        submitted_at = CASE WHEN k.state = 'submitted' THEN %(now)s ELSE orders.submitted_at END
      FROM k WHERE orders.id = k.order_id AND k.state <> k.prev_state)""")
        counts = "(SELECT json_agg(json_build_array(order_id, state, queued, leased, submitted, accepted, completed, " \
                 "rejected, failed, dead_lettered)) FROM k)"
    else:
        counts = "NULL::json"
    if counters and sql_derive_state:
        ev.append("SELECT 3 + p.i, k.order_id, NULL, p.event, p.frm, p.too, 'system', 'workctl', NULL::text FROM k "
                  f"JOIN {_order_paths_values()} p (cur, tgt, i, frm, too, event) ON p.cur = k.prev_state "
                  "AND p.tgt = k.state WHERE k.state <> k.prev_state")
    parts.append("""ev AS (
      INSERT INTO events (order_id, item_id, entity, event, from_state, to_state, actor_type, actor_id, payload,
        created_at)
      SELECT order_id, id, CASE WHEN k < 3 THEN 'item' ELSE 'order' END, event, frm, too, atype, aid, payload,
        %(now)s FROM (
        """ + "\n        UNION ALL ".join(ev) + """) e (k, order_id, id, event, frm, too, atype, aid, payload)
      ORDER BY k)""")
    submitted = "(SELECT count(*) FROM s)" if submit else "NULL::bigint"
    return ("WITH " + ",\n    ".join(parts) + f"""
    SELECT {submitted} AS submitted, (SELECT count(*) FROM r) AS reclaimed, {counts} AS counts,
      c.n, c.id, c.order_id, c.state, c.attempts, c.lease_token, b.input
    FROM (VALUES (1)) one LEFT JOIN c ON true LEFT JOIN item_bodies b ON b.n = c.n""")


def pg_submit_sql(counters: bool = True, many: bool = False) -> str:
    """A submit on its own (checkout + submit in 2 transactions, and batched submits)."""
    cond = ("(id, lease_token) IN (SELECT * FROM unnest(%(sids)s::text[], %(stoks)s::text[]))" if many
            else "id = %(sid)s AND lease_token = %(stok)s")
    k = """,
    k AS (UPDATE order_counts o SET leased = o.leased - d.c, submitted = o.submitted + d.c
      FROM (SELECT order_id, count(*)::int AS c FROM s GROUP BY order_id) d WHERE o.order_id = d.order_id
      RETURNING o.order_id, o.state, o.queued, o.leased, o.submitted, o.accepted, o.completed, o.rejected, o.failed,
        o.dead_lettered)""" if counters else ""
    counts = ("(SELECT json_agg(json_build_array(order_id, state, queued, leased, submitted, accepted, completed, "
              "rejected, failed, dead_lettered)) FROM k)") if counters else "NULL::json"
    return f"""WITH s AS (
      UPDATE items SET state = 'submitted', leased_by = NULL, lease_token = NULL, lease_expires_at = NULL,
        updated_at = %(now)s
      WHERE {cond} AND state = 'leased' AND lease_expires_at > %(now)s
      RETURNING n, id, order_id, attempts),
    sr AS (INSERT INTO item_results (n, result, submitted_by, updated_at) SELECT n, %(result)s, %(agent)s, %(now)s FROM s
      ON CONFLICT (n) DO UPDATE SET result = excluded.result, error = NULL, submitted_by = excluded.submitted_by,
        updated_at = excluded.updated_at),
    ev AS (INSERT INTO events (order_id, item_id, entity, event, from_state, to_state, actor_type, actor_id, payload,
        created_at)
      SELECT order_id, id, 'item', 'submitted', 'leased', 'submitted', 'agent', %(agent)s,
        json_build_object('attempt', attempts)::text, %(now)s FROM s){k}
    SELECT (SELECT count(*) FROM s), {counts}"""


class PgLean(PgVariant):
    key, name = "pg-b", "(b) lean, checkout + submit: 1 CTE statement + COMMIT each (2 txns)"
    submit_next = False
    counters = True
    batch = 1
    sql_derive = False  # the order's derivation inside the statement, autocommit: 1 round trip
    split_reclaim = False  # reclaim statement + claim statement pipelined in one transaction, 1 round trip
    plain = False  # (c3): the same transaction as plain statements, 3 round trips

    def ddl(self) -> str:
        return lean_pg_ddl()

    def populate(self, conn, order_id, type_name, priority, tasks, max_attempts, now) -> None:
        count = len(tasks)
        conn.execute("INSERT INTO orders (id, type, state, priority, payload, requested_by, item_count, "
                     "created_at, updated_at) VALUES (%s, %s, 'queued', %s, %s, 'user:bench', %s, %s, %s)",
                     (order_id, type_name, priority, dumps({"tasks": count}), count, now, now))
        conn.execute("INSERT INTO order_counts (order_id, state, queued) VALUES (%s, 'queued', %s)", (order_id, count))
        first = conn.execute("SELECT coalesce(max(n), 0) + 1 FROM items").fetchone()[0]
        ids = [new_id() for _ in range(count)]
        with conn.cursor().copy("COPY items (id, n, order_id, type, priority, state, max_attempts, updated_at) "
                                "FROM STDIN") as cp:
            for seq in range(count):
                cp.write_row((ids[seq], first + seq, order_id, type_name, priority, "queued", max_attempts, now))
        with conn.cursor().copy("COPY item_bodies (n, id, order_id, seq, input) FROM STDIN") as cp:
            for seq, t in enumerate(tasks):
                cp.write_row((first + seq, ids[seq], order_id, seq, dumps({"task": t})))
        for event, to, payload in (("proposed", "queued", None), ("planned", None, dumps({"item_count": count}))):
            conn.execute("INSERT INTO events (order_id, entity, event, to_state, actor_type, actor_id, payload, "
                         "created_at) VALUES (%s, 'order', %s, %s, 'system', 'workctl', %s, %s)",
                         (order_id, event, to, payload, now))

    def worker(self, target: str, agent: str, **kw):
        return PgLeanWorker(target, self.schema, agent, self, **kw)


def pg_lean_variant(key: str, name: str, **flags: Any) -> PgLean:
    return type(f"PgLean_{key}", (PgLean,), {"key": key, "name": name, **flags})()


class PgLeanWorker:
    """One CTE statement per transaction, sent with its BEGIN in one pipeline round trip; then COMMIT (a
    second round trip, with the rare order transition pipelined in front of it)."""

    def __init__(self, target: str, schema: str, agent: str, v: PgLean, order_id: str | None = None,
                 type_name: str | None = None):
        self.c = pg_connect(target, schema, autocommit=v.sql_derive and not v.split_reclaim)
        self.agent = agent
        self.v = v
        scope = "order" if order_id else "type" if type_name else "any"
        self.scope = {"scope": order_id or type_name} if scope != "any" else {}
        split = v.split_reclaim
        self.reclaim_sql = pg_cycle_sql(scope, False, v.counters, 1, True, claim=False) if split else None
        self.claim_sql = pg_cycle_sql(scope, False, v.counters, v.batch, v.sql_derive, reclaim=not split)
        self.next_sql = pg_cycle_sql(scope, True, v.counters, v.batch, v.sql_derive, reclaim=not split)
        self.submit_sql = (pg_cycle_sql(scope, True, v.counters, 1, True, claim=False, reclaim=False) if v.sql_derive
                           else pg_submit_sql(v.counters))
        self.submit_many_sql = pg_submit_sql(v.counters, many=True)
        self.pending: list[tuple[Any, Any]] = []
        self._buffer: list[tuple[Any, Any]] = []
        self.last_states: dict[str, str] = {}

    def _derive(self, counts, now: str) -> list[tuple[str, Any]]:
        """The order transitions the counters call for (statements to pipeline before COMMIT)."""
        stmts = []
        self.last_states = {}
        if self.v.sql_derive:  # the statement derived and moved the order itself
            self.last_states = {row[0]: row[1] for row in counts or ()}
            return []
        for order_id, current, *numbers in counts or ():
            numbers = numbers[:len(ITEM_STATES)]
            target = derive(current, {s for s, k in zip(ITEM_STATES, numbers, strict=False) if k > 0})
            self.last_states[order_id] = target
            if target == current:
                continue
            state = current
            for step in order_path(current, target):
                extra = ", submitted_at = %(now)s" if step == "submitted" else ""
                stmts.append((f"UPDATE orders SET state = %(to)s, updated_at = %(now)s{extra} WHERE id = %(o)s "
                              "AND state = %(frm)s", {"to": step, "now": now, "o": order_id, "frm": state}))
                stmts.append(("INSERT INTO events (order_id, entity, event, from_state, to_state, actor_type, actor_id, "
                              "created_at) VALUES (%(o)s, 'order', %(ev)s, %(frm)s, %(to)s, 'system', 'workctl', %(now)s)",
                              {"o": order_id, "ev": ORDER_TRANSITIONS[state][step], "frm": state, "to": step, "now": now}))
                state = step
            stmts.append(("UPDATE order_counts SET state = %(to)s WHERE order_id = %(o)s", {"to": target, "o": order_id}))
        return stmts

    def _commit(self, stmts) -> None:
        if self.v.sql_derive:
            return  # autocommit (or split_reclaim's pipeline): the statements were the transaction
        if stmts:
            with self.c.pipeline():
                for sql, params in stmts:
                    self.c.execute(sql, params)
        self.c.commit()

    def checkout(self, submits: list[tuple[Any, Any]] = ()) -> list[tuple[Any, ...]]:
        t = CLOCK()
        params = {**self.scope, "now": iso(t), "expires": iso(t + TTL), "token": new_token(), "agent": self.agent}
        if submits:
            (handle, result), = submits
            params.update(sid=handle[1], stok=handle[3], result=dumps(result if result is not None else {"ok": True}))
        sql = self.next_sql if submits else self.claim_sql
        try:
            got: list[tuple[Any, ...]] = []
            stmts = []
            for _attempt in range(100):
                if self.v.split_reclaim:  # BEGIN; reclaim; [submit +] claim; COMMIT — one pipeline sync
                    with self.c.pipeline():
                        first = self.c.execute(self.reclaim_sql, params)
                        cur = self.c.execute(sql, params)
                        self.c.commit()
                    reclaimed = first.fetchone()[1]
                    rows = cur.fetchall()
                    if reclaimed and rows[0][3] is None:
                        rows = [(rows[0][0], reclaimed, *rows[0][2:])]
                elif self.v.sql_derive:
                    rows = self.c.execute(sql, params).fetchall()
                else:
                    with self.c.pipeline():
                        rows = self.c.execute(sql, params).fetchall()
                if submits and rows[0][0] != 1:
                    raise LeaseLost(params["sid"])
                stmts += self._derive(rows[0][2], params["now"])
                retry = False
                for _sub, reclaimed, _counts, n, item_id, order_id, state, attempts, token, item_input in rows:
                    if state == "leased":
                        got.append(((n, item_id, order_id, token), attempts, item_input))
                    elif state == "failed" or (n is None and reclaimed):
                        retry = True  # an exhausted item was failed, or an expired lease requeued: claim again
                if got or not retry:
                    break
                if stmts:  # apply this statement's order transitions before the next one reads the counters
                    with self.c.pipeline():
                        for q, p in stmts:
                            self.c.execute(q, p)
                    stmts = []
                sql, submits = self.claim_sql, ()
            self._commit(stmts)
            return got
        except BaseException:
            if not self.v.sql_derive or self.v.split_reclaim:
                self.c.rollback()
            raise

    def submit_many(self, submits) -> None:
        now = iso(CLOCK())
        if self.v.sql_derive:
            for handle, result in submits:
                row = self.c.execute(self.submit_sql, {"sid": handle[1], "stok": handle[3], "now": now,
                                                       "expires": now, "token": "", "agent": self.agent,
                                                       "result": dumps(
                                                           result if result is not None else {"ok": True})}).fetchone()
                if not self.c.autocommit:
                    self.c.commit()
                if row[0] != 1:
                    raise LeaseLost(handle[1])
                self._derive(row[2], now)
            return
        try:
            if len(submits) == 1:
                (handle, result), = submits
                params = {"sid": handle[1], "stok": handle[3], "now": now, "agent": self.agent,
                          "result": dumps(result if result is not None else {"ok": True})}
                sql = self.submit_sql
            else:
                params = {"sids": [h[1] for h, _ in submits], "stoks": [h[3] for h, _ in submits], "now": now,
                          "agent": self.agent, "result": dumps({"ok": True})}
                sql = self.submit_many_sql
            with self.c.pipeline():
                count, counts = self.c.execute(sql, params).fetchone()
            if count != len(submits):
                raise LeaseLost([h[1] for h, _ in submits])
            self._commit(self._derive(counts, now))
        except BaseException:
            self.c.rollback()
            raise

    def submit(self, handle, result=None) -> None:
        self.submit_many([(handle, result)])

    # harness protocol
    def claim(self):
        if self.v.batch > 1:
            if not self._buffer:
                if self.pending:
                    submits, self.pending = self.pending, []
                    self.submit_many(submits)
                self._buffer = [(h, inp) for h, _a, inp in self.checkout()]
                if not self._buffer:
                    return None
            handle, item_input = self._buffer.pop(0)
            return handle, json.loads(item_input)["task"]
        submits, self.pending = (self.pending, []) if self.v.submit_next else ([], [])
        got = self.checkout(submits)
        if not got:
            return None
        handle, _a, item_input = got[0]
        return handle, json.loads(item_input)["task"]

    def ack(self, handle) -> None:
        if self.v.submit_next or self.v.batch > 1:
            self.pending.append((handle, None))
            return
        self.submit(handle)

    def close(self) -> None:
        if self.pending:
            submits, self.pending = self.pending, []
            self.submit_many(submits)
        self.c.close()


def _pg_heartbeat(self, handle) -> str:
    n, item_id, order_id, token = handle
    t = CLOCK()
    now, expires = iso(t), iso(t + TTL)
    with self.c.transaction():
        row = self.c.execute(
            "WITH h AS (UPDATE items SET lease_expires_at = %(exp)s, updated_at = %(now)s WHERE id = %(id)s AND "
            "state = 'leased' AND lease_token = %(token)s AND lease_expires_at > %(now)s RETURNING order_id), "
            "e AS (INSERT INTO events (order_id, item_id, entity, event, actor_type, actor_id, payload, created_at) "
            "SELECT order_id, %(id)s, 'item', 'heartbeat', 'agent', %(agent)s, %(payload)s, %(now)s FROM h) "
            "SELECT count(*) FROM h", {"exp": expires, "now": now, "id": item_id, "token": token,
                                       "agent": self.agent, "payload": dumps({"lease_expires_at": expires})}).fetchone()
        if row[0] != 1:
            raise LeaseLost(item_id)
    return expires


def _pg_release(self, handle, error: str | None = None, backoff: float = 0.0) -> str:
    """Give the lease back (same semantics as the SQLite worker); counters + derivation in Python, in
    one explicit transaction (a rare path: no need for the one-statement form)."""
    n, item_id, order_id, token = handle
    t = CLOCK()
    now = iso(t)
    with self.c.transaction():
        row = self.c.execute(
            "UPDATE items SET state = CASE WHEN %(err)s::text IS NOT NULL AND attempts >= max_attempts THEN 'failed' "
            "ELSE 'queued' END, attempts = CASE WHEN %(err)s::text IS NULL THEN greatest(attempts - 1, 0) "
            "ELSE attempts END, visible_at = CASE WHEN %(err)s::text IS NULL OR attempts >= max_attempts THEN '' "
            "ELSE %(retry)s END, leased_by = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = %(now)s "
            "WHERE id = %(id)s AND state = 'leased' AND lease_token = %(token)s AND lease_expires_at > %(now)s "
            "RETURNING state, attempts",
            {"err": error, "retry": iso(t + backoff) if backoff else "", "now": now, "id": item_id,
             "token": token}).fetchone()
        if row is None:
            raise LeaseLost(item_id)
        state, attempts = row
        if error:
            self.c.execute("INSERT INTO item_results (n, error, updated_at) VALUES (%s, %s, %s) ON CONFLICT (n) DO "
                           "UPDATE SET error = excluded.error, updated_at = excluded.updated_at",
                           (n, dumps({"code": "released_with_error", "message": error, "agent": self.agent}), now))
        self.c.execute(EVENT_INSERT.replace("?", "%s"), (
            order_id, item_id, "item", "failed" if state == "failed" else "released", "leased", state, "agent",
            self.agent, dumps({"attempts": attempts, **({"error": error} if error else {})}), now))
        counts = self.c.execute(
            f"UPDATE order_counts SET leased = leased - 1, {state} = {state} + 1 WHERE order_id = %s RETURNING "
            "order_id, state, queued, leased, submitted, accepted, completed, rejected, failed, dead_lettered",
            (order_id,)).fetchall()
        saved, self.v.sql_derive = self.v.sql_derive, False
        try:
            stmts = self._derive(counts, now)
        finally:
            self.v.sql_derive = saved
        for q, p in stmts:
            self.c.execute(q, p)
    return state


PgLeanWorker.heartbeat = _pg_heartbeat
PgLeanWorker.release = _pg_release


def pg_function_ddl() -> str:
    """(f): the hot path as plpgsql functions. Only the statements a cycle needs run (the reclaim loop
    and the order transition only when there is something to do); the order's counter row is updated
    once per order, last, in order_id order (no deadlock between cycles touching two orders), so its
    lock is held for the commit flush only. Statements are planned once per session."""
    derive = sql_derive("cur", "q", "l", "s", "a", "c", "rj", "f", "dl")
    paths = _order_paths_values()
    return f"""
CREATE FUNCTION wc_derive(cur text, q int, l int, s int, a int, c int, rj int, f int, dl int) RETURNS text
  LANGUAGE sql IMMUTABLE AS $$ SELECT {derive} $$;

CREATE FUNCTION wc_count(p_order text, p_dq int, p_dl int, p_ds int, p_df int, p_now text) RETURNS text
LANGUAGE plpgsql AS $f$
DECLARE v_prev text; v_state text;
BEGIN
  UPDATE order_counts o SET queued = o.queued + p_dq, leased = o.leased + p_dl, submitted = o.submitted + p_ds,
    failed = o.failed + p_df, prev_state = o.state,
    state = wc_derive(o.state, o.queued + p_dq, o.leased + p_dl, o.submitted + p_ds, o.accepted, o.completed,
                      o.rejected, o.failed + p_df, o.dead_lettered)
  WHERE o.order_id = p_order RETURNING o.prev_state, o.state INTO v_prev, v_state;
  IF v_state <> v_prev THEN
    UPDATE orders SET state = v_state, updated_at = p_now,
      submitted_at = CASE WHEN v_state = 'submitted' THEN p_now ELSE submitted_at END WHERE id = p_order;
    INSERT INTO events (order_id, entity, event, from_state, to_state, actor_type, actor_id, created_at)
      SELECT p_order, 'order', p.event, p.frm, p.too, 'system', 'workctl', p_now
      FROM {paths} p (cur, tgt, i, frm, too, event) WHERE p.cur = v_prev AND p.tgt = v_state ORDER BY p.i;
  END IF;
  RETURN v_state;
END $f$;

-- p_sid NULL: a checkout; p_claim false: a submit alone. Returns ok = false when the submit's lease is lost
-- (nothing written, nothing claimed).
CREATE FUNCTION wc_cycle(p_sid text, p_stok text, p_result text, p_agent text, p_now text, p_expires text,
                         p_token text, p_claim boolean, p_order text DEFAULT NULL, p_type text DEFAULT NULL)
RETURNS TABLE (ok boolean, n bigint, id text, order_id text, attempts int, lease_token text, input text)
LANGUAGE plpgsql AS $f$
DECLARE
  s record; c record; x record; d record;
  deltas jsonb := '{{}}';
BEGIN
  ok := true;
  IF p_sid IS NOT NULL THEN
    UPDATE items i SET state = 'submitted', leased_by = NULL, lease_token = NULL, lease_expires_at = NULL,
      updated_at = p_now
    WHERE i.id = p_sid AND i.state = 'leased' AND i.lease_token = p_stok AND i.lease_expires_at > p_now
    RETURNING i.n, i.id, i.order_id, i.attempts INTO s;
    IF NOT FOUND THEN ok := false; RETURN NEXT; RETURN; END IF;
    INSERT INTO item_results (n, result, submitted_by, updated_at) VALUES (s.n, p_result, p_agent, p_now)
      ON CONFLICT ON CONSTRAINT item_results_pkey DO UPDATE SET result = excluded.result, error = NULL,
      submitted_by = excluded.submitted_by, updated_at = excluded.updated_at;
    INSERT INTO events (order_id, item_id, entity, event, from_state, to_state, actor_type, actor_id, payload, created_at)
      VALUES (s.order_id, s.id, 'item', 'submitted', 'leased', 'submitted', 'agent', p_agent,
              json_build_object('attempt', s.attempts)::text, p_now);
    deltas := jsonb_set(deltas, ARRAY[s.order_id], jsonb_build_array(0, -1, 1, 0));
  END IF;
  IF p_claim THEN
    -- expired leases back to queued (or failed), before the claim picks: normally one empty index probe
    FOR x IN SELECT i.n, i.id, i.order_id, i.attempts, i.max_attempts, i.leased_by AS holder FROM items i
             WHERE i.state = 'leased' AND i.lease_expires_at <= p_now ORDER BY i.lease_expires_at LIMIT 8
             FOR UPDATE SKIP LOCKED LOOP
      IF x.attempts >= x.max_attempts THEN
        UPDATE items i SET state = 'failed', leased_by = NULL, lease_token = NULL, lease_expires_at = NULL,
          updated_at = p_now WHERE i.id = x.id;
        INSERT INTO item_results (n, error, updated_at) VALUES (x.n, json_build_object('code', 'max_attempts_exceeded',
          'message', 'gave up after ' || x.attempts || ' attempts', 'last_agent', x.holder)::text, p_now)
          ON CONFLICT ON CONSTRAINT item_results_pkey DO UPDATE SET error = excluded.error, updated_at = excluded.updated_at;
        INSERT INTO events (order_id, item_id, entity, event, from_state, to_state, actor_type, actor_id, payload, created_at)
          VALUES (x.order_id, x.id, 'item', 'failed', 'leased', 'failed', 'system', 'workctl',
                  json_build_object('code', 'max_attempts_exceeded', 'message', 'gave up after ' || x.attempts ||
                                    ' attempts', 'last_agent', x.holder)::text, p_now);
        deltas := jsonb_set(deltas, ARRAY[x.order_id], coalesce(deltas -> x.order_id, '[0,0,0,0]'::jsonb));
        deltas := jsonb_set(deltas, ARRAY[x.order_id, '1'], to_jsonb((deltas #>> ARRAY[x.order_id, '1'])::int - 1));
        deltas := jsonb_set(deltas, ARRAY[x.order_id, '3'], to_jsonb((deltas #>> ARRAY[x.order_id, '3'])::int + 1));
      ELSE
        UPDATE items i SET state = 'queued', leased_by = NULL, lease_token = NULL, lease_expires_at = NULL,
          updated_at = p_now WHERE i.id = x.id;
        INSERT INTO events (order_id, item_id, entity, event, from_state, to_state, actor_type, actor_id, payload, created_at)
          VALUES (x.order_id, x.id, 'item', 'lease_expired', 'leased', 'queued', 'system', 'workctl',
                  json_build_object('agent', x.holder, 'attempts', x.attempts)::text, p_now);
        deltas := jsonb_set(deltas, ARRAY[x.order_id], coalesce(deltas -> x.order_id, '[0,0,0,0]'::jsonb));
        deltas := jsonb_set(deltas, ARRAY[x.order_id, '0'], to_jsonb((deltas #>> ARRAY[x.order_id, '0'])::int + 1));
        deltas := jsonb_set(deltas, ARRAY[x.order_id, '1'], to_jsonb((deltas #>> ARRAY[x.order_id, '1'])::int - 1));
      END IF;
    END LOOP;
    LOOP
      -- one statement per scope, each planned for its own index
      IF p_order IS NOT NULL THEN
      UPDATE items i SET state = CASE WHEN i.attempts < i.max_attempts THEN 'leased' ELSE 'failed' END,
        attempts = i.attempts + (i.attempts < i.max_attempts)::int,
        leased_by = CASE WHEN i.attempts < i.max_attempts THEN p_agent END,
        lease_token = CASE WHEN i.attempts < i.max_attempts THEN p_token END,
        lease_expires_at = CASE WHEN i.attempts < i.max_attempts THEN p_expires END, updated_at = p_now
      WHERE i.id = (SELECT q.id FROM items q WHERE q.order_id = p_order AND q.state = 'queued' AND q.visible_at <= p_now
                    ORDER BY q.n LIMIT 1 FOR UPDATE SKIP LOCKED)
      RETURNING i.n, i.id, i.order_id, i.state, i.attempts, i.lease_token INTO c;
      ELSIF p_type IS NOT NULL THEN
      UPDATE items i SET state = CASE WHEN i.attempts < i.max_attempts THEN 'leased' ELSE 'failed' END,
        attempts = i.attempts + (i.attempts < i.max_attempts)::int,
        leased_by = CASE WHEN i.attempts < i.max_attempts THEN p_agent END,
        lease_token = CASE WHEN i.attempts < i.max_attempts THEN p_token END,
        lease_expires_at = CASE WHEN i.attempts < i.max_attempts THEN p_expires END, updated_at = p_now
      WHERE i.id = (SELECT q.id FROM items q WHERE q.type = p_type AND q.state = 'queued' AND q.visible_at <= p_now
                    ORDER BY q.priority DESC, q.n LIMIT 1 FOR UPDATE SKIP LOCKED)
      RETURNING i.n, i.id, i.order_id, i.state, i.attempts, i.lease_token INTO c;
      ELSE
      UPDATE items i SET state = CASE WHEN i.attempts < i.max_attempts THEN 'leased' ELSE 'failed' END,
        attempts = i.attempts + (i.attempts < i.max_attempts)::int,
        leased_by = CASE WHEN i.attempts < i.max_attempts THEN p_agent END,
        lease_token = CASE WHEN i.attempts < i.max_attempts THEN p_token END,
        lease_expires_at = CASE WHEN i.attempts < i.max_attempts THEN p_expires END, updated_at = p_now
      WHERE i.id = (SELECT q.id FROM items q WHERE q.state = 'queued' AND q.visible_at <= p_now
                    ORDER BY q.priority DESC, q.n LIMIT 1 FOR UPDATE SKIP LOCKED)
      RETURNING i.n, i.id, i.order_id, i.state, i.attempts, i.lease_token INTO c;
      END IF;
      EXIT WHEN NOT FOUND;
      deltas := jsonb_set(deltas, ARRAY[c.order_id], coalesce(deltas -> c.order_id, '[0,0,0,0]'::jsonb));
      deltas := jsonb_set(deltas, ARRAY[c.order_id, '0'], to_jsonb((deltas #>> ARRAY[c.order_id, '0'])::int - 1));
      IF c.state = 'failed' THEN  -- requeued with no attempts left: the claim fails it and claims again
        INSERT INTO item_results (n, error, updated_at) VALUES (c.n, json_build_object('code', 'max_attempts_exceeded',
          'message', 'gave up after ' || c.attempts || ' attempts', 'last_agent', NULL::text)::text, p_now)
          ON CONFLICT ON CONSTRAINT item_results_pkey DO UPDATE SET error = excluded.error, updated_at = excluded.updated_at;
        INSERT INTO events (order_id, item_id, entity, event, from_state, to_state, actor_type, actor_id, payload, created_at)
          VALUES (c.order_id, c.id, 'item', 'failed', 'queued', 'failed', 'system', 'workctl',
                  json_build_object('code', 'max_attempts_exceeded', 'message', 'gave up after ' || c.attempts ||
                                    ' attempts', 'last_agent', NULL::text)::text, p_now);
        deltas := jsonb_set(deltas, ARRAY[c.order_id, '3'], to_jsonb((deltas #>> ARRAY[c.order_id, '3'])::int + 1));
        CONTINUE;
      END IF;
      INSERT INTO events (order_id, item_id, entity, event, from_state, to_state, actor_type, actor_id, payload, created_at)
        VALUES (c.order_id, c.id, 'item', 'leased', 'queued', 'leased', 'agent', p_agent,
                json_build_object('lease_expires_at', p_expires, 'attempt', c.attempts)::text, p_now);
      deltas := jsonb_set(deltas, ARRAY[c.order_id, '1'], to_jsonb((deltas #>> ARRAY[c.order_id, '1'])::int + 1));
      n := c.n; id := c.id; order_id := c.order_id; attempts := c.attempts; lease_token := c.lease_token;
      SELECT b.input INTO input FROM item_bodies b WHERE b.n = c.n;
      EXIT;
    END LOOP;
  END IF;
  -- the counters last, one update per order, in order_id order (two cycles never lock two rows crosswise)
  FOR d IN SELECT key, value FROM jsonb_each(deltas) ORDER BY key LOOP
    PERFORM wc_count(d.key, (d.value ->> 0)::int, (d.value ->> 1)::int, (d.value ->> 2)::int,
                     (d.value ->> 3)::int, p_now);
  END LOOP;
  RETURN NEXT;
END $f$
"""


class PgLeanFunction(PgLean):
    key, name = "pg-f", "(f) lean + submit --next as ONE plpgsql function call (autocommit)"
    submit_next = True
    sql_derive = True

    def ddl(self) -> str:
        return lean_pg_ddl()

    def setup(self, target: str, n: int, **kw) -> None:
        super().setup(target, n, **kw)
        conn = pg_connect(target, self.schema)
        conn.execute(pg_function_ddl())
        conn.close()

    def worker(self, target: str, agent: str, **kw):
        return PgLeanFunctionWorker(target, self.schema, agent, self, **kw)


class PgLeanFunctionWorker(PgLeanWorker):
    CALL = ("SELECT ok, n, id, order_id, attempts, lease_token, input FROM wc_cycle(%(sid)s, %(stok)s, %(result)s, "
            "%(agent)s, %(now)s, %(expires)s, %(token)s, %(claim)s, %(order)s, %(type)s)")

    def __init__(self, target, schema, agent, v, order_id=None, type_name=None):
        super().__init__(target, schema, agent, v)
        self.fscope = {"order": order_id, "type": type_name}

    def _call(self, handle, result, claim: bool):
        t = CLOCK()
        row = self.c.execute(self.CALL, {
            "sid": handle[1] if handle else None, "stok": handle[3] if handle else None,
            "result": dumps(result if result is not None else {"ok": True}) if handle else None,
            "agent": self.agent, "now": iso(t), "expires": iso(t + TTL), "token": new_token(),
            "claim": claim, **self.fscope}).fetchone()
        if not row[0]:
            raise LeaseLost(handle[1])
        return row

    def checkout(self, submits=()):
        handle, result = submits[0] if submits else (None, None)
        ok, n, item_id, order_id, attempts, token, item_input = self._call(handle, result, True)
        return [((n, item_id, order_id, token), attempts, item_input)] if n is not None else []

    def submit_many(self, submits) -> None:
        for handle, result in submits:
            self._call(handle, result, False)


class PgLeanPlainWorker(PgLeanWorker):
    """(c3): the same submit --next transaction as plain statements, pipelined where the next one does
    not need the previous one's result: 3 round trips (what the single CTE statement saves)."""

    def checkout(self, submits=()):
        t = CLOCK()
        now, expires, token = iso(t), iso(t + TTL), new_token()
        c = self.c
        try:
            with c.pipeline():
                if submits:
                    (handle, result), = submits
                    n, sid, s_order, stok = handle
                    sub = c.execute("UPDATE items SET state = 'submitted', leased_by = NULL, lease_token = NULL, "
                                    "lease_expires_at = NULL, updated_at = %s WHERE id = %s AND state = 'leased' AND "
                                    "lease_token = %s AND lease_expires_at > %s RETURNING attempts",
                                    (now, sid, stok, now))
                    c.execute("INSERT INTO item_results (n, result, submitted_by, updated_at) VALUES (%s, %s, %s, %s) "
                              "ON CONFLICT (n) DO UPDATE SET result = excluded.result, error = NULL, "
                              "submitted_by = excluded.submitted_by, updated_at = excluded.updated_at",
                              (n, dumps({"ok": True}), self.agent, now))
                rec = c.execute("SELECT id, leased_by FROM items WHERE state = 'leased' AND lease_expires_at <= %s "
                                "ORDER BY lease_expires_at LIMIT 8 FOR UPDATE SKIP LOCKED", (now,))
                cl = c.execute("UPDATE items SET state = 'leased', attempts = attempts + 1, leased_by = %(agent)s, "
                               "lease_token = %(token)s, lease_expires_at = %(expires)s, updated_at = %(now)s "
                               "WHERE id = (SELECT id FROM items WHERE state = 'queued' AND visible_at <= %(now)s "
                               "ORDER BY priority DESC, n LIMIT 1 FOR UPDATE SKIP LOCKED) AND attempts < max_attempts "
                               "RETURNING n, id, order_id, attempts, (SELECT input FROM item_bodies b "
                               "WHERE b.n = items.n)", {"agent": self.agent, "token": token, "expires": expires,
                                                        "now": now})
                s_row = sub.fetchone() if submits else None
                expired = rec.fetchall()
                row = cl.fetchone()
            if submits and s_row is None:
                raise LeaseLost(sid)
            if expired:  # the rare path is (b)/(c)'s; this variant only measures the common one
                raise NotImplementedError("pg-c3 does not implement reclaim; use pg-c")
            events, deltas = [], defaultdict(lambda: defaultdict(int))
            if submits:
                events.append((s_order, sid, "item", "submitted", "leased", "submitted", "agent", self.agent,
                               dumps({"attempt": s_row[0]}), now))
                deltas[s_order]["leased"] -= 1
                deltas[s_order]["submitted"] += 1
            if row:
                events.append((row[2], row[1], "item", "leased", "queued", "leased", "agent", self.agent,
                               dumps({"lease_expires_at": expires, "attempt": row[3]}), now))
                deltas[row[2]]["queued"] -= 1
                deltas[row[2]]["leased"] += 1
            with c.pipeline():
                c.cursor().executemany(EVENT_INSERT.replace("?", "%s"), events)
                curs = [c.execute("UPDATE order_counts SET queued = queued + %s, leased = leased + %s, "
                                  "submitted = submitted + %s WHERE order_id = %s RETURNING order_id, state, queued, "
                                  "leased, submitted, accepted, completed, rejected, failed, dead_lettered",
                                  (d["queued"], d["leased"], d["submitted"], o)) for o, d in deltas.items()]
                counts = [cur.fetchone() for cur in curs]
            self._commit(self._derive(counts, now))
            return [((row[0], row[1], row[2], token), row[3], row[4])] if row else []
        except BaseException:
            c.rollback()
            raise


class PgLeanPlain(PgLean):
    key, name = "pg-c3", "(c3) lean + submit --next as plain statements (3 round trips)"
    submit_next = True

    def worker(self, target: str, agent: str, **kw):
        return PgLeanPlainWorker(target, self.schema, agent, self, **kw)


PG_VARIANTS: dict[str, PgVariant] = {v.key: v for v in (
    PgRaw(), PgToday(),
    pg_lean_variant("pg-b", "(b) lean, checkout + submit: 1 CTE statement + COMMIT each (2 txns)"),
    pg_lean_variant("pg-c", "(c) lean + submit --next: 1 CTE statement + COMMIT (1 txn)", submit_next=True),
    PgLeanPlain(),
    pg_lean_variant("pg-d", "(d) (c) as ONE autocommit statement, order derived in SQL (1 round trip)",
                    submit_next=True, sql_derive=True),
    pg_lean_variant("pg-e", "(e) (d) with the reclaim as a 2nd statement in the same pipeline (1 round trip)",
                    submit_next=True, sql_derive=True, split_reclaim=True),
    PgLeanFunction(),
    type("PgLeanFunction2", (PgLeanFunction,), {"key": "pg-f2", "submit_next": False,
         "name": "(f2) lean, checkout + submit as 2 plpgsql calls (2 txns)"})(),
    pg_lean_variant("pg-b1", "(b) checkout + submit, each ONE autocommit statement (SQL derivation)",
                    sql_derive=True),
    pg_lean_variant("pg-nocnt", "(x) (c) without the per-order counter row [not a candidate]", submit_next=True,
                    counters=False),
    pg_lean_variant("pg-batch8", "(batch8) 8 leases per claim, 8 submits per txn [not for the CLI]", batch=8),
    PgRawNext(),
)}
DEFAULT_PG = ["pg-raw", "pg-a", "pg-b", "pg-b1", "pg-c", "pg-d", "pg-e", "pg-f", "pg-f2", "pg-nocnt", "pg-batch8",
              "pg-raw-next"]


def pg_main(args) -> dict[str, Any]:
    keys = args.variants.split(",") if args.variants else DEFAULT_PG
    keys = ["pg-raw"] + [k for k in keys if k != "pg-raw"]
    variants = [PG_VARIANTS[k] for k in keys]
    out: dict[str, Any] = {}
    try:
        if not args.wal_only:
            print(f"\nPostgreSQL: {args.n:,} items, {args.procs} processes, {args.rounds} interleaved rounds "
                  "(synchronous_commit on)")
            out["compare"] = compare(variants, lambda v: args.dsn, args.n, args.procs, args.rounds, "pg-raw",
                                     after=lambda v, t: v.drop(t))
        if not args.no_wal:
            out["wal"] = pg_wal_table(variants, args.dsn, min(args.wal_cycles, 2000))
    finally:
        for v in variants:
            v.drop(args.dsn)
    return out


def pg_wal_table(variants, dsn: str, cycles: int) -> dict[str, Any]:
    """WAL bytes and round trips per cycle, one process (pg_current_wal_lsn is cluster-wide: run it on
    an otherwise idle server; the minimum of two passes is reported)."""
    out = {}
    print(f"\nPostgreSQL, one process, {cycles} cycles: per checkout + submit cycle (after CHECKPOINT, so the "
          "first touch of each page writes a full-page image: compare variants, not absolutes)")
    print("| variant | WAL bytes | commits | psycopg waits (a pipeline sync counts one per result) |")
    print("|---|---:|---:|---:|")
    for v in variants:
        best = None
        for _ in range(2):
            v.setup(dsn, cycles)
            w = v.worker(dsn, "bench-wal")
            probe = pg_connect(dsn)
            trips = _count_round_trips(w)
            time.sleep(1.1)  # shared-memory stats are flushed about once a second
            xacts = probe.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]
            start = probe.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
            done = 0
            while True:
                got = w.claim()
                if got is None:
                    break
                w.ack(got[0])
                done += 1
            w.close()
            grown = probe.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start,)).fetchone()[0]
            time.sleep(1.1)
            xacts = probe.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                                  ).fetchone()[0] - xacts - 3  # the probe's own 3 statements
            probe.close()
            r = {"wal_bytes": float(grown) / cycles, "waits": trips[0] / cycles, "commits": xacts / cycles}
            best = r if best is None or r["wal_bytes"] < best["wal_bytes"] else best
        out[v.key] = best
        print(f"| {v.name} | {best['wal_bytes']:,.0f} | {best['commits']:.1f} | {best['waits']:.1f} |")
        v.drop(dsn)
    return out


def _count_round_trips(worker) -> list[int]:
    """Counts the waits for the server (a plain execute, a pipeline sync, a commit: one round trip each) by
    wrapping the connection's generator runner."""
    conn = getattr(worker, "c", None)
    conn = getattr(conn, "conn", conn)  # pg-a's sqlite3-shaped shim
    counts = [0]
    original = conn.wait

    def wait(gen, *a, **kw):
        counts[0] += 1
        return original(gen, *a, **kw)
    conn.wait = wait
    return counts


# ================================================================================================
# The harness: N items, P forked processes that start together and claim + ack until empty
# ================================================================================================

def _locked(exc: Exception) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text


def consumer(variant, target, start, out, idx: int) -> None:
    acked, locked = [], 0
    try:
        worker = variant.worker(target, f"{AGENT_PREFIX}{os.getpid()}")
        start.wait()
        empty = 0
        while True:
            try:
                got = worker.claim()
            except Exception as exc:  # noqa: BLE001
                if _locked(exc):
                    locked += 1
                    time.sleep(LOCKED_SLEEP)
                    continue
                raise
            if got is None:
                empty += 1
                if empty >= 2:
                    break
                continue
            empty = 0
            handle, payload = got
            worker.ack(handle)
            acked.append(payload)
        worker.close()
        out.put({"idx": idx, "acked": acked, "locked": locked, "error": None})
    except Exception:  # noqa: BLE001
        out.put({"idx": idx, "acked": acked, "locked": locked, "error": traceback.format_exc()})


def drain(variant, target, n: int, procs: int) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=consumer, args=(variant, target, start, out, i)) for i in range(procs)]
    for p in ps:
        p.start()
    time.sleep(0.3)  # every consumer has opened its connection
    t0 = time.perf_counter()
    start.set()
    results = [out.get() for _ in ps]
    wall = time.perf_counter() - t0
    for p in ps:
        p.join()
    acked = [x for r in results for x in r["acked"]]
    unique = set(acked)
    errors = [r["error"] for r in results if r["error"]]
    for e in errors:
        print(f"ERROR in a {variant.key} consumer:\n{e}", file=sys.stderr)
    return {"cycles_per_s": len(unique) / wall, "wall_s": wall, "duplicates": len(acked) - len(unique),
            "lost": n - len(unique & set(range(n))), "locked": sum(r["locked"] for r in results),
            "split": [len(r["acked"]) for r in sorted(results, key=lambda r: r["idx"])], "errors": len(errors)}


def sqlite_target(base: str, key: str) -> str:
    d = os.path.join(base, key)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return os.path.join(d, "q.db")


def compare(variants: list, prepare: Callable[[Any], Any], n: int, procs: int, rounds: int,
            baseline: str, after: Callable[[Any, Any], None] | None = None) -> dict[str, Any]:
    """Interleaved rounds: every round runs every variant once (the order rotates), on fresh data."""
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        line = []
        for v in order:
            target = prepare(v)
            v.setup(target, n)
            res = drain(v, target, n, procs)
            if after:
                after(v, target)
            res["round"] = r
            runs[v.key].append(res)
            line.append(f"{v.key} {res['cycles_per_s']:,.0f}/s"
                        + (f" DUP {res['duplicates']}" if res["duplicates"] else "")
                        + (f" LOST {res['lost']}" if res["lost"] else ""))
        print(f"round {r + 1}/{rounds}: " + ", ".join(line), flush=True)
    return summarize(variants, runs, baseline)


def summarize(variants: list, runs: dict[str, list[dict[str, Any]]], baseline: str) -> dict[str, Any]:
    base = {x["round"]: x["cycles_per_s"] for x in runs[baseline]}
    rows = []
    for v in variants:
        xs = runs[v.key]
        rates = [x["cycles_per_s"] for x in xs]
        ratios = [x["cycles_per_s"] / base[x["round"]] for x in xs if x["round"] in base]
        rows.append({"key": v.key, "name": v.name, "rates": rates, "ratios": ratios,
                     "rate_median": statistics.median(rates), "rate_min": min(rates), "rate_max": max(rates),
                     "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "duplicates": sum(x["duplicates"] for x in xs), "lost": sum(x["lost"] for x in xs),
                     "locked": sum(x["locked"] for x in xs), "errors": sum(x["errors"] for x in xs)})
    print()
    print(f"| variant | cycles/s median [min–max] | × {baseline} median [min–max] | dup | lost | locked errs |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['rate_median']:,.0f} [{r['rate_min']:,.0f}–{r['rate_max']:,.0f}] | "
              f"{r['ratio_median']:.2f} [{r['ratio_min']:.2f}–{r['ratio_max']:.2f}] | {r['duplicates']} | "
              f"{r['lost']} | {r['locked']} |")
    return {"rows": rows, "runs": runs}


# ------------------------------------------------------------------------------------------------
# SQLite: WAL bytes and statements per cycle (one process, checkpoints off)
# ------------------------------------------------------------------------------------------------

class CountingConn:
    """Counts the calls into SQLite (execute / executemany, BEGIN and COMMIT included)."""

    def __init__(self, conn: sqlite3.Connection):
        self._c = conn
        self.calls = 0

    def execute(self, *a):
        self.calls += 1
        return self._c.execute(*a)

    def executemany(self, *a):
        self.calls += 1
        return self._c.executemany(*a)

    def __getattr__(self, name):
        return getattr(self._c, name)


def sqlite_wal_per_cycle(variant: SqliteVariant, base: str, cycles: int) -> dict[str, float]:
    path = sqlite_target(base, "wal-" + variant.key)
    variant.setup(path, cycles)
    keeper = sqlite3.connect(path)  # holds the WAL open: the last connection to close checkpoints it away
    keeper.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    w = variant.worker(path, "bench-wal")
    conn = w.c
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    traced = [0]
    conn.set_trace_callback(lambda sql: traced.__setitem__(0, traced[0] + (not sql.startswith("--"))))
    counting = CountingConn(conn)
    w.c = counting
    before = os.path.getsize(path + "-wal")
    done = 0
    while True:
        got = w.claim()
        if got is None:
            break
        w.ack(got[0])
        done += 1
    calls_before_close = counting.calls
    w.close()  # (c)/(d) flush their last submit here
    grown = os.path.getsize(path + "-wal") - before
    keeper.close()
    assert done == cycles, (done, cycles)
    return {"wal_bytes": grown / cycles, "frames": grown / (page + 24) / cycles, "page_size": page,
            "statements": counting.calls / cycles, "statements_before_close": calls_before_close / cycles,
            "sqlite_statements_traced": traced[0] / cycles}


def sqlite_wal_table(keys: list[str], base: str, cycles: int) -> dict[str, Any]:
    out = {}
    print(f"\nSQLite, one process, {cycles} cycles, wal_autocheckpoint off: per checkout + submit cycle")
    print("| variant | WAL bytes | WAL frames (pages) | calls into sqlite3 (BEGIN/COMMIT included) | statements run (trace) |")
    print("|---|---:|---:|---:|---:|")
    for k in keys:
        v = SQLITE_VARIANTS[k]
        r = out[k] = sqlite_wal_per_cycle(v, base, cycles)
        print(f"| {v.name} | {r['wal_bytes']:,.0f} | {r['frames']:.1f} | {r['statements']:.1f} | "
              f"{r['sqlite_statements_traced']:.1f} |")
    return out


# ================================================================================================
# --selftest: the rare paths, the derived order states, the counters, the claim plans
# ================================================================================================

class Check:
    def __init__(self, label: str):
        self.label, self.failures, self.passed = label, [], 0

    def __call__(self, cond: bool, what: str) -> None:
        if cond:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"  FAIL [{self.label}] {what}")


def run_scenario(label: str, make_worker: Callable[..., Any], q: Callable[..., list], orders: list[str],
                 next_claim_reclaims: bool = False) -> Check:
    """Two orders: A (task.batch, priority 0) and B (user.data.sync, priority 5), 3 items each,
    max_attempts 2, the clock pinned and moved by hand."""
    ck = Check(label)
    a_id, b_id = orders
    t0 = 1_900_000_000.0
    CLOCK.pinned = t0

    def item_state(order_id, seq):
        return q("SELECT state, attempts FROM items_v WHERE order_id = ? AND seq = ?", (order_id, seq))[0]

    def order_state(order_id):
        return q("SELECT state FROM orders WHERE id = ?", (order_id,))[0][0]

    def events(order_id):
        return [tuple(r) for r in q("SELECT entity, event, from_state, to_state FROM events_v WHERE order_id = ? "
                                    "ORDER BY eid", (order_id,))]

    def seq_of(handle):
        return q("SELECT seq FROM items_v WHERE id = ?", (handle[1],))[0][0]

    w_any = make_worker("agent-1")
    w_a = make_worker("agent-2", order_id=a_id)
    w_sync = make_worker("agent-3", type_name="user.data.sync")
    try:
        # 1. priority first, then age; the first checkout starts the order
        (h_b0, att, inp), = w_any.checkout()
        ck(h_b0[2] == b_id and seq_of(h_b0) == 0 and att == 1, "any-claim takes B (priority 5), oldest first")
        ck(order_state(b_id) == "in_progress" and order_state(a_id) == "queued", "first checkout: B in_progress, A queued")
        ck(events(b_id)[-2:] == [("item", "leased", "queued", "leased"), ("order", "started", "queued", "in_progress")],
           f"B's events end leased, started: {events(b_id)[-2:]}")
        # 2. claims by order and by type are their own seeks
        (h_a0, _, _), = w_a.checkout()
        ck(h_a0[2] == a_id and seq_of(h_a0) == 0, "order-scoped claim takes A's oldest")
        (h_b1, _, _), = w_sync.checkout()
        ck(h_b1[2] == b_id and seq_of(h_b1) == 1, "type-scoped claim takes B's next")
        # 3. fencing: a wrong token writes nothing
        try:
            w_any.submit((h_b0[0], h_b0[1], h_b0[2], "not-the-token"))
            ck(False, "submit with a stale token must raise LeaseLost")
        except LeaseLost:
            ck(item_state(b_id, 0) == ("leased", 1), "stale-token submit left the item leased")
        leased_before = q("SELECT count(*) FROM items_v WHERE state = 'leased'")[0][0]
        try:
            w_any.checkout([((h_b0[0], h_b0[1], h_b0[2], "not-the-token"), None)])
            ck(False, "submit --next with a stale token must raise LeaseLost")
        except LeaseLost:
            ck(q("SELECT count(*) FROM items_v WHERE state = 'leased'")[0][0] == leased_before,
               "submit --next with a stale token claimed nothing")
        # 4. heartbeat; release without error (attempt not counted); release with error + backoff
        w_any.heartbeat(h_b0)
        ck(events(b_id)[-1][1] == "heartbeat", "heartbeat logs an event")
        ck(w_sync.release(h_b1) == "queued" and item_state(b_id, 1) == ("queued", 0), "release: queued, attempt back")
        ck(w_a.release(h_a0, error="boom", backoff=60) == "queued" and item_state(a_id, 0) == ("queued", 1),
           "release with error: queued, attempt kept")
        (h, _, _), = w_a.checkout()
        ck(seq_of(h) == 1, "the backing-off item is skipped by the claim")
        w_a.submit(h)
        # 5. an expired lease is reclaimed by the claim itself (lease_expired, then leased again)
        CLOCK.pinned = t0 + TTL + 1
        (h_b0b, att, _), = w_any.checkout()
        if next_claim_reclaims and h_b0b[1] != h_b0[1]:  # the requeued item goes to the next claim
            w_any.submit(h_b0b)
            (h_b0b, att, _), = w_any.checkout()
        ck(h_b0b[1] == h_b0[1] and att == 2, f"expired lease reclaimed first (priority), attempt 2: {att}")
        evs = [e[1] for e in events(b_id)]
        ck(evs[-2:] == ["lease_expired", "leased"] if not next_claim_reclaims else
           ("lease_expired" in evs[-4:] and evs[-1] == "leased"), f"reclaim logs lease_expired then leased: {evs[-4:]}")
        try:
            w_any.submit(h_b0)
            ck(False, "the first holder's late submit must raise LeaseLost")
        except LeaseLost:
            ck(True, "")
        # 6. expired again at max_attempts: the claim fails it instead
        CLOCK.pinned = t0 + 2 * TTL + 2
        got = w_any.checkout()
        ck(item_state(b_id, 0)[0] == "failed", f"expired at max_attempts: failed ({item_state(b_id, 0)})")
        ck("failed" in [e[1] for e in events(b_id)], "the failure is logged")
        # 7. drain everything; derived states at the end
        handles = [g[0] for g in got]
        while True:
            for h in handles:
                w_any.submit(h)
            handles = [g[0] for g in w_any.checkout()]
            if not handles:
                break
        ck(order_state(a_id) == "submitted", f"A: every item submitted -> submitted ({order_state(a_id)})")
        ck(order_state(b_id) == "failed", f"B: one failed, none open -> failed ({order_state(b_id)})")
        ck(events(a_id)[-1] == ("order", "submitted", "in_progress", "submitted"), f"A's last event: {events(a_id)[-1]}")
        for o in (a_id, b_id):
            actual = dict.fromkeys(ITEM_STATES, 0)
            actual.update({st: c for st, c in q("SELECT state, count(*) FROM items_v WHERE order_id = ? GROUP BY state", (o,))})
            counted = q("SELECT " + ", ".join(ITEM_STATES) + ", state FROM order_counts WHERE order_id = ?", (o,))[0]
            ck(tuple(counted[:-1]) == tuple(actual[x] for x in ITEM_STATES), f"counters = GROUP BY for {o[:8]}: "
               f"{tuple(counted[:-1])} vs {tuple(actual[x] for x in ITEM_STATES)}")
            ck(counted[-1] == order_state(o), "the counter row's state mirrors orders.state")
    finally:
        CLOCK.pinned = None
        for w in (w_any, w_a, w_sync):
            w.close()
    print(f"  [{label}] {ck.passed} checks passed, {len(ck.failures)} failed")
    return ck


def sqlite_selftest(base: str) -> None:
    print("SQLite self-test")
    for key in ("b", "c", "d", "e-inclaim"):
        v = SQLITE_VARIANTS[key]
        path = sqlite_target(base, "selftest-" + key)
        v.setup(path, 6, orders=2, types=(TASK_TYPE, "user.data.sync"), priorities=(0, 5), max_attempts=2)
        conn = sqlite3.connect(path, isolation_level=None)
        eid = "seq" if v.clustered_events else "id"
        conn.executescript(f"""CREATE TEMP VIEW items_v AS SELECT * FROM items;
            CREATE TEMP VIEW events_v AS SELECT *, {eid} AS eid FROM events;""")
        orders = [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY rowid")]
        run_scenario(key, lambda agent, v=v, path=path, **kw: v.worker(path, agent, **kw),
                     lambda sql, args=(), conn=conn: conn.execute(sql, args).fetchall(), orders)
        # the claim plans: one seek on a claim index, no scan of items, no sort
        for scope in ({}, {"order_id": orders[0]}, {"type_name": TASK_TYPE}):
            w = v.worker(path, "plan", **scope)
            sql = w.head_sql if v.reclaim == "inclaim" else w.claim_sql
            plan = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, {
                **w.scope, "now": "z", "agent": "a", "token": "t", "expires": "z", "n": 1}))
            ok = "items_claim" in plan and "TEMP B-TREE" not in plan.replace("TEMP B-TREE FOR ORDER BY", "") \
                and "SCAN items" not in plan.replace("SCAN items USING INDEX items_claim", "")
            print(f"  plan {key} {list(scope) or ['any']}: {'ok' if ok else 'BAD'} — {plan}")
            w.close()
        conn.close()


def pg_selftest(dsn: str) -> None:
    print("PostgreSQL self-test")
    for row in _sql_derive_mismatches(dsn):
        print("  FAIL sql_derive differs from derive():", row)
    for key in ("pg-c", "pg-d", "pg-e", "pg-f"):
        v = PG_VARIANTS[key]
        v.setup(dsn, 6, orders=2, types=(TASK_TYPE, "user.data.sync"), priorities=(0, 5), max_attempts=2)
        conn = pg_connect(dsn, v.schema)
        conn.execute("CREATE VIEW items_v AS SELECT i.*, b.seq FROM items i JOIN item_bodies b USING (n)")
        conn.execute("CREATE VIEW events_v AS SELECT *, id AS eid FROM events")
        orders = [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY created_at, ctid")]

        def q(sql, args=(), conn=conn):
            return conn.execute(sql.replace("?", "%s"), args).fetchall()
        run_scenario(key, lambda agent, v=v, **kw: v.worker(dsn, agent, **kw), q, orders,
                     next_claim_reclaims=not v.split_reclaim)
        # the claim plans on a bigger table (the planner picks seq scans on 6 rows)
        conn.execute("INSERT INTO items (id, n, order_id, type, priority, state, max_attempts, updated_at) "
                     "SELECT gen_random_uuid()::text, 1000 + g, %s, 'task.batch', 0, 'queued', 3, '' "
                     "FROM generate_series(1, 50000) g", (orders[0],))
        conn.execute("ANALYZE items")
        plan = " | ".join(r[0].strip() for r in conn.execute(
            "EXPLAIN SELECT id FROM items WHERE type = 'user.data.sync' AND state = 'queued' AND visible_at <= 'z' "
            "ORDER BY priority DESC, n LIMIT 1 FOR UPDATE SKIP LOCKED"))
        print(f"  plan {key} rare type (50,000 task.batch rows, 3 user.data.sync): "
              f"{'ok' if 'items_claim_type' in plan else 'BAD'} — {plan}")
        for scope, where, order in (("any", "", "priority DESC, n"), ("order", "order_id = %(scope)s AND ", "n"),
                                    ("type", "type = %(scope)s AND ", "priority DESC, n")):
            plan = " | ".join(r[0].strip() for r in conn.execute(
                f"EXPLAIN SELECT id FROM items WHERE {where}state = 'queued' AND visible_at <= %(now)s "
                f"ORDER BY {order} LIMIT 1 FOR UPDATE SKIP LOCKED", {"scope": orders[0] if scope == "order" else TASK_TYPE,
                                                                        "now": "z"}))
            ok = "items_claim" in plan and "Sort" not in plan
            print(f"  plan {key} {scope}: {'ok' if ok else 'BAD'} — {plan}")
        conn.close()
        v.drop(dsn)


def _sql_derive_mismatches(dsn: str) -> list:
    import itertools

    conn = pg_connect(dsn)
    bad = []
    cols = ["q", "l", "s", "a", "c", "rj", "f", "dl"]
    combos = [dict(zip(cols, v, strict=True)) for v in itertools.product((0, 1), repeat=8)]
    for cur in ORDER_TRANSITIONS:
        expr = sql_derive("%(cur)s::text", *(f"%({c})s::int" for c in cols))
        for combo in combos:
            got = conn.execute(f"SELECT {expr}", {"cur": cur, **combo}).fetchone()[0]
            want = derive(cur, {st for st, c in zip(ITEM_STATES, cols, strict=False) if combo[c]})
            if got != want:
                bad.append((cur, combo, got, want))
    conn.close()
    print(f"  sql_derive vs derive(): {len(ORDER_TRANSITIONS) * len(combos)} cases, {len(bad)} mismatches")
    return bad


# ================================================================================================
# --scale: checkout latency with 1,000 and 1,000,000 items (the claim is one seek whatever the size)
# ================================================================================================

def _latency(workers: dict[str, Any], checkouts: int = 400, block: int = 20) -> dict[str, dict[str, float]]:
    """Alternating blocks of ``block`` checkouts per store; µs per checkout (one transaction each).
    The leases are kept: the outstanding-lease count grows to ``checkouts`` in every store alike."""
    per: dict[str, list[float]] = {k: [] for k in workers}
    for _ in range(checkouts // block):
        for k, w in workers.items():
            for _ in range(block):
                t = time.perf_counter()
                got = w.checkout()
                per[k].append((time.perf_counter() - t) * 1e6)
                assert got, k
    out = {}
    for k, xs in per.items():
        xs.sort()
        out[k] = {"median_us": statistics.median(xs), "p90_us": xs[int(0.9 * len(xs))]}
    return out


def _print_scale(title: str, res: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print("| store | median µs | p90 µs |")
    print("|---|---:|---:|")
    for k, r in res.items():
        print(f"| {k} | {r['median_us']:.1f} | {r['p90_us']:.1f} |")
    keys = list(res)
    print(f"ratio {keys[-1]} / {keys[0]}: {res[keys[-1]]['median_us'] / res[keys[0]]['median_us']:.2f}×")


def sqlite_scale(base: str) -> dict[str, Any]:
    out = {}
    for key in ("d", "d-inclaim"):
        v = SQLITE_VARIANTS[key]
        workers = {}
        for n in (1_000, 1_000_000):
            path = sqlite_target(base, f"scale-{key}-{n}")
            t = time.perf_counter()
            v.setup(path, n)
            print(f"  set up {key} with {n:,} items in {time.perf_counter() - t:.1f} s", flush=True)
            workers[f"{key}, {n:,} items"] = v.worker(path, "bench-scale")
        out[key] = _latency(workers)
        _print_scale(f"SQLite checkout latency, {SQLITE_VARIANTS[key].name}", out[key])
        for w in workers.values():
            w.c.close()
    return out


def pg_scale(dsn: str) -> dict[str, Any]:
    v1 = pg_lean_variant("pg-e-1k", "pg-e 1k", submit_next=True, sql_derive=True, split_reclaim=True)
    v2 = pg_lean_variant("pg-e-1m", "pg-e 1M", submit_next=True, sql_derive=True, split_reclaim=True)
    try:
        workers = {}
        for v, n in ((v1, 1_000), (v2, 1_000_000)):
            t = time.perf_counter()
            v.setup(dsn, n)
            print(f"  set up pg-e with {n:,} items in {time.perf_counter() - t:.1f} s", flush=True)
            workers[f"pg-e, {n:,} items"] = v.worker(dsn, "bench-scale")
        res = _latency(workers)
        _print_scale("PostgreSQL checkout latency, (e) lean, one pipeline round trip", res)
        for w in workers.values():
            w.c.close()
        return res
    finally:
        v1.drop(dsn)
        v2.drop(dsn)


# ================================================================================================
# main
# ================================================================================================

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("sqlite", "pg", "both"), default="sqlite")
    ap.add_argument("--variants", default=None, help="comma-separated keys (default: all of the backend)")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--wal-cycles", type=int, default=1000)
    ap.add_argument("--wal-only", action="store_true", help="only the per-cycle WAL/statement table")
    ap.add_argument("--no-wal", action="store_true")
    ap.add_argument("--selftest", action="store_true")
    ap.add_argument("--scale", action="store_true", help="claim latency at 1k and 1M items (best variant)")
    ap.add_argument("--dsn", default="host=127.0.0.1 user=postgres dbname=bench_hotpath")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    base = args.dir or tempfile.mkdtemp(prefix="hotpath-")
    os.makedirs(base, exist_ok=True)
    out: dict[str, Any] = {"argv": sys.argv[1:], "n": args.n, "procs": args.procs, "rounds": args.rounds,
                           "python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version,
                           "cpus": os.cpu_count()}
    print(json.dumps({k: out[k] for k in ("python", "sqlite", "cpus", "n", "procs", "rounds")}), flush=True)
    try:
        backends = ("sqlite", "pg") if args.backend == "both" else (args.backend,)
        if args.selftest:
            for b in backends:
                (sqlite_selftest(base) if b == "sqlite" else pg_selftest(args.dsn))
            return 0
        if args.scale:
            out["scale"] = {b: (sqlite_scale(base) if b == "sqlite" else pg_scale(args.dsn)) for b in backends}
        else:
            for b in backends:
                if b == "sqlite":
                    keys = args.variants.split(",") if args.variants else DEFAULT_SQLITE
                    keys = ["raw"] + [k for k in keys if k != "raw"]
                    if not args.wal_only:
                        print(f"\nSQLite: {args.n:,} items, {args.procs} processes, {args.rounds} interleaved rounds")
                        out["sqlite"] = compare([SQLITE_VARIANTS[k] for k in keys],
                                                lambda v: sqlite_target(base, v.key), args.n, args.procs,
                                                args.rounds, "raw")
                    if not args.no_wal:
                        out["sqlite_wal"] = sqlite_wal_table(keys, base, args.wal_cycles)
                else:
                    out["pg"] = pg_main(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1, default=str)
            print(f"wrote {args.json}")
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
