"""Shared machinery of the reliability suite (issue 4, docs/reliability.md): real processes, kill -9,
event-trail checkers, and the figures each test reports.

Not a test module itself; the reliability tests (load, crash, faults, bad input, security, state machine) import it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from workctl.core.lifecycle import ITEM_STATES, ITEM_TRANSITIONS, ORDER_STATES, ORDER_TRANSITIONS

REPO = Path(__file__).resolve().parents[1]
NOW = "2026-01-01T00:00:00Z"


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a workctl child process: this checkout, no plugins, nothing inherited that
    would point it elsewhere (store, config, target, crash hook)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORKCTL_LOAD_PLUGINS": "0"}
    for name in ("WORKCTL_DB", "WORKCTL_CONFIG", "WORKCTL_TARGET_DB", "WORKCTL_NOW", "WORKCTL_AGENT_ID",
                 "WORKCTL_TEST_CRASH_AT", "WORKCTL_DEBUG"):
        env.pop(name, None)
    env.update(extra)
    return env


def workctl_cmd(db: Path | str, *args: str) -> list[str]:
    """argv of a real ``workctl`` process (the console script's entry point, via -m)."""
    return [sys.executable, "-m", "workctl", "--db", str(db), *args]


def python_cmd(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(script), *args]


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


# -- the event trail -----------------------------------------------------------------------------------
def trail(db: Path | str, where: str = "1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    conn = sqlite3.connect(str(db))
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM events WHERE {where} ORDER BY id", params)]
    finally:
        conn.close()


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
    conn = sqlite3.connect(str(db))
    try:
        orders = dict(conn.execute("SELECT id, state FROM orders").fetchall())
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


# -- users tables ---------------------------------------------------------------------------------------
def users_rows(db: Path | str, columns: str = "*") -> dict[int, tuple[Any, ...]]:
    conn = sqlite3.connect(str(db))
    try:
        return {r[0]: tuple(r[1:]) for r in conn.execute(f"SELECT id, {columns} FROM users ORDER BY id")}
    finally:
        conn.close()


def count(db: Path | str, sql: str, params: tuple[Any, ...] = ()) -> int:
    conn = sqlite3.connect(str(db))
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


def table_exists(db: Path | str, name: str) -> bool:
    conn = sqlite3.connect(str(db))
    try:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
            is not None
    finally:
        conn.close()


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
