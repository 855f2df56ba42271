"""Real OS processes racing on one store file: claims, first opens, and approvals."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path


from workctl import Workctl
from workctl.clock import ManualClock
from workctl.config import Config
from workctl.store.sqlite_migrations import MIGRATION_NAMES
from helpers import NOW, REPO, events, read_users, result_for_item, rows

# NOW: every process reads the same pinned time, so no lease can expire mid-race
AGENTS = 4
ITEMS = 1000

# Each worker opens the store, says "ready", waits for "go" on stdin (so all of them start together),
# then runs its loop and prints one JSON line with what it did and every error it saw.
PRELUDE = """
import json, sys
from workctl import Workctl
from workctl.config import Config
from workctl.errors import NoWork, WorkctlError
db, agent = sys.argv[1], sys.argv[2]
wc = Workctl(db, config=Config())
if OPEN_FIRST:
    wc.session  # open and migrate before the start signal
print("ready", flush=True)
sys.stdin.readline()
errors = []
def record(exc):
    errors.append({"type": type(exc).__name__, "code": getattr(exc, "code", None), "message": str(exc)})
"""

CLAIM_LOOP = "OPEN_FIRST = True" + PRELUDE + """
submitted = []
while len(errors) < 20:
    try:
        item = wc.checkout(agent=agent)["item"]
    except NoWork:
        break
    except Exception as exc:
        record(exc)
        continue
    try:
        wc.submit(item["id"], {"by": agent, "task": item["input"]["task"]}, agent=agent,
                  lease_token=item["lease_token"])
        submitted.append(item["id"])
    except Exception as exc:
        record(exc)
print(json.dumps({"agent": agent, "submitted": submitted, "errors": errors}))
"""

OPEN_ONLY = "OPEN_FIRST = False" + PRELUDE + """
try:
    wc.init()  # a creating operation: several agents set up the same new path at once
except Exception as exc:
    record(exc)
print(json.dumps({"agent": agent, "errors": errors}))
"""

APPROVE = "OPEN_FIRST = True" + PRELUDE + """
outcome = None
try:
    outcome = wc.approve(sys.argv[3])["order"]["state"]
except Exception as exc:
    record(exc)
print(json.dumps({"agent": agent, "outcome": outcome, "errors": errors}))
"""


def race(script: str, db: Path, cwd: Path, *extra: str, n: int = AGENTS, timeout: float = 60) -> list[dict]:
    """Start n real Python processes running ``script``, release them at once, collect their reports."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORKCTL_LOAD_PLUGINS": "0", "WORKCTL_NOW": NOW}
    for name in ("WORKCTL_DB", "WORKCTL_CONFIG", "WORKCTL_TARGET_DB"):
        env.pop(name, None)
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(db), f"agent-{i}", *extra],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=cwd, env=env)
             for i in range(n)]
    try:
        for proc in procs:
            ready = proc.stdout.readline()
            assert ready == "ready\n", (ready, proc.stderr.read() if proc.poll() is not None else "")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err
            assert "locked" not in err.lower(), err
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def overlapping_leases(trail: list[dict]) -> list[str]:
    """Items leased again while a lease on them was still held (no submit/expiry/release in between)."""
    held: dict[str, str] = {}
    problems = []
    for ev in trail:
        item = ev["item_id"]
        if item is None:
            continue
        if ev["event"] == "leased":
            if item in held:
                problems.append(f"{item} leased by {ev['actor_id']} while held by {held[item]} (event {ev['id']})")
            held[item] = ev["actor_id"]
        elif ev["from_state"] == "leased":  # submitted, released, lease_expired, failed
            held.pop(item, None)
    return problems


def test_four_processes_drain_one_queue_without_double_work(tmp_path, db_path):
    with Workctl(db_path, config=Config(), clock=ManualClock(NOW)) as wc:
        order = wc.propose("task.batch", {"tasks": [{"n": i} for i in range(ITEMS)]})
    all_items = {it["id"] for it in order["items"]}

    reports = race(CLAIM_LOOP, db_path, tmp_path)

    errors = [e for r in reports for e in r["errors"]]
    assert errors == []
    assert not any("locked" in e["message"].lower() for e in errors)
    submitted = [item for r in reports for item in r["submitted"]]
    assert len(submitted) == ITEMS and set(submitted) == all_items  # each exactly once, by one agent
    assert sum(1 for r in reports if r["submitted"]) >= 2, "the processes did not actually race"

    by_agent = {item: r["agent"] for r in reports for item in r["submitted"]}
    conn_rows = rows(db_path, "items", order_by="n")
    assert len(conn_rows) == ITEMS
    with Workctl(db_path, config=Config(), clock=ManualClock(NOW)) as wc:
        shown = wc.show(order["order"]["id"])
    assert shown["order"]["state"] == "submitted"
    for item in shown["items"]:
        assert item["state"] == "submitted" and item["attempts"] == 1
        assert item["submitted_by"] == by_agent[item["id"]]
        assert item["result"] == {"by": by_agent[item["id"]], "task": item["input"]["task"]}

    trail = events(db_path)
    per_item = defaultdict(lambda: defaultdict(int))
    for ev in trail:
        if ev["item_id"]:
            per_item[ev["item_id"]][ev["event"]] += 1
    assert set(per_item) == all_items
    assert all(counts == {"leased": 1, "submitted": 1} for counts in per_item.values())
    assert overlapping_leases(trail) == []
    leased_by = {ev["item_id"]: ev["actor_id"] for ev in trail if ev["event"] == "leased"}
    assert leased_by == by_agent


def test_overlap_detector_sees_a_double_lease():
    """The checker above is only worth something if it catches the failure it looks for."""
    trail = [{"id": 1, "item_id": "i", "event": "leased", "from_state": "queued", "actor_id": "a"},
             {"id": 2, "item_id": "i", "event": "leased", "from_state": "queued", "actor_id": "b"}]
    assert len(overlapping_leases(trail)) == 1
    trail.insert(1, {"id": 9, "item_id": "i", "event": "lease_expired", "from_state": "leased", "actor_id": "x"})
    assert overlapping_leases(trail) == []


def test_four_processes_open_a_brand_new_store_at_once(tmp_path):
    """Regression: the first open switches the new file to WAL; two processes doing that at once got
    'database is locked' immediately (SQLite refuses to wait when both hold a shared lock and want an
    exclusive one), so several agents started together on a new path failed with exit 8. It raced in
    about 4 rounds out of 10, so run several rounds."""
    for round_ in range(5):
        db = tmp_path / f"fresh-{round_}.db"
        reports = race(OPEN_ONLY, db, tmp_path)
        assert [r["errors"] for r in reports] == [[]] * AGENTS, f"round {round_}"
        assert [r[2] for r in rows(db, "_sqlite_migrations", order_by="id")] == list(MIGRATION_NAMES)
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        conn = sqlite3.connect(str(db))
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


def test_concurrent_approvals_apply_once(tmp_path, db_path, users_db):
    users_db(db_path, 150)
    with Workctl(db_path, config=Config(), clock=ManualClock(NOW)) as wc:
        order_id = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, 151))})["order"]["id"]
        for _ in range(3):
            item = wc.checkout(agent="a")["item"]
            wc.submit(item["id"], result_for_item(item["input"]), agent="a", lease_token=item["lease_token"])

    reports = race(APPROVE, db_path, tmp_path, order_id)

    winners = [r for r in reports if r["outcome"] == "completed"]
    losers = [r for r in reports if r["outcome"] is None]
    assert len(winners) == 1 and len(losers) == AGENTS - 1
    assert all([e["code"] for e in r["errors"]] == ["order_not_submitted"] for r in losers)
    assert len(events(db_path, "event = 'applied'")) == 1
    assert len(rows(db_path, "_workctl_applied")) == 1
    assert read_users(db_path)[150]["email"] == "email-150-new"
