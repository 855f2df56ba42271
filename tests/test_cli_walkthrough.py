"""The seed's walk-through (shared/seed/user-data-sync.md), end to end through the CLI."""

from __future__ import annotations

import json

from helpers import file_snapshot, is_url, make_users, result_for_users, run, table_snapshot, users_rows

BACKENDS = ("sqlite", "postgres")  # the contract suite: the same commands, output and exit codes on both


def snapshot(db):
    """Everything a dry run could have touched: the file's bytes (SQLite), every workflow table and users."""
    return (table_snapshot(db), users_rows(db)) if is_url(db) else file_snapshot(db)


def test_seed_walkthrough(db_path):
    db = db_path
    make_users(db, 150)
    payload = json.dumps({"source": "crm", "user_ids": list(range(1, 151)), "fields": ["email", "phone", "company"]})

    proposed = run(db, "propose", "user.data.sync", "--payload", payload, "--json")
    assert proposed.exit_code == 0, proposed.stderr
    order = proposed.json["order"]
    items = proposed.json["items"]
    assert order["state"] == "queued" and order["type"] == "user.data.sync"
    assert [it["input"]["user_ids"] for it in items] == [list(range(1, 51)), list(range(51, 101)),
                                                         list(range(101, 151))]
    assert all(it["state"] == "queued" and it["max_attempts"] == 3 for it in items)

    leased_ids = []
    for n, agent in enumerate(["sync-agent-01", "sync-agent-02", "sync-agent-01"]):
        out = run(db, "checkout", order["id"], "--agent", agent, "--json")
        assert out.exit_code == 0, out.stderr
        item = out.json["item"]
        assert item["id"] == items[n]["id"]  # in order
        assert item["state"] == "leased" and item["heartbeat_every_seconds"] == 120 and item["lease_token"]
        result = json.dumps(result_for_users(item["input"]["user_ids"]))
        # The token travels in the environment, as the README recommends (it does not show in ps).
        sub = run(db, "submit", item["id"], "--result", result, "--agent", agent, "--json",
                  env={"WORKCTL_LEASE_TOKEN": item["lease_token"]})
        assert sub.exit_code == 0, sub.stderr
        assert sub.json["item"] == {"id": item["id"], "state": "submitted"}
        leased_ids.append(item["id"])
    assert sub.json["order"]["state"] == "submitted"

    none_left = run(db, "checkout", "--agent", "sync-agent-03", "--json")
    assert none_left.exit_code == 3
    assert none_left.json["error"]["code"] == "no_items_available"

    before = snapshot(db)
    dry = run(db, "approve", order["id"], "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    assert dry.json["diff"]["after"] == {"updated_count": 150}
    assert len(dry.json["diff"]["changes"]) == 450
    assert snapshot(db) == before  # a dry run changes nothing

    approved = run(db, "approve", order["id"], "--json")
    assert approved.exit_code == 0, approved.stderr
    assert approved.json["order"] == {"id": order["id"], "state": "completed"}
    diff = approved.json["diff"]
    assert diff["before"] == {"updated_count": 0} and diff["after"] == {"updated_count": 150}
    assert diff["summary"] == "Synced data for 150 users from crm"
    assert {"user_id": 7, "field": "email", "old": None, "new": "user7@example.com"} in diff["changes"]

    rows = [(uid, *values) for uid, values in users_rows(db, "email, phone, company").items()]
    assert rows[0] == (1, "user1@example.com", "+15550000001", "Company 1")
    assert all(r[1] == f"user{r[0]}@example.com" for r in rows) and len(rows) == 150

    log = run(db, "log", order["id"], "--json")
    moves = [(e["entity"], e["event"], e["from"], e["to"]) for e in log.json["events"]]
    assert moves[0] == ("order", "proposed", None, "queued")
    assert ("order", "started", "queued", "in_progress") in moves
    assert ("order", "submitted", "in_progress", "submitted") in moves
    for step in [("approved", "submitted", "approved"), ("applied", "approved", "applied"),
                 ("completed", "applied", "completed")]:
        assert ("order", *step) in moves
    for item_id in leased_ids:
        item_moves = [(e["event"], e["from"], e["to"]) for e in log.json["events"] if e["item_id"] == item_id]
        assert item_moves == [("leased", "queued", "leased"), ("submitted", "leased", "submitted"),
                              ("accepted", "submitted", "accepted"), ("completed", "accepted", "completed")]
    agents = {e["actor_id"] for e in log.json["events"] if e["actor_type"] == "agent"}
    assert agents == {"sync-agent-01", "sync-agent-02"}

    status = run(db, "status", "--json")
    assert status.json["orders"]["completed"] == 1 and status.json["items"]["completed"] == 3

    human = run(db, "status", order["id"])
    assert human.exit_code == 0 and "completed" in human.stdout
