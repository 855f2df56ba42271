"""Issue 6, features 3, 6, 7 and 8 end to end through the CLI: conflict policies and provenance,
``workctl diff``, ``workctl revert`` and ``workctl why``.

Syncs run against the real sample server on loopback (``workctl sync``); other orders are worked by
hand with the agent commands. Each test asserts the users table, the provenance rows and the events.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from workctl.errors import Invalid
from workctl.sources.sample_server import SampleServer, sample_user
from helpers import connect, make_users, query, run

BACKENDS = ("sqlite", "postgres")  # the contract suite: every test that uses the store runs on both

NOW = "2026-03-01T00:00:00Z"
NOW_STORED = "2026-03-01T00:00:00.000000Z"


def execute(db: Path | str, sql: str, params: tuple[Any, ...] = ()) -> None:
    conn = connect(db)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def users(db: Path, *columns: str) -> dict[int, tuple[Any, ...]]:
    return {r[0]: r[1:] for r in query(db, f"SELECT id, {', '.join(columns)} FROM users ORDER BY id")}


def events(db: Path, order_id: str, event: str) -> list[dict[str, Any]]:
    return [{"actor": f"{r[0]}:{r[1]}", "payload": json.loads(r[2]) if r[2] else None}
            for r in query(db, "SELECT actor_type, actor_id, payload FROM events WHERE order_id = ? AND event = ? "
                               "ORDER BY id", (order_id, event))]


def propose(db: Path, payload: dict[str, Any], env: dict[str, str], *pre: str) -> str:
    ran = run(db, *pre, "propose", "user.data.sync", "--payload", json.dumps(payload), "--json", env=env)
    assert ran.exit_code == 0, ran.stderr
    return ran.json["order"]["id"]


def work_by_hand(db: Path, order_id: str, agent: str, data: dict[int, dict[str, Any]], env: dict[str, str],
                 *pre: str) -> None:
    """The agent commands: check out every item of the order and submit hand-built results."""
    while True:
        leased = run(db, *pre, "checkout", order_id, "--agent", agent, "--json", env=env)
        if leased.exit_code == 3:
            return
        item = leased.json["item"]
        result = {"success": True, "synced_users": [
            {"user_id": u, "data": data[u], "verified": True} for u in item["input"]["user_ids"]]}
        ran = run(db, *pre, "submit", item["id"], "--agent", agent, "--lease-token", item["lease_token"],
                  "--result", json.dumps(result), env=env)
        assert ran.exit_code == 0, ran.stderr


@pytest.fixture
def server():
    with SampleServer() as srv:
        yield srv


def crm(user_id: int, field: str) -> Any:
    return sample_user("crm", user_id)[field]


# -- 3. conflict policies and provenance ------------------------------------------------------------
def test_policies_and_provenance_columns_through_sync(tmp_path, db_path, server):
    db = db_path
    make_users(db, 6)
    execute(db, "ALTER TABLE users ADD COLUMN updated_at TEXT")
    execute(db, "UPDATE users SET phone = '+1-local-2' WHERE id = 2")           # fill_empty keeps it
    execute(db, "UPDATE users SET phone = '' WHERE id = 3")                     # '' counts as empty
    execute(db, "UPDATE users SET email = 'mine@4', updated_at = '2026-03-02T00:00:00Z' WHERE id = 4")  # after
    execute(db, "UPDATE users SET email = 'old@5', updated_at = '2026-02-01 00:00:00' WHERE id = 5")    # before
    env = {"WORKCTL_NOW": NOW, "WORKCTL_SOURCE_CRM_URL": f"{server.url}/crm", "USER": "alice"}
    payload = {"source": "crm", "user_ids": [1, 2, 3, 4, 5, 6], "fields": ["email", "phone", "company"],
               "batch_size": 3, "policies": {"phone": "fill_empty", "email": "skip_if_newer"},
               "provenance_columns": True}
    order_id = propose(db, payload, env)

    synced = run(db, "sync", order_id, "--agent", "sync-1", "--json", env=env)
    assert synced.exit_code == 0, synced.stderr
    approved = run(db, "approve", order_id, "--json", env=env)
    assert approved.exit_code == 0, approved.stderr
    diff = approved.json["diff"]

    # Skipped fields are counted, never listed as changes.
    assert diff["stats"]["skipped"] == 2
    assert diff["skipped_by_policy"] == {"fill_empty": 1, "skip_if_newer": 1}
    listed = {(c["user_id"], c["field"]) for c in diff["changes"]}
    assert (2, "phone") not in listed and (4, "email") not in listed
    assert len(listed) == 6 * 3 - 2

    rows = users(db, "email", "phone", "company", "phone_updated_from", "phone_updated_at", "email_updated_from")
    assert rows[2][1] == "+1-local-2" and rows[2][3] is None              # kept, not stamped
    assert rows[3][1] == crm(3, "phone") and rows[3][3:5] == ("crm", NOW_STORED)
    assert rows[4][0] == "mine@4" and rows[4][5] is None                  # local change after the fetch
    assert rows[5][0] == crm(5, "email") and rows[5][5] == "crm"          # local change before the fetch
    assert all(rows[u][2] == crm(u, "company") for u in rows)

    # One provenance row per applied change, mapped to its item and agent, in the same commit.
    prov = query(db, "SELECT user_id, field, old, new, source, order_id, item_id, agent, applied_at, reverted_by "
                     "FROM provenance ORDER BY id")
    assert len(prov) == len(diff["changes"])
    items = {r[0]: r[1] for r in query(db, "SELECT i.id, inp.input FROM items i JOIN item_inputs inp ON inp.n = i.n "
                                           "WHERE i.order_id = ?", (order_id,))}
    item_of = {u: item_id for item_id, text in items.items() for u in json.loads(text)["user_ids"]}
    for user_id, field, old, new, source, prov_order, item_id, agent, applied_at, reverted_by in prov:
        change = next(c for c in diff["changes"] if (c["user_id"], c["field"]) == (user_id, field))
        assert (json.loads(old), json.loads(new)) == (change["old"], change["new"])
        assert (source, prov_order, item_id, agent, applied_at, reverted_by) == (
            "crm", order_id, item_of[user_id], "sync-1", NOW_STORED, None)

    # The columns were added by one logged schema change; they are never syncable themselves.
    added = events(db, order_id, "schema_changed")
    assert len(added) == 1 and added[0]["actor"] == "system:workctl"
    assert sorted(added[0]["payload"]["added_columns"]) == sorted(
        f"{f}{s}" for f in ("email", "phone", "company") for s in ("_updated_from", "_updated_at"))
    refused = run(db, "propose", "user.data.sync", "--payload",
                  json.dumps({"source": "crm", "user_ids": [1], "fields": ["phone_updated_at"]}), "--json", env=env)
    assert refused.exit_code == 5 and refused.json["error"]["code"] == "field_not_allowed"
    bad_policy = run(db, "propose", "user.data.sync", "--payload",
                     json.dumps({"source": "crm", "user_ids": [1], "fields": ["email"],
                                 "policies": {"phone": "fill_empty"}}), "--json", env=env)
    assert bad_policy.exit_code == 5 and bad_policy.json["error"]["details"][0]["path"] == "policies.phone"

    # skip_if_newer reads <field>_updated_at once it exists: a local edit stamped after the next fetch wins,
    # one stamped between the last apply and the fetch loses, and one whose stamp was not moved past
    # workctl's own write (a stale stamp: the edit's time is unknown) is kept.
    execute(db, "UPDATE users SET phone = 'local-6', phone_updated_from = 'app', "
                "phone_updated_at = '2026-03-05T00:00:00Z' WHERE id = 6")
    execute(db, "UPDATE users SET phone = 'local-1', phone_updated_at = '2026-03-01T12:00:00Z' WHERE id = 1")
    execute(db, "UPDATE users SET phone = 'local-5' WHERE id = 5")
    env2 = {**env, "WORKCTL_NOW": "2026-03-02T00:00:00Z"}
    second = propose(db, {**payload, "policies": {"phone": "skip_if_newer"}}, env2)
    assert run(db, "sync", second, "--agent", "sync-2", "--approve", env=env2).exit_code == 0
    rows = users(db, "phone", "phone_updated_from", "phone_updated_at")
    assert rows[6] == ("local-6", "app", "2026-03-05T00:00:00Z")
    assert rows[5] == ("local-5", "crm", NOW_STORED)
    # The stamp is the source time of the value (the fetch), not the approve time.
    assert rows[1] == (crm(1, "phone"), "crm", "2026-03-02T00:00:00.000000Z")
    assert events(db, second, "schema_changed") == []           # the columns exist now
    second_diff = json.loads(query(db, "SELECT diff FROM orders WHERE id = ?", (second,))[0][0])
    assert second_diff["skipped_by_policy"] == {"skip_if_newer": 2}


# -- 6. preview ---------------------------------------------------------------------------------------
def test_diff_previews_exactly_what_approve_applies(tmp_path, db_path, server):
    db = db_path
    make_users(db, 5)
    execute(db, "UPDATE users SET email = ?, phone = ? WHERE id = 5", (crm(5, "email"), crm(5, "phone")))
    config = tmp_path / "workctl.toml"
    config.write_text('[types."user.data.sync"]\nsensitive_fields = ["phone"]\n')
    env = {"WORKCTL_SOURCE_CRM_URL": f"{server.url}/crm"}
    cfg = ("--config", str(config))
    order_id = propose(db, {"source": "crm", "user_ids": [1, 2, 3, 4, 5], "fields": ["email", "phone"]}, env, *cfg)
    not_yet = run(db, *cfg, "diff", order_id, "--json", env=env)
    assert not_yet.exit_code == 6 and not_yet.json["error"]["code"] == "order_not_submitted"
    assert run(db, *cfg, "sync", order_id, "--agent", "sync-1", env=env).exit_code == 0

    before_users = users(db, "email", "phone")
    before_events = query(db, "SELECT count(*) FROM events")[0][0]
    preview = run(db, *cfg, "diff", order_id, "--json", env=env)
    assert preview.exit_code == 0, preview.stderr
    dry = run(db, *cfg, "approve", order_id, "--dry-run", "--json", env=env).json
    assert preview.json["applied"] is False and preview.json["order"]["state"] == "submitted"
    assert preview.json["diff"] == dry["diff"]                            # the same code path
    changes = preview.json["diff"]["changes"]
    assert {(c["user_id"], c["field"]) for c in changes} == {(u, f) for u in range(1, 5) for f in ("email", "phone")}
    assert {"user_id": 1, "field": "phone", "old": None, "new": crm(1, "phone")} in changes  # --json is exact
    assert preview.json["diff"]["stats"]["unchanged"] == 1

    human = run(db, *cfg, "diff", order_id, env=env)
    assert human.exit_code == 0
    assert "would change 8 fields of 4 users; 1 user unchanged" in human.stdout
    assert crm(1, "email") in human.stdout                               # not sensitive
    assert crm(1, "phone") not in human.stdout and f"***{crm(1, 'phone')[-2:]}" in human.stdout
    assert "masked: phone" in human.stdout

    # A preview changes nothing: no user, no event, no provenance.
    assert users(db, "email", "phone") == before_users
    assert query(db, "SELECT count(*) FROM events")[0][0] == before_events
    assert query(db, "SELECT count(*) FROM provenance") == [(0,)]

    approved = run(db, *cfg, "approve", order_id, "--json", env=env).json
    assert approved["diff"]["changes"] == changes
    assert users(db, "email")[1] == (crm(1, "email"),)
    after = run(db, *cfg, "diff", order_id, "--json", env=env).json
    assert after["applied"] is True and after["diff"]["changes"] == changes
    assert crm(2, "phone") not in run(db, *cfg, "approve", order_id, env=env).stdout + \
        run(db, *cfg, "diff", order_id, env=env).stdout


# -- 7. revert ----------------------------------------------------------------------------------------
def test_revert_restores_only_untouched_values_in_a_separate_target(tmp_path):
    store, app = tmp_path / "w.db", tmp_path / "app.db"
    make_users(app, 5)
    execute(app, "UPDATE users SET email = 'old' || id")
    config = tmp_path / "workctl.toml"
    config.write_text('[target]\ndb = "app.db"\n')
    cfg = ("--config", str(config))
    env = {"USER": "alice", "WORKCTL_NOW": NOW}
    order_id = propose(store, {"source": "crm", "user_ids": [1, 2, 3, 4, 5], "fields": ["email", "company"],
                               "batch_size": 2}, env, *cfg)
    work_by_hand(store, order_id, "agent-r", {u: {"email": f"new{u}@x", "company": f"Co {u}"} for u in range(1, 6)},
                 env, *cfg)
    assert run(store, *cfg, "revert", order_id, env=env).exit_code == 6          # not applied yet
    assert run(store, *cfg, "approve", order_id, env=env).exit_code == 0
    execute(app, "UPDATE users SET email = 'mine' WHERE id = 2")                  # a local change since

    before = users(app, "email", "company")
    dry = run(store, *cfg, "revert", order_id, "--dry-run", "--json", env=env)
    assert dry.exit_code == 0, dry.stderr
    assert dry.json["dry_run"] is True and dry.json["stats"] == {"recorded": 10, "restored": 9, "skipped": 1}
    assert users(app, "email", "company") == before and query(store, "SELECT count(*) FROM reverts") == [(0,)]

    env_later = {**env, "WORKCTL_NOW": "2026-03-03T00:00:00Z"}
    done = run(store, *cfg, "revert", order_id, "--json", env=env_later)
    assert done.exit_code == 0, done.stderr
    revert_id = done.json["revert_id"]
    assert done.json["stats"] == {"recorded": 10, "restored": 9, "skipped": 1}
    assert done.json["skipped"] == [{"user_id": 2, "field": "email", "order_wrote": "new2@x", "restore": "old2",
                                     "current": "mine", "reason": "changed_since",
                                     "changed_by": {"kind": "outside_workctl"}}]
    assert users(app, "email", "company") == {1: ("old1", None), 2: ("mine", None), 3: ("old3", None),
                                              4: ("old4", None), 5: ("old5", None)}

    # Audited: the original rows point at the revert, the revert has its own rows, the order an event.
    prov = query(store, "SELECT user_id, field, source, agent, reverted_by, old, new, applied_at FROM provenance "
                        "ORDER BY id")
    originals, reverts = prov[:10], prov[10:]
    assert all(r[2] == "crm" and r[3] == "agent-r" for r in originals)
    assert [(r[0], r[1]) for r in originals if r[4] is None] == [(2, "email")]
    assert {r[4] for r in originals if r[4]} == {revert_id}
    assert len(reverts) == 9 and all(r[2:5] == ("revert", "user:alice", None) for r in reverts)
    assert (1, "email", "revert", "user:alice", None, '"new1@x"', '"old1"', "2026-03-03T00:00:00.000000Z") in reverts
    [event] = events(store, order_id, "reverted")
    assert event["actor"] == "user:alice"
    assert event["payload"] == {"revert_id": revert_id, "restored": 9, "skipped": 1,
                                "skipped_changes": [{"user_id": 2, "field": "email", "reason": "changed_since"}]}
    # The target carries the revert's own marker, like approve's _workctl_applied.
    assert query(app, "SELECT order_id, revert_id FROM _workctl_reverted") == [(order_id, revert_id)]
    assert query(store, "SELECT order_id, id, restored, skipped FROM reverts") == [(order_id, revert_id, 9, 1)]

    again = run(store, *cfg, "revert", order_id, "--json", env=env_later)
    assert again.exit_code == 6 and again.json["error"]["code"] == "already_reverted"
    assert users(app, "email", "company")[1] == ("old1", None)
    assert query(store, "SELECT count(*) FROM provenance") == [(19,)]


def test_revert_heals_after_a_crash_between_the_target_and_the_store_commit(tmp_path, monkeypatch):
    import workctl.types.user_data_sync.revert as revert_module
    from workctl import Workctl
    from workctl.config import Config

    store, app = tmp_path / "w.db", tmp_path / "app.db"
    make_users(app, 3)
    config = Config(target_db=str(app))
    with Workctl(store, config=config, user="alice") as wc:
        order_id = wc.propose("user.data.sync", {"source": "crm", "user_ids": [1, 2, 3], "fields": ["email"]})[
            "order"]["id"]
        item = wc.checkout(order_id, agent="a")["item"]
        wc.submit(item["id"], {"success": True, "synced_users": [
            {"user_id": u, "data": {"email": f"{u}@new"}, "verified": True} for u in (1, 2, 3)]}, agent="a", lease_token=item["lease_token"])
        wc.approve(order_id)

        def crash(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("killed before the store commit")

        monkeypatch.setattr(revert_module, "_record", crash)
        with pytest.raises(RuntimeError):
            wc.revert(order_id)
        assert users(app, "email") == {1: (None,), 2: (None,), 3: (None,)}   # the target committed
        assert query(store, "SELECT count(*) FROM reverts") == [(0,)]
        execute(app, "UPDATE users SET email = 'later' WHERE id = 3")          # the marker's outcome is reused
        monkeypatch.undo()
        healed = wc.revert(order_id)
    assert healed["stats"]["restored"] == 3 and users(app, "email")[3] == ("later",)
    assert query(store, "SELECT count(*) FROM provenance WHERE source = 'revert'") == [(3,)]
    assert query(app, "SELECT count(*) FROM _workctl_reverted") == [(1,)]


# -- 8. why -------------------------------------------------------------------------------------------
def test_why_tells_the_history_of_a_users_fields(tmp_path, db_path, server):
    db = db_path
    make_users(db, 3)
    env = {"WORKCTL_SOURCE_CRM_URL": f"{server.url}/crm", "USER": "alice", "WORKCTL_NOW": NOW}
    first = propose(db, {"source": "crm", "user_ids": [1, 2, 3], "fields": ["email", "phone"]}, env)
    assert run(db, "sync", first, "--agent", "sync-a", "--approve", env=env).exit_code == 0
    env2 = {**env, "WORKCTL_NOW": "2026-03-02T00:00:00Z"}
    second = propose(db, {"source": "billing", "user_ids": [1], "fields": ["email"]}, env2)
    work_by_hand(db, second, "agent-x", {1: {"email": "alice@corp.example"}}, env2)
    assert run(db, "approve", second, env=env2).exit_code == 0
    env3 = {**env, "WORKCTL_NOW": "2026-03-03T00:00:00Z"}
    revert_id = run(db, "revert", second, "--json", env=env3).json["revert_id"]

    why = run(db, "why", "1", "email", "--json")
    assert why.exit_code == 0, why.stderr
    history = [{k: e[k] for k in ("value", "old", "set_at", "order_id", "source", "agent", "kind", "reverted_by")}
               for e in why.json["history"]]
    assert history == [
        {"value": crm(1, "email"), "old": None, "set_at": NOW_STORED, "order_id": first, "source": "crm",
         "agent": "sync-a", "kind": "sync", "reverted_by": None},
        {"value": "alice@corp.example", "old": crm(1, "email"), "set_at": "2026-03-02T00:00:00.000000Z",
         "order_id": second, "source": "billing", "agent": "agent-x", "kind": "sync", "reverted_by": revert_id},
        {"value": crm(1, "email"), "old": "alice@corp.example", "set_at": "2026-03-03T00:00:00.000000Z",
         "order_id": second, "source": "revert", "agent": "user:alice", "kind": "revert", "reverted_by": None},
    ]
    # The revert's row carries the source time of the value it put back (the first sync's fetch).
    assert [e["source_at"] for e in why.json["history"]] == [NOW_STORED, "2026-03-02T00:00:00.000000Z", NOW_STORED]
    assert why.json["fields"] == {"email": {
        "current": crm(1, "email"), "last_recorded": crm(1, "email"), "changes": 3, "changed_outside": False,
        "last_writer": {"kind": "revert", "order_id": second, "source": "revert", "agent": "user:alice",
                        "at": "2026-03-03T00:00:00.000000Z", "source_at": NOW_STORED}}}
    assert users(db, "email")[1] == (crm(1, "email"),)

    everything = run(db, "why", "1", "--json").json
    assert sorted(everything["fields"]) == ["email", "phone"]
    assert [e["field"] for e in everything["history"]].count("phone") == 1

    execute(db, "UPDATE users SET email = 'edited@app' WHERE id = 1")
    human = run(db, "why", "1")
    assert human.exit_code == 0
    for expected in ("user 1 · email: now edited@app", "agent-x", "billing", "revert", "reverted", first[:8],
                     "email was changed outside workctl"):
        assert expected in human.stdout, expected
    # Events tie the history to the audit trail: the revert is on the second order.
    assert [e["payload"]["revert_id"] for e in events(db, second, "reverted")] == [revert_id]
    nothing = run(db, "why", "99")
    assert nothing.exit_code == 0 and "no recorded changes for user 99" in nothing.stdout


# -- the rules underneath -----------------------------------------------------------------------------
def test_skip_if_newer_time_rules_and_masking(wc, db_path):
    """Library level: the local change time is the latest of <field>_updated_at and updated_at; an
    unreadable local time keeps the local value; without any local time the sync writes."""
    from datetime import datetime, timezone

    from workctl.types.user_data_sync.masking import Masker, mask
    from workctl.types.user_data_sync.provenance import UNREADABLE, parse_time

    assert parse_time("2026-03-01 00:00:00") == datetime(2026, 3, 1, tzinfo=timezone.utc)
    assert parse_time("2026-03-01T01:00:00+01:00") == datetime(2026, 3, 1, tzinfo=timezone.utc)
    assert parse_time(0) == datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert parse_time(None) is None and parse_time("") is None and parse_time("yesterday") is UNREADABLE
    assert (mask("user1@example.com"), mask("+1-555-0000001"), mask("abc"), mask(None)) == (
        "u***@example.com", "***01", "***", None)
    assert Masker(["phone"])("email", "a@b") == "a@b"

    execute(db_path, "ALTER TABLE users ADD COLUMN updated_at TEXT")
    execute(db_path, "ALTER TABLE users ADD COLUMN email_updated_at TEXT")
    execute(db_path, "UPDATE users SET updated_at = 'garbage' WHERE id = 1")                        # unreadable
    execute(db_path, "UPDATE users SET email_updated_at = '2026-01-01T00:00:00Z', "
                     "updated_at = '2027-01-01T00:00:00Z' WHERE id = 2")                           # latest wins
    execute(db_path, "UPDATE users SET email_updated_at = '2025-01-01T00:00:00Z' WHERE id = 3")    # older
    order_id = wc.propose("user.data.sync", {"source": "crm", "user_ids": [1, 2, 3, 4], "fields": ["email"],
                                             "policies": {"email": "skip_if_newer"}})["order"]["id"]
    item = wc.checkout(order_id, agent="a")["item"]
    with pytest.raises(Invalid) as refused:
        wc.submit(item["id"], {"success": True, "fetched_at": "soon", "synced_users": [
            {"user_id": u, "data": {"email": f"{u}@new"}, "verified": True} for u in (1, 2, 3, 4)]}, agent="a", lease_token=item["lease_token"])
    assert refused.value.details[0]["path"] == "fetched_at"
    wc.submit(item["id"], {"success": True, "fetched_at": "2026-06-01T00:00:00Z", "synced_users": [
        {"user_id": u, "data": {"email": f"{u}@new"}, "verified": True} for u in (1, 2, 3, 4)]}, agent="a", lease_token=item["lease_token"])
    diff = wc.approve(order_id)["diff"]
    assert [c["user_id"] for c in diff["changes"]] == [3, 4]
    assert diff["skipped_by_policy"] == {"skip_if_newer": 2} and diff["stats"]["unchanged"] == 2
    assert users(db_path, "email")[1] == ("user1@old.example",) and users(db_path, "email")[4] == ("4@new",)
