"""R1 — load: many real OS processes drain one store file, and nothing is lost, doubled or locked.

Every agent is a separate Python process (the library, as an agent script would use it) or a real
``workctl run --exec`` process. All of them read the same pinned time (WORKCTL_NOW), so no lease can
expire mid-race and every second lease of an item would be a real double lease. Afterwards the
events table is replayed: each item leased once and submitted once, by the agent that says it did.

CI runs 8 processes x 1,000 items (two orders, three claim scopes) and 4 ``workctl run`` processes x
300 items; ``-m slow`` runs 8 processes x 10,000 items (docs/reliability.md has the figures).
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from workctl import Workctl
from workctl.clock import ManualClock
from workctl.config import Config
from helpers import (NOW, chain_problems, child_env, events, figure, go, kill9, lease_violations,
                     per_item_counts, python_cmd, start_ready_processes, workctl_cmd)

# One agent: open the store, say ready, wait for go, then check out -> (heartbeat every 7th) -> submit
# until NoWork. Every exception is recorded, never retried silently, so a 'database is locked' that
# reached the agent shows up in the report.
AGENT = """
import json, sys, time
from workctl import Workctl
from workctl.config import Config
from workctl.errors import NoWork
db, agent, scope, arg = sys.argv[1:5]
wc = Workctl(db, config=Config())
wc.session
print("ready", flush=True)
sys.stdin.readline()
kwargs = {"order_id": arg} if scope == "order" else {"type_name": arg} if scope == "type" else {}
submitted, errors, started = [], [], time.time()
def record(exc):
    errors.append({"type": type(exc).__name__, "code": getattr(exc, "code", None), "message": str(exc)})
while len(errors) < 50:
    try:
        item = wc.checkout(kwargs.get("order_id"), agent=agent, type_name=kwargs.get("type_name"))["item"]
    except NoWork:
        break
    except Exception as exc:
        record(exc)
        continue
    try:
        if len(submitted) % 7 == 3:
            wc.heartbeat(item["id"], agent=agent, lease_token=item["lease_token"])
        wc.submit(item["id"], {"by": agent, "task": item["input"]["task"]}, agent=agent,
                  lease_token=item["lease_token"])
        submitted.append(item["id"])
    except Exception as exc:
        record(exc)
print(json.dumps({"agent": agent, "submitted": submitted, "errors": errors, "started": started,
                  "finished": time.time()}))
"""


def drain(tmp_path, db, *, processes: int, orders: list[dict], scopes: list[tuple[str, str]]) -> dict:
    """Run ``processes`` agent processes (scope i % len(scopes)) until no work is left; check everything."""
    all_items = {it["id"]: o["order"]["id"] for o in orders for it in o["items"]}
    total = len(all_items)
    env = child_env(WORKCTL_NOW=NOW)
    argvs = [python_cmd(AGENT, str(db), f"agent-{i}", *scopes[i % len(scopes)]) for i in range(processes)]
    procs = start_ready_processes(argvs, cwd=tmp_path, env=env)
    reports, stderr = [], []
    try:
        go(procs)
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            stderr.append(err)
            assert proc.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill9(proc)

    errors = [e for r in reports for e in r["errors"]]
    locked = [e for e in errors if "locked" in e["message"].lower() or e["code"] == "store_locked"]
    locked += [s for s in stderr if "locked" in s.lower()]
    assert locked == [], locked
    assert errors == [], errors[:5]
    submitted = [item for r in reports for item in r["submitted"]]
    assert len(submitted) == total, f"{total - len(submitted)} items lost or {len(submitted) - total} doubled"
    assert set(submitted) == set(all_items)  # each item exactly once, and nothing else
    # On 2 cores a process can be scheduled only after the others drained a short queue: at least half
    # of them must have got work for this to count as a race.
    assert sum(1 for r in reports if r["submitted"]) >= processes // 2, "the processes did not really race"

    by_agent = {item: r["agent"] for r in reports for item in r["submitted"]}
    trail = events(db)
    assert lease_violations(trail) == []
    counts = per_item_counts(trail)
    assert set(counts) == set(all_items)
    bad = {i: dict(c) for i, c in counts.items() if c["leased"] != 1 or c["submitted"] != 1}
    assert bad == {}, list(bad.items())[:3]
    assert {e["item_id"]: e["actor_id"] for e in trail if e["event"] == "submitted" and e["item_id"]} == by_agent
    assert chain_problems(db) == []

    with Workctl(db, config=Config(), clock=ManualClock(NOW)) as wc:
        for order in orders:
            order_id = order["order"]["id"]
            shown = wc.show(order_id)
            assert shown["order"]["state"] == "submitted"
            for item in shown["items"]:
                assert (item["state"], item["attempts"], item["submitted_by"]) == \
                    ("submitted", 1, by_agent[item["id"]])
                assert item["result"] == {"by": by_agent[item["id"]], "task": item["input"]["task"]}
            assert wc.approve(order_id)["diff"]["after"] == {"completed_tasks": len(order["items"])}
    applied = events(db, "event = 'applied'")
    assert sorted(e["order_id"] for e in applied) == sorted(o["order"]["id"] for o in orders)

    seconds = max(r["finished"] for r in reports) - min(r["started"] for r in reports)
    per_process = sorted(len(r["submitted"]) for r in reports)
    return {"items": total, "processes": processes, "seconds": round(seconds, 2),
            "items_per_second": round(total / seconds, 1), "lost": 0, "doubled": 0, "double_leases": 0,
            "locked_errors": len(locked), "items_per_process_min_max": [per_process[0], per_process[-1]]}


def propose_tasks(db, count: int, *, priority: int = 0, tag: str = "t") -> dict:
    with Workctl(db, config=Config(), clock=ManualClock(NOW)) as wc:
        return wc.propose("task.batch", {"tasks": [{tag: i} for i in range(count)]}, priority=priority)


def test_eight_processes_drain_two_orders_through_three_claim_scopes(tmp_path):
    """8 processes, 1,000 items in two orders of different priority; agents claim from any order, by
    type, or from one order, so all three claim queries race each other."""
    db = tmp_path / "load.db"
    low = propose_tasks(db, 600, tag="low")
    high = propose_tasks(db, 400, priority=5, tag="high")
    scopes = [("any", "-"), ("type", "task.batch"), ("order", low["order"]["id"]), ("any", "-")]
    figures = drain(tmp_path, db, processes=8, orders=[low, high], scopes=scopes)
    figure("R1-ci", **figures)


@pytest.mark.slow
def test_eight_processes_drain_ten_thousand_items(tmp_path):
    db = tmp_path / "load.db"
    order = propose_tasks(db, 10_000)
    figures = drain(tmp_path, db, processes=8, orders=[order], scopes=[("any", "-")])
    figure("R1-full", **figures)


def test_four_workctl_run_processes_share_one_queue(tmp_path):
    """The same with real ``workctl run --exec`` processes (the CLI agent loop, heartbeat thread and all):
    the command echoes its item back as the result."""
    db = tmp_path / "load.db"
    order = propose_tasks(db, 300)
    items = {it["id"] for it in order["items"]}
    env = child_env(WORKCTL_NOW=NOW)
    procs = [subprocess.Popen(workctl_cmd(db, "run", "--exec", "cat", "--agent", f"runner-{i}", "--json"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
                              start_new_session=True) for i in range(4)]
    reports = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            assert "locked" not in err.lower(), err
            reports.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill9(proc)
    assert [r["errors"] for r in reports] == [[]] * 4
    assert sum(r["items"]["submitted"] for r in reports) == 300
    assert all(r["items"]["released"] == r["items"]["lost"] == 0 for r in reports)
    assert sum(1 for r in reports if r["items"]["submitted"]) >= 2, "the processes did not race"
    trail = events(db)
    assert lease_violations(trail) == []
    counts = per_item_counts(trail)
    assert set(counts) == items and all(c["leased"] == 1 and c["submitted"] == 1 for c in counts.values())
    with Workctl(db, config=Config(), clock=ManualClock(NOW)) as wc:
        shown = wc.show(order["order"]["id"])
    assert shown["order"]["state"] == "submitted"
    # `cat` echoed the checked-out item: the result names the item it was submitted for
    assert all(it["result"]["id"] == it["id"] and it["result"]["lease_token"] for it in shown["items"])
    figure("R1-cli", items=300, processes=4, seconds=max(r["seconds"] for r in reports))


def test_the_checker_catches_a_double_lease_and_an_early_reclaim():
    """lease_violations is only worth something if it fails on what it looks for."""
    def ev(i, event, actor, frm=None, payload=None, at="2026-01-01T00:00:00.000000Z", actor_type="agent"):
        return {"id": i, "item_id": "x", "entity": "item", "event": event, "actor_id": actor,
                "actor_type": actor_type, "from_state": frm, "payload": json.dumps(payload) if payload else None,
                "created_at": at}
    lease = {"lease_expires_at": "2026-01-01T00:10:00.000000Z"}
    assert len(lease_violations([ev(1, "leased", "a", "queued", lease), ev(2, "leased", "b", "queued", lease)])) == 1
    early = [ev(1, "leased", "a", "queued", lease),
             ev(2, "lease_expired", "workctl", "leased", at="2026-01-01T00:05:00.000000Z", actor_type="system"),
             ev(3, "leased", "b", "queued", lease)]
    assert len(lease_violations(early)) == 1
    late = [dict(e) for e in early]
    late[1]["created_at"] = "2026-01-01T00:10:00.000000Z"
    assert lease_violations(late) == []
    foreign = [ev(1, "leased", "a", "queued", lease), ev(2, "submitted", "b", "leased")]
    assert len(lease_violations(foreign)) == 1
    assert os.environ.get("WORKCTL_NOW") is None  # the conftest isolation holds for this process
