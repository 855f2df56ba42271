"""The PostgreSQL backend's own guarantees, and the races and crashes of the contract suite on both stores.

* The lifecycle tables the server-side functions read are the Python rules (every order state × every
  set of item states, through the function itself, with the events of each path).
* A store set up by a newer workctl is refused; connection failures are exit 8 naming host and database,
  never the password; concurrent first connections migrate once.
* Real processes racing (8 processes × 10,000 items, both backends): no item leased twice, none lost.
* One idempotency key from many processes at once: one order.
* An approve in progress does not block checkouts of other orders (PostgreSQL: row locks, SKIP LOCKED).
* ``kill -9`` of approve at every named crash point and at random moments: all or nothing, exactly once.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections import Counter
from contextlib import closing

import pytest

from workctl import Workctl
from workctl.clock import ManualClock
from workctl.config import Config
from workctl.errors import IllegalTransition, StoreError
from workctl.states import ITEM_STATES, ORDER_STATES, ORDER_TRANSITIONS, derived_order_state, path_to
from workctl.store import open_store
from workctl.store.target import APPLIED_MARKER
from helpers import (NOW, PG_URL, chain_problems, child_env, connect, count, events, go, kill9, lease_violations,
                     make_users, pg_schema, python_cmd, result_for_item, run, run_process, start_ready_processes,
                     users_rows, workctl_cmd)

BACKENDS = ("sqlite", "postgres")


# -- the lifecycle on the server is the Python one ---------------------------------------------------------
@pytest.mark.backends("postgres")
def test_wc_count_derives_every_combination_like_python(db_path):
    """For every order state and every non-empty set of item states: wc_count (what every hot-path call
    ends with) moves the order where ``derived_order_state`` says, along ``path_to``, one event per step."""
    conn = open_store(db_path, create=True)
    try:
        with conn.transaction():
            conn.execute("INSERT INTO orders (id, type, state, payload, requested_by, item_count, created_at, "
                         "updated_at) VALUES ('o', 't', 'queued', '{}', 'u', 0, 't0', 't0')")
            conn.execute("INSERT INTO order_counts (order_id, state) VALUES ('o', 'queued')")
            checked = 0
            for current in ORDER_STATES:
                for mask in range(1, 1 << len(ITEM_STATES)):
                    present = {s for i, s in enumerate(ITEM_STATES) if mask >> i & 1}
                    counts = ", ".join(f"{s} = {int(s in present)}" for s in ITEM_STATES)
                    conn.execute(f"UPDATE order_counts SET state = ?, {counts} WHERE order_id = 'o'", (current,))
                    conn.execute("UPDATE orders SET state = ? WHERE id = 'o'", (current,))
                    mark = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
                    zero = "{" + ",".join("0" for _ in ITEM_STATES) + "}"
                    got = conn.execute("SELECT wc_count('o', CAST(? AS bigint[]), 't1')", (zero,)).fetchone()[0]
                    expected = derived_order_state(current, present)
                    assert got == expected, (current, sorted(present))
                    steps = [] if expected == current else path_to(current, expected)
                    logged = [tuple(r) for r in conn.execute(
                        "SELECT event, from_state, to_state FROM events WHERE id > ? ORDER BY id", (mark,))]
                    walk, state = [], current
                    for step in steps:
                        walk.append((ORDER_TRANSITIONS[state][step], state, step))
                        state = step
                    assert logged == walk, (current, sorted(present))
                    assert conn.execute("SELECT o.state, c.state FROM orders o JOIN order_counts c "
                                        "ON c.order_id = o.id").fetchone() == (expected, expected)
                    checked += 1
            assert checked == len(ORDER_STATES) * (2 ** len(ITEM_STATES) - 1)
            raise _Rollback
    except _Rollback:
        pass
    finally:
        conn.close()


class _Rollback(Exception):
    """Leave the combinations' scratch rows behind in a rolled-back transaction."""


# -- schema, connections, migrations -------------------------------------------------------------------
@pytest.mark.backends("postgres")
def test_a_store_set_up_by_a_newer_workctl_is_refused(db_path):
    assert run(db_path, "init").exit_code == 0
    with closing(connect(db_path)) as conn:
        conn.execute("INSERT INTO workctl_migrations (name, applied_at) VALUES ('p999_from_the_future', 'x')")
        conn.commit()
    ran = run_process(db_path, "status", "--json")
    assert ran.exit_code == 8
    assert ran.json["error"]["code"] == "store_too_new"
    assert "p999_from_the_future" in ran.json["error"]["message"]
    with pytest.raises(StoreError) as info:
        Workctl(db_path).status()
    assert info.value.code == "store_too_new"


def test_connection_failures_name_host_and_database_never_the_password(tmp_path):
    if not PG_URL.startswith("postgresql://postgres@127.0.0.1"):
        pytest.skip("the URLs below assume the local test server")
    refused = "postgresql://postgres:s3cret-pw@127.0.0.1:1/test"
    missing = "postgresql://postgres:s3cret-pw@127.0.0.1:5432/no_such_database_here"
    for url, says in ((refused, "127.0.0.1:1"), (missing, "no_such_database_here")):
        ran = run_process(url, "status", "--json")
        assert ran.exit_code == 8, ran.stderr
        error = ran.json["error"]
        assert error["code"] == "store_unavailable"
        assert says in error["message"] and "postgres@127.0.0.1" in error["message"]
        assert "s3cret" not in ran.stdout + ran.stderr


@pytest.mark.backends("postgres")
def test_concurrent_first_connections_migrate_once(db_path, tmp_path):
    script = ("import sys\nfrom workctl import Workctl\nwc = Workctl(sys.argv[1])\nprint('ready', flush=True)\n"
              "sys.stdin.readline()\nprint(wc.status()['orders'])\n")
    procs = start_ready_processes([python_cmd(script, str(db_path)) for _ in range(6)], cwd=tmp_path, env=child_env())
    go(procs)
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert count(db_path, "SELECT count(*) FROM workctl_migrations") == 1


# -- races between real processes ----------------------------------------------------------------------------
CLAIM_LOOP = """
import json, sys
from workctl import Workctl
from workctl.config import Config
from workctl.errors import NoWork
db, agent = sys.argv[1], sys.argv[2]
wc = Workctl(db, config=Config())
wc.session
print("ready", flush=True)
sys.stdin.readline()
submitted, errors = [], []
while len(errors) < 20:
    try:
        item = wc.checkout(agent=agent)["item"]
    except NoWork:
        break
    try:
        wc.submit(item["id"], {"by": agent, "task": item["input"]["task"]}, agent=agent,
                  lease_token=item["lease_token"])
        submitted.append(item["id"])
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"submitted": submitted, "errors": errors}))
"""


@pytest.mark.parametrize("processes,items", [(8, 10_000)])
def test_processes_racing_lease_each_item_once_and_lose_none(db_path, tmp_path, processes, items):
    with Workctl(db_path, config=Config(), clock=ManualClock(NOW), create=True) as wc:
        order = wc.propose("task.batch", {"tasks": list(range(items))})["order"]
    env = child_env(WORKCTL_NOW=NOW)  # one pinned time: no lease can expire mid-race
    procs = start_ready_processes([python_cmd(CLAIM_LOOP, str(db_path), f"agent-{n}") for n in range(processes)],
                                  cwd=tmp_path, env=env)
    started = time.monotonic()
    go(procs)
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    seconds = time.monotonic() - started
    submitted = Counter(i for o in outcomes for i in o["submitted"])
    assert [o["errors"] for o in outcomes] == [[]] * processes
    assert len(submitted) == items and max(submitted.values()) == 1  # none lost, none submitted twice
    trail = events(db_path, "entity = 'item' AND event = 'leased'")
    assert len(trail) == items  # each item leased exactly once
    assert lease_violations(events(db_path)) == []
    assert count(db_path, "SELECT count(*) FROM items WHERE order_id = ? AND state = 'submitted'",
                 (order["id"],)) == items
    assert count(db_path, "SELECT submitted FROM order_counts WHERE order_id = ?", (order["id"],)) == items
    assert chain_problems(db_path) == []
    print(f"\n{processes} processes x {items} items: {items / seconds:,.0f} cycles/s")


KEYED_PROPOSE = """
import json, sys
from workctl import Workctl
db = sys.argv[1]
wc = Workctl(db)
wc.session
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(wc.propose("task.batch", {"tasks": [1, 2, 3]}, idempotency_key="nightly-2026-12-01")["order"]))
"""


def test_one_idempotency_key_from_many_processes_makes_one_order(db_path, tmp_path):
    Workctl(db_path, create=True).init()
    procs = start_ready_processes([python_cmd(KEYED_PROPOSE, str(db_path)) for _ in range(6)], cwd=tmp_path,
                                  env=child_env())
    go(procs)
    orders = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        orders.append(json.loads(out)["id"])
    assert len(set(orders)) == 1
    assert count(db_path, "SELECT count(*) FROM orders") == 1


# -- approve does not block agents (PostgreSQL) ------------------------------------------------------------
@pytest.mark.backends("postgres")
def test_an_approve_in_progress_does_not_block_checkouts(db_path, tmp_path):
    """The approve is held inside its transaction (a trigger on users waits for an advisory lock the test
    holds); meanwhile an agent checks out and submits an item of another order, through the CLI."""
    make_users(db_path, 100, filled=True)
    with Workctl(db_path, config=Config(), create=True) as wc:
        sync = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, 101)),
                                             "fields": ["email"], "batch_size": 50})["order"]["id"]
        for _ in range(2):
            item = wc.checkout(sync, agent="loader")["item"]
            wc.submit(item["id"], result_for_item(item["input"]), agent="loader", lease_token=item["lease_token"])
        other = wc.propose("task.batch", {"tasks": ["t"]})["order"]["id"]
    with closing(connect(db_path)) as conn:
        conn.execute("CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "PERFORM pg_advisory_lock(4242); PERFORM pg_advisory_unlock(4242); RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER hold BEFORE UPDATE ON users FOR EACH ROW WHEN (NEW.id = 1) "
                     "EXECUTE FUNCTION hold()")
        conn.commit()
    holder = connect(db_path)
    holder.execute("SELECT pg_advisory_lock(4242)")
    approve = subprocess.Popen(workctl_cmd(db_path, "approve", sync, "--json"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=child_env(), cwd=tmp_path)
    try:
        # The approve is inside its transaction once its backend waits on the advisory lock (polled: the
        # wait is for another process to reach a point, with a deadline, not for time to pass).
        deadline, waiting = time.monotonic() + 60, 0
        while not waiting and time.monotonic() < deadline and approve.poll() is None:
            waiting = count(db_path, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        assert waiting == 1, f"the approve never reached the users update: {approve.poll()}"
        started = time.monotonic()
        leased = run_process(db_path, "checkout", other, "--agent", "agent-b", "--json")
        assert leased.exit_code == 0, leased.stderr
        item = leased.json["item"]
        submitted = run_process(db_path, "submit", item["id"], "--agent", "agent-b", "--result", '{"ok": true}',
                                "--json", env={"WORKCTL_LEASE_TOKEN": item["lease_token"]})
        assert submitted.exit_code == 0, submitted.stderr
        assert time.monotonic() - started < 20  # not waiting on the approve's locks (lock_timeout is 30 s)
        assert approve.poll() is None  # the approve was still held all along
    finally:
        holder.execute("SELECT pg_advisory_unlock(4242)")
        holder.close()
    out, err = approve.communicate(timeout=60)
    assert approve.returncode == 0, err
    assert json.loads(out)["order"]["state"] == "completed"


# -- kill -9 of approve (PostgreSQL) ---------------------------------------------------------------------
FIELDS = ["email", "phone", "company"]
APPROVER = """
import json, sys
from workctl import Workctl
from workctl.config import Config
from workctl.types import get_type
db, order_id = sys.argv[1:3]
wc = Workctl(db, config=Config())
wc.session
get_type("user.data.sync")
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(wc.approve(order_id)["order"]), flush=True)
"""


def _approve_world(url: str, users: int) -> tuple[str, dict, dict]:
    """A store with one user.data.sync order, every item submitted: (order id, users before, users after)."""
    make_users(url, users, filled=True)
    with Workctl(url, config=Config(), clock=ManualClock(NOW), create=True) as wc:
        order = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, users + 1)),
                                              "fields": FIELDS, "batch_size": 1000})
        order_id = order["order"]["id"]
        for _ in order["items"]:
            item = wc.checkout(order_id, agent="loader")["item"]
            wc.submit(item["id"], result_for_item(item["input"]), agent="loader", lease_token=item["lease_token"])
    before = users_rows(url, "email, phone, company")
    after = {uid: tuple(f"{f}-{uid}-new" for f in FIELDS) for uid in before}
    return order_id, before, after


def _finish_and_check(url: str, order_id: str, before: dict, after: dict) -> str:
    """After a kill: the users table untouched or fully applied (with the order completed), then a second
    approve completes exactly once, keeping a hand edit made after the real apply."""
    users = users_rows(url, "email, phone, company")
    applied = "untouched" if users == before else "applied" if users == after else None
    assert applied is not None, "users table half applied"
    state = count(url, "SELECT state FROM orders WHERE id = ?", (order_id,))
    assert (state, applied) in (("submitted", "untouched"), ("completed", "applied")), (state, applied)
    if applied == "applied":
        with closing(connect(url)) as conn:
            conn.execute("UPDATE users SET email = 'edited-by-hand' WHERE id = 1")
            conn.commit()
    with Workctl(url, config=Config(), clock=ManualClock(NOW)) as wc:
        if state == "submitted":
            assert wc.approve(order_id)["order"]["state"] == "completed"
        with pytest.raises(IllegalTransition):
            wc.approve(order_id)
        diff = wc.show(order_id)["order"]["diff"]
    expected = dict(after)
    if applied == "applied":
        expected[1] = ("edited-by-hand", *after[1][1:])
    assert users_rows(url, "email, phone, company") == expected
    assert len(diff["changes"]) == len(after) * len(FIELDS)
    assert count(url, f"SELECT count(*) FROM {APPLIED_MARKER}") == 1
    assert [e["event"] for e in events(url, "order_id = ? AND entity = 'order' AND event IN "
                                            "('approved', 'applied', 'completed')", (order_id,))] == \
        ["approved", "applied", "completed"]
    assert count(url, "SELECT count(*) FROM provenance WHERE order_id = ?", (order_id,)) == len(diff["changes"])
    assert chain_problems(url) == []
    return f"{state}/{applied}"


@pytest.mark.parametrize("point,expected", [("after_apply", "submitted/untouched"),
                                            ("before_store_commit", "submitted/untouched"),
                                            ("after_store_commit", "completed/applied")])
def test_postgres_approve_killed_at_a_named_point(tmp_path, point, expected):
    with pg_schema() as url:
        order_id, before, after = _approve_world(url, 2_000)
        proc = subprocess.run(workctl_cmd(url, "approve", order_id, "--json"), capture_output=True, text=True,
                              env=child_env(WORKCTL_NOW=NOW, WORKCTL_TEST_CRASH_AT=point), cwd=tmp_path, timeout=120)
        assert proc.returncode == -9, proc.stderr  # killed itself at the point
        assert _finish_and_check(url, order_id, before, after) == expected


def test_postgres_approve_killed_at_random_moments(tmp_path):
    rng = random.Random()
    outcomes: Counter[str] = Counter()
    window = None
    for _ in range(6):
        with pg_schema() as url:
            order_id, before, after = _approve_world(url, 5_000)
            [proc] = start_ready_processes([python_cmd(APPROVER, url, order_id)], cwd=tmp_path,
                                           env=child_env(WORKCTL_NOW=NOW))
            started = time.monotonic()
            go([proc])
            if window is None:  # the first trial measures how long an approve takes
                proc.communicate(timeout=120)
                assert proc.returncode == 0
                window = time.monotonic() - started
            else:
                time.sleep(rng.uniform(0, window * 1.1))  # the randomisation of the kill point
                kill9(proc)
            outcomes[_finish_and_check(url, order_id, before, after)] += 1
    assert sum(outcomes.values()) == 6
    print(f"\noutcomes after kill -9 (approve window {window:.2f} s): {dict(outcomes)}")


@pytest.mark.backends("postgres")
def test_a_lost_connection_is_exit_8_and_the_next_call_reconnects(db_path):
    """The server drops the connection (a restart, a failover): that call fails with store_unavailable,
    and the same handle (a long-lived `workctl serve` worker) works again on the next call."""
    with Workctl(db_path, config=Config(), create=True) as wc:
        wc.propose("task.batch", {"tasks": [1, 2]})
        pid = wc.session.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        with closing(connect(db_path)) as admin:
            admin.execute("SELECT pg_terminate_backend(?)", (pid,))
        with pytest.raises(StoreError) as info:
            wc.status()
        assert (info.value.code, info.value.exit_code) == ("store_unavailable", 8)
        assert wc.status()["items"]["queued"] == 2
