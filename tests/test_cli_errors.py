"""Bad input through the CLI: the documented exit code, a message naming what was wrong, and the
database unchanged (sha256 of the main file after folding the WAL in, plus a logical dump)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import file_snapshot, make_users, newer_store, result_for_users, run, run_process


SYNC = {"source": "crm", "user_ids": list(range(1, 101)), "fields": ["email", "phone", "company"]}


@pytest.fixture()
def world(tmp_path):
    """A store with one order of two items: item A leased by agent-a, item B still queued."""
    db = tmp_path / "w.db"
    make_users(db, 100)
    order = run(db, "propose", "user.data.sync", "--payload", json.dumps(SYNC), "--idempotency-key", "p1",
                "--json").json
    item = run(db, "checkout", order["order"]["id"], "--agent", "agent-a", "--json").json["item"]
    return {"db": db, "order": order["order"]["id"], "item": item["id"], "users": item["input"]["user_ids"],
            "queued": order["items"][1]["id"], "token": item["lease_token"], "tmp": tmp_path}


def result_json(w, **overrides):
    return json.dumps(result_for_users(w["users"], **overrides))


def synced(w, mutate):
    result = result_for_users(w["users"])
    mutate(result["synced_users"])
    return json.dumps(result)


# (name, argv builder, exit code, error code, words the message must contain)
CASES = [
    ("propose: invalid JSON", lambda w: ["propose", "user.data.sync", "--payload", "{source: crm"], 5,
     "invalid_json", "invalid JSON"),
    ("propose: payload file missing", lambda w: ["propose", "user.data.sync", "--payload", "@/nonexistent.json"], 5,
     "input_unreadable", "/nonexistent.json"),
    ("propose: unknown source", lambda w: ["propose", "user.data.sync", "--payload",
                                           json.dumps({"source": "erp", "user_ids": [1]})], 5,
     "payload_invalid", "source"),
    ("propose: user_ids wrong type", lambda w: ["propose", "user.data.sync", "--payload",
                                                json.dumps({"source": "crm", "user_ids": "1-150"})], 5,
     "payload_invalid", "user_ids"),
    ("propose: missing user_ids", lambda w: ["propose", "user.data.sync", "--payload",
                                             json.dumps({"source": "crm"})], 5, "payload_invalid", "user_ids"),
    ("propose: duplicate user ids", lambda w: ["propose", "user.data.sync", "--payload",
                                               json.dumps({"source": "crm", "user_ids": [1, 1]})], 5,
     "payload_invalid", "non-unique"),
    ("propose: unknown payload key", lambda w: ["propose", "user.data.sync", "--payload",
                                                json.dumps({**SYNC, "is_admin": True})], 5,
     "payload_invalid", "is_admin"),
    ("propose: field not a column", lambda w: ["propose", "user.data.sync", "--payload",
                                               json.dumps({**SYNC, "fields": ["shoe_size"]})], 5,
     "field_not_allowed", "shoe_size"),
    ("propose: password field", lambda w: ["propose", "user.data.sync", "--payload",
                                           json.dumps({**SYNC, "fields": ["email", "password"]})], 5,
     "field_not_allowed", "password"),
    ("propose: is_admin field", lambda w: ["propose", "user.data.sync", "--payload",
                                           json.dumps({**SYNC, "fields": ["is_admin"]})], 5,
     "field_not_allowed", "is_admin"),
    ("propose: id field", lambda w: ["propose", "user.data.sync", "--payload",
                                     json.dumps({**SYNC, "fields": ["id"]})], 5, "field_not_allowed", "'id'"),
    ("propose: SQL in a field name", lambda w: ["propose", "user.data.sync", "--payload",
                                                json.dumps({**SYNC, "fields": ["email = 'x'; DROP TABLE users; --"]})],
     5, "payload_invalid", "fields.0"),
    ("propose: unknown type", lambda w: ["propose", "user.data.nope", "--payload", "{}"], 4, "unknown_type",
     "user.data.nope"),
    ("propose: idempotency key reused", lambda w: ["propose", "user.data.sync", "--idempotency-key", "p1",
                                                   "--payload", json.dumps({**SYNC, "user_ids": [1, 2]})], 6,
     "idempotency_mismatch", "different"),
    ("checkout: unknown order", lambda w: ["checkout", "no-such-order", "--agent", "a"], 4, "order_not_found",
     "no-such-order"),
    ("checkout: unknown type", lambda w: ["checkout", "--type", "no.such.type", "--agent", "a"], 4, "unknown_type",
     "no.such.type"),
    ("heartbeat: unknown item", lambda w: ["heartbeat", "no-such-item", "--agent", "agent-a"], 4, "item_not_found",
     "no-such-item"),
    ("heartbeat: wrong agent", lambda w: ["heartbeat", w["item"], "--agent", "agent-b"], 6, "lease_held_by_other",
     "agent-a"),
    ("heartbeat: item not leased", lambda w: ["heartbeat", w["queued"], "--agent", "agent-a"], 6, "not_leased",
     "queued"),
    ("heartbeat: stale lease token", lambda w: ["heartbeat", w["item"], "--agent", "agent-a", "--lease-token",
                                                "0" * 32], 6, "stale_lease_token", "does not match the current lease"),
    ("release: wrong agent", lambda w: ["release", w["item"], "--agent", "agent-b"], 6, "lease_held_by_other",
     "agent-a"),
    ("submit: unknown item", lambda w: ["submit", "no-such-item", "--agent", "agent-a", "--result", "{}"], 4,
     "item_not_found", "no-such-item"),
    ("submit: invalid JSON result", lambda w: ["submit", w["item"], "--agent", "agent-a", "--result", "[1,"], 5,
     "invalid_json", "invalid JSON"),
    ("submit: result not an object", lambda w: ["submit", w["item"], "--agent", "agent-a", "--result", "[]"], 5,
     "result_invalid", "JSON object"),
    ("submit: users missing", lambda w: ["submit", w["item"], "--agent", "agent-a", "--result",
                                         synced(w, lambda users: users.pop())], 5, "result_invalid", "missing"),
    ("submit: duplicate user", lambda w: ["submit", w["item"], "--agent", "agent-a", "--result",
                                          synced(w, lambda users: users.append(dict(users[0])))], 5,
     "result_invalid", "more than once"),
    ("submit: user outside the batch", lambda w: ["submit", w["item"], "--agent", "agent-a", "--result",
                                                  synced(w, lambda users: users[0].update(user_id=999))], 5,
     "result_invalid", "not in this batch"),
    ("submit: unverified user", lambda w: ["submit", w["item"], "--agent", "agent-a", "--result",
                                           synced(w, lambda users: users[3].update(verified=False))], 5,
     "result_invalid", "synced_users.3.verified"),
    ("submit: field not requested", lambda w: ["submit", w["item"], "--agent", "agent-a", "--result",
                                               synced(w, lambda users: users[0]["data"].update(is_admin=1))], 5,
     "result_invalid", "is_admin"),
    ("submit: nested value", lambda w: ["submit", w["item"], "--agent", "agent-a", "--result",
                                        synced(w, lambda users: users[0]["data"].update(email={"a": 1}))], 5,
     "result_invalid", "synced_users.0.data.email"),
    ("submit: wrong agent", lambda w: ["submit", w["item"], "--agent", "agent-b", "--result", result_json(w)], 6,
     "lease_held_by_other", "agent-a"),
    ("submit: expired lease", lambda w: ["submit", w["item"], "--agent", "agent-a", "--result", result_json(w)],
     6, "lease_expired", "expired"),
    ("submit: item not leased", lambda w: ["submit", w["queued"], "--agent", "agent-a", "--result", "{}"], 6,
     "not_leased", "queued"),
    ("approve: not all items submitted", lambda w: ["approve", w["order"]], 6, "order_not_submitted",
     "0 of 2 items submitted"),
    ("approve: unknown order", lambda w: ["approve", "nope"], 4, "order_not_found", "nope"),
    ("reject: not submitted", lambda w: ["reject", w["order"], "--reason", "bad data"], 6, "order_not_submitted",
     "in_progress"),
    ("reject: blank reason", lambda w: ["reject", w["order"], "--reason", "  "], 5, "reason_required", "reason"),
    ("retry: item not failed", lambda w: ["retry", w["item"]], 6, "not_retryable", "leased"),
    ("retry: order with nothing failed", lambda w: ["retry", "--order", w["order"]], 6, "not_retryable",
     "no failed"),
    ("status: unknown order", lambda w: ["status", "nope"], 4, "order_not_found", "nope"),
    ("show: unknown order", lambda w: ["show", "nope"], 4, "order_not_found", "nope"),
    ("log: unknown order", lambda w: ["log", "nope"], 4, "order_not_found", "nope"),
    ("types show: unknown type", lambda w: ["types", "show", "nope"], 4, "unknown_type", "nope"),
    ("config file missing", lambda w: ["--config", str(w["tmp"] / "missing.toml"), "status"], 5, "config_missing",
     "missing.toml"),
    # A fenced write without a token is refused before anything is read (exit 2, how to pass it).
    ("heartbeat: no lease token", lambda w: ["heartbeat", w["item"], "--agent", "agent-a"], 2,
     "lease_token_required", "WORKCTL_LEASE_TOKEN"),
    ("release: no lease token", lambda w: ["release", w["item"], "--agent", "agent-a"], 2,
     "lease_token_required", "WORKCTL_LEASE_TOKEN"),
    ("submit: no lease token", lambda w: ["submit", w["item"], "--agent", "agent-a", "--result", result_json(w)], 2,
     "lease_token_required", "--lease-token"),
]
FENCED = ("heartbeat", "release", "submit")


def with_token(w, args, name):
    """The fenced commands' cases carry the item's current token unless the case is about the token."""
    if args[0] in FENCED and "--lease-token" not in args and "no lease token" not in name:
        return [*args, "--lease-token", w["token"]]
    return args


@pytest.mark.parametrize("name, argv, exit_code, code, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_changes_nothing(world, name, argv, exit_code, code, words):
    env = {"WORKCTL_NOW": "2099-01-01T00:00:00Z"} if "expired" in name else None
    args = with_token(world, argv(world), name)
    # Global options go before the subcommand; --json goes after it.
    before = file_snapshot(world["db"])
    out = run(world["db"], *args, "--json", env=env)
    assert out.exit_code == exit_code, (out.stdout, out.stderr)
    error = out.json["error"]
    assert error["code"] == code
    assert words in error["message"], error["message"]
    assert out.stderr.startswith("workctl: error: ") and words in out.stderr
    assert file_snapshot(world["db"]) == before


def test_validation_failure_keeps_the_lease_and_lists_every_problem(world):
    bad = result_for_users(world["users"])
    bad["synced_users"][1]["verified"] = False
    bad["synced_users"][2]["user_id"] = 4242
    out = run(world["db"], "submit", world["item"], "--agent", "agent-a", "--result", json.dumps(bad), "--json",
              env={"WORKCTL_LEASE_TOKEN": world["token"]})
    assert out.exit_code == 5
    paths = {d["path"] for d in out.json["error"]["details"]}
    assert {"synced_users.1.verified", "synced_users.2.user_id", "synced_users"} <= paths
    fixed = run(world["db"], "submit", world["item"], "--agent", "agent-a", "--result", result_json(world), "--json",
                env={"WORKCTL_LEASE_TOKEN": world["token"]})
    assert fixed.exit_code == 0, fixed.stderr


def test_approve_twice_is_a_conflict(tmp_path):
    db = tmp_path / "w.db"
    make_users(db, 10)
    order = run(db, "propose", "user.data.sync", "--payload",
                json.dumps({"source": "crm", "user_ids": list(range(1, 11)), "fields": ["email"]}), "--json").json
    item = run(db, "checkout", "--agent", "a", "--json").json["item"]
    result = {"success": True, "synced_users": [{"user_id": u, "data": {"email": f"{u}@x"}, "verified": True}
                                                for u in item["input"]["user_ids"]]}
    assert run(db, "submit", item["id"], "--agent", "a", "--lease-token", item["lease_token"],
               "--result", json.dumps(result)).exit_code == 0
    assert run(db, "approve", order["order"]["id"]).exit_code == 0
    before = file_snapshot(db)
    again = run(db, "approve", order["order"]["id"], "--json")
    assert again.exit_code == 6 and again.json["error"]["code"] == "order_not_submitted"
    assert "'completed'" in again.json["error"]["message"]
    assert file_snapshot(db) == before


def test_corrupt_database_is_refused_untouched(tmp_path):
    db = tmp_path / "corrupt.db"
    db.write_bytes(b"this is not a database, just some bytes" * 200)
    before = db.read_bytes()
    out = run(db, "status", "--json")
    assert out.exit_code == 8 and out.json["error"]["code"] == "store_corrupt"
    assert "not a usable SQLite database" in out.json["error"]["message"]
    assert db.read_bytes() == before
    assert not Path(str(db) + "-wal").exists()


def test_database_from_a_newer_workctl_is_refused_untouched(tmp_path):
    db = newer_store(tmp_path / "future.db")
    before = file_snapshot(db)
    out = run(db, "checkout", "--agent", "a", "--json")
    assert out.exit_code == 8 and out.json["error"]["code"] == "store_too_new"
    assert "newer workctl" in out.json["error"]["message"]
    assert file_snapshot(db) == before


def test_usage_error_is_exit_2_with_one_line_and_what_to_do_next(tmp_path):
    out = run_process(tmp_path / "w.db", "checkout", "--no-such-flag", "--json")
    assert out.exit_code == 2
    assert out.stderr.splitlines() == ["workctl: error: No such option: --no-such-flag",
                                       "workctl: next: see: workctl checkout --help"]
    assert json.loads(out.stdout)["error"]["code"] == "usage"


def test_unexpected_failure_is_exit_1_and_points_at_debug(tmp_path, monkeypatch):
    import workctl.api

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    assert run(tmp_path / "w.db", "init").exit_code == 0
    monkeypatch.setattr(workctl.api.queries, "status", broken)
    out = run(tmp_path / "w.db", "status", "--json")
    assert out.exit_code == 1
    assert out.json["error"]["code"] == "internal_error" and "WORKCTL_DEBUG=1" in out.json["error"]["message"]


def test_ctrl_c_is_exit_130(tmp_path, monkeypatch):
    import workctl.api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    assert run(tmp_path / "w.db", "init").exit_code == 0
    monkeypatch.setattr(workctl.api.queries, "status", interrupted)
    assert run(tmp_path / "w.db", "status").exit_code == 130


def test_new_database_file_is_private(tmp_path):
    db = tmp_path / "fresh.db"
    assert run(db, "init").exit_code == 0
    assert db.stat().st_mode & 0o777 == 0o600
