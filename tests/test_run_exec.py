"""workctl run --exec with real shell commands."""

from __future__ import annotations

import json
import shlex
import sys

from workctl import Workctl
from helpers import events, query, run, taken

WORKCTL = f"{shlex.quote(sys.executable)} -m workctl"


def propose_tasks(db, n, max_attempts=3):
    out = run(db, "propose", "task.batch", "--payload",
              json.dumps({"tasks": [{"n": i} for i in range(n)], "max_attempts": max_attempts}), "--json")
    assert out.exit_code == 0, out.stderr
    return out.json["order"]["id"]


def test_success_submits_stdout_with_item_on_stdin(tmp_path):
    db = tmp_path / "w.db"
    order_id = propose_tasks(db, 5)
    # The command doubles the task number it reads from stdin and names the item from its environment.
    script = (f"{shlex.quote(sys.executable)} -c 'import json,os,sys; item=json.load(sys.stdin); "
              "print(json.dumps({\"double\": item[\"input\"][\"task\"][\"n\"] * 2, "
              "\"item\": os.environ[\"WORKCTL_ITEM_ID\"]}))'")
    out = run(db, "run", order_id, "--exec", script, "--agent", "runner", "--json")
    assert out.exit_code == 0, out.stderr
    assert taken(out.json["items"]) == {"submitted": 5, "released": 0, "lost": 0}
    with Workctl(db) as wc:
        detail = wc.show(order_id)
    assert detail["order"]["state"] == "submitted"
    for item in detail["items"]:
        assert item["result"] == {"double": item["input"]["task"]["n"] * 2, "item": item["id"]}
        assert item["submitted_by"] == "runner"


def test_each_submit_leases_the_next_item_in_its_own_transaction(tmp_path):
    """The loop submits with --next: every submit but the last leases the following item in the same
    transaction (same timestamp, same agent), so a run costs one commit per item, and --max-items is
    kept (the submit of the last allowed item leases nothing)."""
    db = tmp_path / "w.db"
    order_id = propose_tasks(db, 6)
    out = run(db, "run", order_id, "--exec", "cat >/dev/null; echo '{}'", "--agent", "runner", "--max-items", "4",
              "--json")
    assert out.exit_code == 0, out.stderr
    assert taken(out.json["items"]) == {"submitted": 4, "released": 0, "lost": 0}
    trail = [e for e in events(db, "entity = 'item'") if e["event"] in ("leased", "submitted")]
    assert [e["event"] for e in trail] == ["leased"] + ["submitted", "leased"] * 3 + ["submitted"]
    for submitted, leased in zip(trail[1::2], trail[2::2], strict=False):
        assert (leased["created_at"], leased["actor_id"]) == (submitted["created_at"], "runner")
    assert query(db, "SELECT count(*) FROM items WHERE state = 'queued'") == [(2,)]


def test_non_zero_exit_releases_with_the_error_until_attempts_run_out(tmp_path):
    db = tmp_path / "w.db"
    order_id = propose_tasks(db, 1, max_attempts=2)
    command = "echo 'upstream exploded' >&2; exit 3"
    out = run(db, "run", "--exec", command, "--json", env={"WORKCTL_NOW": "2026-03-01T00:00:00Z"})
    assert out.exit_code == 7 and out.json["error"]["code"] == "run_incomplete"  # a failed command is not a success
    assert out.json["items"]["released"] == 1  # then the item backs off (10 s) rather than spinning
    assert "exited 3" in out.json["errors"][0]["error"] and "upstream exploded" in out.json["errors"][0]["error"]
    later = run(db, "run", "--exec", command, "--json", env={"WORKCTL_NOW": "2026-03-01T00:00:10Z"})
    assert later.json["items"]["released"] == 1
    with Workctl(db) as wc:
        item = wc.show(order_id)["items"][0]
    assert item["state"] == "failed" and item["attempts"] == 2
    assert "upstream exploded" in item["error"]["message"]


def test_invalid_json_output_releases_the_item(tmp_path):
    db = tmp_path / "w.db"
    order_id = propose_tasks(db, 1)
    out = run(db, "run", order_id, "--exec", "cat >/dev/null; echo this is not json", "--max-items", "1", "--json")
    assert taken(out.json["items"]) == {"submitted": 0, "released": 1, "lost": 0}
    assert "invalid JSON" in out.json["errors"][0]["error"]
    with Workctl(db) as wc:
        item = wc.show(order_id)["items"][0]
    assert item["state"] == "queued" and item["attempts"] == 1  # the attempt counted, back in the queue


def test_command_that_outlives_its_lease_has_its_result_dropped(tmp_path):
    db = tmp_path / "w.db"
    order_id = propose_tasks(db, 1)
    # While the command runs, time (as maintain sees it) jumps past the lease, which is reclaimed;
    # the command then prints a perfectly good result that must not be accepted.
    command = (f"cat >/dev/null; WORKCTL_NOW=2099-01-01T00:00:00Z {WORKCTL} --db {shlex.quote(str(db))} maintain "
               ">/dev/null; echo '{\"late\": true}'")
    out = run(db, "run", order_id, "--exec", command, "--max-items", "1", "--json")
    assert out.exit_code == 7, out.stderr  # the item it took was not submitted
    assert taken(out.json["items"]) == {"submitted": 0, "released": 0, "lost": 1}
    with Workctl(db) as wc:
        item = wc.show(order_id)["items"][0]
        events = [e["event"] for e in wc.log(order_id) if e["item_id"] == item["id"]]
    assert item["state"] == "queued" and item["result"] is None
    assert events == ["leased", "lease_expired"]


def test_timeout_kills_the_command_and_releases(tmp_path):
    db = tmp_path / "w.db"
    order_id = propose_tasks(db, 1)
    out = run(db, "run", order_id, "--exec", "exec sleep 30", "--timeout", "0.2", "--max-items", "1", "--json")
    assert out.json["items"]["released"] == 1 and "timed out" in out.json["errors"][0]["error"]


def test_parallel_commands_each_item_once(tmp_path):
    db = tmp_path / "w.db"
    order_id = propose_tasks(db, 24)
    out = run(db, "run", order_id, "--exec", "cat", "--parallel", "4", "--agent", "pool", "--json")
    assert out.exit_code == 0, out.stderr
    assert taken(out.json["items"]) == {"submitted": 24, "released": 0, "lost": 0}
    with Workctl(db) as wc:
        detail = wc.show(order_id)
        leased = [e for e in wc.log(order_id) if e["event"] == "leased"]
    assert len(leased) == 24 and len({e["item_id"] for e in leased}) == 24
    assert {it["submitted_by"] for it in detail["items"]} <= {f"pool#{n}" for n in range(1, 5)}
    # `cat` echoes the item JSON, so each result names its own item: no cross-talk between workers.
    assert all(it["result"]["id"] == it["id"] for it in detail["items"])
