"""R6 — security: injection, mass assignment, batch confinement, secrets, file modes, webhook signatures.

* SQL injection through every user-controlled name (payload fields, source field_map names and values
  in workctl.toml, the order's field_map, users-table column names, type names, order ids, item ids,
  agent ids, states, source names, idempotency keys, reasons) is refused or inert: afterwards the
  schema, the users table and every workflow table are exactly as expected.
* Mass assignment of ``is_admin``, ``password``, ``role``, ``id`` (and case variants) is refused at
  propose, at submit and through a source's field_map, and the config cannot switch the deny-list off.
* A result may not touch users outside its batch, in any disguise of the user id.
* A sentinel secret never reaches the database files, events, logging, --json or human output or error
  messages, for every auth kind, on success and on every failure path.
* Database files (and their -wal/-shm) are created 0600, even under a permissive umask.
* Webhook signatures verify, and a tampered body, header or secret does not.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


from workctl import Workctl
from workctl.clock import ManualClock
from workctl.config import Config
from workctl.sources.sample_server import Faults, SampleServer
from workctl.types import get_type
from helpers import NOW, figure, file_snapshot, make_users, result_for_item, result_for_users, run, users_rows

NASTY = [
    "x'; DROP TABLE users; --",
    '" OR 1=1 --',
    "1); DELETE FROM items; --",
    "' UNION SELECT password FROM users --",
    "users",
    "*",
]
SYNC = {"source": "crm", "user_ids": list(range(1, 101)), "fields": ["email", "phone", "company"]}


def schema_of(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        conn.close()


def full_users(db: Path) -> dict:
    return users_rows(db, "*")


@pytest.fixture()
def store(tmp_path, monkeypatch):
    """A store holding 150 users, one sync order with item A leased by agent-a (token) and one queued."""
    monkeypatch.setenv("WORKCTL_NOW", NOW)
    db = tmp_path / "w.db"
    make_users(db, 150)
    order = run(db, "propose", "user.data.sync", "--payload", json.dumps(SYNC), "--json").json
    item = run(db, "checkout", order["order"]["id"], "--agent", "agent-a", "--json").json["item"]
    return {"db": db, "tmp": tmp_path, "order": order["order"]["id"], "item": item["id"], "token": item["lease_token"],
            "users": item["input"]["user_ids"]}


# -- SQL injection -----------------------------------------------------------------------------------------
def injection_cases(s, nasty):
    """(argv, expected exit code, expected machine code or None for 'inert, succeeds')."""
    sync_url = {"WORKCTL_SOURCE_CRM_URL": "http://127.0.0.1:9/crm"}
    # a source name that is a plain word is merely not configured; anything else is not a name at all
    source_code = "source_not_configured" if re.match(r"^[A-Za-z][A-Za-z0-9_-]*$", nasty) else "source_invalid"
    return [
        (["propose", "user.data.sync", "--payload", json.dumps({**SYNC, "fields": [nasty]})], 5,
         "field_not_allowed" if nasty.isidentifier() else "payload_invalid", None),
        (["propose", "user.data.sync", "--payload", json.dumps({**SYNC, "fields": ["email", nasty]})], 5,
         "field_not_allowed" if nasty.isidentifier() else "payload_invalid", None),
        (["propose", nasty, "--payload", "{}"], 4, "unknown_type", None),
        (["types", "show", nasty], 4, "unknown_type", None),
        (["checkout", "--type", nasty, "--agent", "b"], 4, "unknown_type", None),
        (["checkout", nasty, "--agent", "b"], 4, "order_not_found", None),
        (["status", nasty], 4, "order_not_found", None),
        (["show", nasty], 4, "order_not_found", None),
        (["log", nasty], 4, "order_not_found", None),
        (["approve", nasty], 4, "order_not_found", None),
        (["reject", nasty, "--reason", nasty], 4, "order_not_found", None),
        (["retry", "--order", nasty], 4, "order_not_found", None),
        (["sync", nasty], 4, "order_not_found", sync_url),
        (["run", nasty, "--exec", "cat"], 4, "order_not_found", None),
        (["heartbeat", nasty, "--agent", "agent-a", "--lease-token", s["token"]], 4, "item_not_found", None),
        (["release", nasty, "--agent", "agent-a", "--lease-token", s["token"]], 4, "item_not_found", None),
        (["submit", nasty, "--agent", "agent-a", "--lease-token", s["token"], "--result", "{}"], 4,
         "item_not_found", None),
        (["retry", nasty], 4, "item_not_found", None),
        # agent ids and tokens are only ever compared: the holder's item refuses them
        (["heartbeat", s["item"], "--agent", nasty, "--lease-token", s["token"]], 6, "lease_held_by_other", None),
        (["submit", s["item"], "--agent", nasty, "--lease-token", s["token"],
          "--result", json.dumps(result_for_users(s["users"]))], 6,
         "lease_held_by_other", None),
        (["submit", s["item"], "--agent", "agent-a", "--lease-token", nasty, "--result",
          json.dumps(result_for_users(s["users"]))], 6, "stale_lease_token", None),
        (["release", s["item"], "--agent", "agent-a", "--lease-token", nasty], 6, "stale_lease_token", None),
        (["sources", "check", nasty], 5, source_code, None),
        (["sync", "--source", nasty, "--users", "1-3"], 5, source_code, None),
        (["sync", "--source", "crm", "--users", "1-3", "--fields", nasty], 5,
         "field_not_allowed" if nasty.isidentifier() else "payload_invalid", sync_url),
        # filters are checked against their valid values (exit 2, listing them) and never become SQL
        (["orders", "--state", nasty], 2, "invalid_choice", None),
        (["orders", "--type", nasty], 2, "invalid_choice", None),
        (["failures", "--source", nasty], 2, "invalid_choice", None),
        (["failures", "--class", nasty], 2, "invalid_choice", None),
    ]


@pytest.mark.parametrize("nasty", NASTY)
def test_sql_injection_through_every_name_is_refused_or_inert(store, nasty):
    db = store["db"]
    schema, users, before = schema_of(db), full_users(db), file_snapshot(db)
    cases = injection_cases(store, nasty)
    for argv, exit_code, code, env in cases:
        out = run(db, *argv, "--json", env=env)
        assert out.exit_code == exit_code, (argv, out.stdout, out.stderr)
        if code:
            assert out.json["error"]["code"] == code, (argv, out.json)
        else:
            assert out.json == {"orders": [], "more": 0}
    assert schema_of(db) == schema and full_users(db) == users and file_snapshot(db) == before


def test_injection_in_an_agent_id_a_reason_and_a_key_is_stored_as_text(store):
    """Where a name is written, it is written literally (a bound parameter), and works as a name."""
    db, nasty = store["db"], NASTY[0]
    schema, users = schema_of(db), full_users(db)
    leased = run(db, "checkout", store["order"], "--agent", nasty, "--json").json["item"]
    result = json.dumps(result_for_users(leased["input"]["user_ids"]))
    done = run(db, "submit", leased["id"], "--agent", nasty, "--lease-token", leased["lease_token"], "--result", result,
               "--idempotency-key", nasty, "--json")
    assert done.exit_code == 0, done.stderr
    replay = run(db, "submit", leased["id"], "--agent", nasty, "--lease-token", leased["lease_token"], "--result", result, "--idempotency-key", nasty, "--json")
    assert replay.exit_code == 0 and replay.json == done.json
    with Workctl(db, config=Config()) as wc:
        shown = wc.show(store["order"])
        assert shown["items"][1]["submitted_by"] == nasty
        trail = wc.log(store["order"])
    assert any(e["actor_id"] == nasty and e["event"] == "submitted" for e in trail)
    assert schema_of(db) == schema and full_users(db) == users


def test_nasty_column_names_in_the_users_table_are_never_syncable(tmp_path):
    db = tmp_path / "w.db"
    conn = sqlite3.connect(db)
    conn.execute('CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, "email""; DROP TABLE users; --" TEXT, '
                 '"a b" TEXT, "x) --" TEXT)')
    conn.executemany("INSERT INTO users (id) VALUES (?)", [(i,) for i in range(1, 11)])
    conn.commit()
    conn.close()
    for field in ['email"; DROP TABLE users; --', "a b", "x) --"]:
        out = run(db, "propose", "user.data.sync", "--payload",
                  json.dumps({"source": "crm", "user_ids": [1], "fields": [field]}), "--json")
        assert out.exit_code == 5 and out.json["error"]["code"] == "payload_invalid", out.stdout
    # the default fields never pick such a column either, and the error lists only safe names
    out = run(db, "propose", "user.data.sync", "--payload",
              json.dumps({"source": "crm", "user_ids": [1], "fields": ["phone"]}), "--json")
    assert out.json["error"]["code"] == "field_not_allowed"
    assert "allowed: email)" in out.json["error"]["message"]


def test_field_map_names_and_values_from_the_config(tmp_path, monkeypatch):
    """field_map values (local columns) must be identifiers; its keys (external names) only ever look
    up keys of a fetched record. A SQL-shaped key is inert, a SQL-shaped value refused."""
    with SampleServer() as server:
        db = tmp_path / "w.db"
        make_users(db, 20)
        assert run(db, "init").exit_code == 0  # create the store's own tables first
        users = full_users(db)
        schema = schema_of(db)
        bad = tmp_path / "bad.toml"
        bad.write_text(f'[sources.crm]\nbase_url = "{server.url}/crm"\n'
                       'field_map = { email = "email\\"; DROP TABLE users; --" }\n')
        for argv in (["sources", "check", "crm"], ["sync", "--source", "crm", "--users", "1-20", "--fields", "email"]):
            out = run(db, "--config", str(bad), *argv, "--json")
            assert out.exit_code == 5 and out.json["error"]["code"] == "source_invalid", out.stdout
        inert = tmp_path / "inert.toml"
        inert.write_text(f'[sources.crm]\nbase_url = "{server.url}/crm"\n'
                         'field_map = { "x\'; DROP TABLE users; --" = "phone", "is_admin" = "company" }\n')
        out = run(db, "--config", str(inert), "sync", "--source", "crm", "--users", "1-20", "--fields", "email",
                  "--approve", "--json")
        assert out.exit_code == 0, out.stderr
    now = schema_of(db)
    assert set(schema) <= set(now)  # nothing dropped or altered (approve adds only its marker table)
    assert [t for t in now if t[1] == "users"] == [t for t in schema if t[1] == "users"]
    after = full_users(db)
    changed = {uid for uid in after if after[uid] != users[uid]}
    assert changed == set(range(1, 21))
    conn = sqlite3.connect(db)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(users)")]
    conn.close()
    email = columns.index("email")  # users_rows(db, "*") rows start with the id column again
    for uid, row in after.items():  # only the requested field moved
        assert [c for c, (old, new) in enumerate(zip(users[uid], row, strict=True)) if old != new] == [email]


# -- mass assignment ---------------------------------------------------------------------------------------
PROTECTED = ["is_admin", "password", "role", "id", "IS_ADMIN", "Role", "password_hash", "api_token", "isAdmin"]


@pytest.fixture()
def privileged(tmp_path):
    db = tmp_path / "w.db"
    conn = sqlite3.connect(db)
    conn.execute('CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, phone TEXT, company TEXT, is_admin INTEGER, '
                 'password TEXT, role TEXT, "IS_ADMIN2" TEXT, "Role2" TEXT, password_hash TEXT, api_token TEXT, '
                 '"isAdmin" TEXT)')
    conn.executemany("INSERT INTO users (id, email, is_admin, password, role) VALUES (?, ?, 0, 'hash', 'member')",
                     [(i, f"u{i}@old") for i in range(1, 101)])
    conn.commit()
    conn.close()
    return db


@pytest.mark.parametrize("field", PROTECTED)
def test_mass_assignment_is_refused_at_propose(privileged, field):
    users = full_users(privileged)
    out = run(privileged, "propose", "user.data.sync", "--payload",
              json.dumps({"source": "crm", "user_ids": [1, 2], "fields": ["email", field]}), "--json")
    assert out.exit_code == 5 and out.json["error"]["code"] == "field_not_allowed", out.stdout
    assert field in out.json["error"]["message"]
    assert full_users(privileged) == users
    assert run(privileged, "orders", "--json").json == {"orders": [], "more": 0}  # nothing was proposed


@pytest.mark.parametrize("deny", ["[]", '["email"]'])
def test_the_config_cannot_switch_the_deny_list_off(privileged, tmp_path, deny):
    config = tmp_path / "workctl.toml"
    config.write_text(f'[types."user.data.sync"]\ndeny_fields = {deny}\n')
    for field in ("is_admin", "password", "role"):
        out = run(privileged, "--config", str(config), "propose", "user.data.sync", "--payload",
                  json.dumps({"source": "crm", "user_ids": [1], "fields": [field]}), "--json")
        assert out.json["error"]["code"] == "field_not_allowed", (deny, field, out.stdout)


def test_the_order_field_map_cannot_target_a_protected_column(privileged):
    if "field_map" not in get_type("user.data.sync").schema["properties"]:
        pytest.skip("this build has no order-level field_map")
    for target in ("is_admin", "password", "role", "id"):
        out = run(privileged, "propose", "user.data.sync", "--payload",
                  json.dumps({"source": "crm", "user_ids": [1], "fields": ["email"],
                              "field_map": {"email_address": "email", "admin_flag": target}}), "--json")
        assert out.exit_code == 5 and out.json["error"]["code"] == "field_not_allowed", (target, out.stdout)


def test_mass_assignment_is_refused_at_submit_and_apply(privileged, tmp_path):
    """A result carrying protected columns is refused; a column denied after propose is refused at
    approve, and nothing is written."""
    with Workctl(privileged, config=Config(), clock=ManualClock(NOW)) as wc:
        order = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, 51)), "fields": ["email"]})
        item = wc.checkout(agent="a")["item"]
        for extra in ({"is_admin": 1}, {"password": "x"}, {"role": "admin"}, {"id": 999}):
            bad = result_for_item(item["input"])
            bad["synced_users"][0]["data"].update(extra)
            with pytest.raises(Exception) as info:
                wc.submit(item["id"], bad, agent="a", lease_token=item["lease_token"])
            assert info.value.code == "result_invalid" and next(iter(extra)) in info.value.message
        wc.submit(item["id"], result_for_item(item["input"]), agent="a", lease_token=item["lease_token"])
    users = full_users(privileged)
    with Workctl(privileged, config=Config(types={"user.data.sync": {"deny_fields": ["email"]}}),
                 clock=ManualClock(NOW)) as wc:
        with pytest.raises(Exception) as info:
            wc.approve(order["order"]["id"])
        assert info.value.code == "field_not_allowed"
        assert wc.show(order["order"]["id"])["order"]["state"] == "submitted"
    assert full_users(privileged) == users


def test_a_source_cannot_smuggle_protected_columns_through_its_field_map(privileged, tmp_path):
    """The source maps its fields onto is_admin and role: only the order's fields are ever taken from a
    record, so those users fail verification and nothing protected is written."""
    with SampleServer() as server:
        config = Config(raw={"sources": {"crm": {"base_url": f"{server.url}/crm",
                                                 "field_map": {"company": "is_admin", "name": "role",
                                                               "phone": "email"}}}})
        with Workctl(privileged, config=config, clock=ManualClock(NOW)) as wc:
            order_id = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, 21)),
                                                     "fields": ["email"], "min_success_ratio": 0})["order"]["id"]
            from workctl.agents.sync import SyncOptions
            report = wc.sync(SyncOptions(order_id=order_id, agent="s", approve=True))
    assert report["items"]["submitted"] == 1
    rows = sqlite3.connect(privileged).execute("SELECT id, email, is_admin, password, role FROM users "
                                               "WHERE id <= 20").fetchall()
    for uid, email, is_admin, password, role in rows:
        assert (is_admin, password, role) == (0, "hash", "member"), uid
        assert email.startswith("+1-555-")  # the mapped phone landed in the one requested field


# -- a result stays inside its batch ----------------------------------------------------------------------
@pytest.mark.parametrize("disguise", [51, 150, 101, 0, -1, "1", 1.0, True, None, 2**63])
def test_a_result_cannot_touch_a_user_outside_its_batch(store, disguise):
    """Item A covers users 1-50. Another batch's user (51), a user of no order (101-150), and ids that
    only look like batch users (string, float, bool) are all refused; nothing changes."""
    db = store["db"]
    before, users = file_snapshot(db), full_users(db)
    bad = result_for_users(store["users"])
    bad["synced_users"][0]["user_id"] = disguise
    out = run(db, "submit", store["item"], "--agent", "agent-a", "--lease-token", store["token"], "--result",
              json.dumps(bad), "--json")
    # beyond 64 bits it is refused as it is read; every other disguise by the result's checks
    code = "invalid_json" if disguise == 2**63 else "result_invalid"
    assert out.exit_code == 5 and out.json["error"]["code"] == code, out.stdout
    assert any(d["path"] == "synced_users.0.user_id" for d in out.json["error"]["details"])
    assert file_snapshot(db) == before and full_users(db) == users


def test_an_approved_order_writes_only_its_own_synced_users(tmp_path):
    """Users 1-100 in two batches, user 5 failed: exactly users 1-100 except 5 change; 101-150 do not."""
    db = tmp_path / "w.db"
    make_users(db, 150)
    users = full_users(db)
    with Workctl(db, config=Config(), clock=ManualClock(NOW)) as wc:
        order_id = wc.propose("user.data.sync", {**SYNC, "min_success_ratio": 0.9})["order"]["id"]
        for agent in ("a", "b"):
            item = wc.checkout(agent=agent)["item"]
            result = result_for_users(item["input"]["user_ids"])
            if 5 in item["input"]["user_ids"]:
                result["synced_users"] = [u for u in result["synced_users"] if u["user_id"] != 5]
                result["failed_users"] = [{"user_id": 5, "error": "not found"}]
            wc.submit(item["id"], result, agent=agent, lease_token=item["lease_token"])
        wc.approve(order_id)
    after = full_users(db)
    assert {uid for uid in after if after[uid] != users[uid]} == set(range(1, 101)) - {5}
    assert all(after[uid] == users[uid] for uid in range(101, 151))


# -- secrets ---------------------------------------------------------------------------------------------
SENTINEL = "sntl-3f9a1c7e5b2d4086-SECRET"
USERNAME = "sntl-user-7c1d"


def auth_config(kind: str, url: str, extra: str = "") -> str:
    lines = [f'[sources.crm]\nbase_url = "{url}"\nauth = "{kind}"\ntoken_env = "WORKCTL_SENTINEL_TOKEN"\n']
    if kind == "basic":
        lines.append('username_env = "WORKCTL_SENTINEL_USER"\n')
    if kind == "header":
        lines.append('auth_header = "X-Api-Key"\n')
    if kind == "query":
        lines.append('auth_param = "api_key"\n')
    return "".join(lines) + extra


@pytest.mark.parametrize("kind", ["bearer", "header", "query", "basic"])
def test_a_sentinel_secret_never_leaves_the_environment(tmp_path, monkeypatch, caplog, kind):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("WORKCTL_SENTINEL_TOKEN", SENTINEL)
    monkeypatch.setenv("WORKCTL_SENTINEL_USER", USERNAME)
    monkeypatch.setenv("WORKCTL_NOW", NOW)
    db = tmp_path / "w.db"
    make_users(db, 120)
    outputs = []
    # a server that requires the bearer sentinel: other auth kinds get 401s (an auth failure path)
    faults = Faults(token=SENTINEL if kind == "bearer" else None, missing=frozenset({7}), fail_rate=0.2,
                    malformed_rate=0.1, drop_rate=0.1, seed=4)
    with SampleServer(faults=faults) as server:
        config = tmp_path / "workctl.toml"
        config.write_text(auth_config(kind, f"{server.url}/crm", "max_attempts = 2\nbackoff_base = 0\n"
                                                               'bulk_path = ""\n'))
        cfg = ["--config", str(config)]
        payload = json.dumps({"source": "crm", "user_ids": list(range(1, 121)), "fields": ["email", "phone"],
                              "min_success_ratio": 0.5, "batch_size": 40})
        outputs.append(run(db, *cfg, "propose", "user.data.sync", "--payload", payload, "--json"))
        order_id = outputs[-1].json["order"]["id"]
        outputs.append(run(db, *cfg, "sync", order_id, "--json"))
        outputs.append(run(db, *cfg, "sync", order_id))
        for args in (["sources", "list", "--json"], ["sources", "list"], ["sources", "check", "crm", "--json"],
                     ["sources", "check", "crm"], ["status", order_id, "--json"], ["show", order_id, "--json"],
                     ["log", order_id, "--json"], ["orders", "--json"], ["status"]):
            outputs.append(run(db, *cfg, *args))
        seen = [json.dumps([e.get("auth"), e.get("headers")]) for e in server.log.entries]
        paths = [e["path"] for e in server.log.entries]
    assert outputs[1].json["requests"] > 0
    # it was really sent, in the way the auth kind says
    if kind == "query":
        assert any(SENTINEL in p for p in paths)
    elif kind != "basic":
        assert any(SENTINEL in s for s in seen)
    # the unreachable source: connection errors, with the secret in the URL for query auth
    (tmp_path / "down.toml").write_text(auth_config(kind, "http://127.0.0.1:9/crm", "max_attempts = 1\n"))
    outputs.append(run(db, "--config", str(tmp_path / "down.toml"), "sources", "check", "crm", "--json"))
    outputs.append(run(db, "--config", str(tmp_path / "down.toml"), "sync", "--source", "crm", "--users", "1-5",
                       "--fields", "email", "--json"))
    outputs.append(run(db, "--config", str(tmp_path / "down.toml"), "sync", "--source", "crm", "--users", "1-5",
                       "--fields", "email"))
    assert outputs[-2].exit_code == 7 and outputs[-2].json["failed_users"]
    for out in outputs:
        assert SENTINEL not in out.stdout and SENTINEL not in out.stderr, out.stdout[:500]
        assert USERNAME not in out.stdout and USERNAME not in out.stderr
    for record in caplog.records:
        assert SENTINEL not in record.getMessage() and USERNAME not in record.getMessage()
    for path in tmp_path.iterdir():  # store, its WAL before any checkpoint, configs
        if path.is_file():
            assert SENTINEL.encode() not in path.read_bytes(), path
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    dump = "\n".join(conn.iterdump())
    conn.close()
    assert SENTINEL not in dump and USERNAME not in dump
    assert SENTINEL.encode() not in db.read_bytes()


def test_a_secret_in_an_error_message_is_redacted(tmp_path, monkeypatch):
    """The source answers with the secret echoed in a redirect target: errors are redacted."""
    monkeypatch.setenv("WORKCTL_SENTINEL_TOKEN", SENTINEL)

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = f"bad key {SENTINEL}".encode()
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:9/?key={SENTINEL}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / "w.toml").write_text(auth_config("query", f"http://127.0.0.1:{server.server_address[1]}/crm",
                                                     "max_attempts = 2\nbackoff_base = 0\n"))
        db = tmp_path / "w.db"
        make_users(db, 3)
        out = run(db, "--config", str(tmp_path / "w.toml"), "sync", "--source", "crm", "--users", "1-3", "--fields",
                  "email", "--json")
        check = run(db, "--config", str(tmp_path / "w.toml"), "sources", "check", "crm", "--json")
    finally:
        server.shutdown()
        server.server_close()
    assert out.json["failed_users"], out.stdout
    for text in (out.stdout, out.stderr, check.stdout, check.stderr):
        assert SENTINEL not in text
    conn = sqlite3.connect(db)
    assert SENTINEL not in "\n".join(conn.iterdump())
    conn.close()


# -- file modes ------------------------------------------------------------------------------------------
def test_store_files_are_private_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        cli_db = tmp_path / "cli.db"
        assert run(cli_db, "propose", "task.batch", "--payload", '{"tasks": [1]}').exit_code == 0
        lib_db = tmp_path / "lib.db"
        with Workctl(lib_db, config=Config()) as wc:
            wc.propose("task.batch", {"tasks": [1]})
            wc.checkout(agent="a")
            modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir() if p.is_file()}
    finally:
        os.umask(old)
    assert {name for name in modes} >= {"lib.db", "lib.db-wal", "lib.db-shm"}
    assert all(mode == "0o600" for mode in modes.values()), modes


# -- webhook signatures ----------------------------------------------------------------------------------
def test_webhook_signatures_verify_and_tampering_does_not(tmp_path, monkeypatch):
    webhooks = pytest.importorskip("workctl.core.outbox")
    secret = "whsec-sntl-5e6f"
    monkeypatch.setenv("WORKCTL_TEST_WEBHOOK_SECRET", secret)
    received: list[tuple[bytes, dict]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, dict(self.headers.items())))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        db = tmp_path / "w.db"
        make_users(db, 10, filled=True)
        config = tmp_path / "workctl.toml"
        config.write_text(f'[[webhooks]]\nurl = "http://127.0.0.1:{server.server_address[1]}/hook"\n'
                          'secret_env = "WORKCTL_TEST_WEBHOOK_SECRET"\n')
        from workctl.config import load_config
        with Workctl(db, config=load_config(str(config)), clock=ManualClock(NOW)) as wc:
            order_id = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, 11)),
                                                     "fields": ["email"]})["order"]["id"]
            item = wc.checkout(agent="a")["item"]
            wc.submit(item["id"], result_for_item(item["input"]), agent="a", lease_token=item["lease_token"])
            wc.approve(order_id)
            if not received:
                wc.maintain()
    finally:
        server.shutdown()
        server.server_close()
    assert received, "no webhook was delivered"
    body, headers = received[0]
    headers = {k.lower(): v for k, v in headers.items()}
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    signature = headers["webhook-signature"]
    assert signature == expected and webhooks.verify(secret, headers, body)
    tampered = body.replace(b"order", b"ORDER", 1)
    assert tampered != body and not webhooks.verify(secret, headers, tampered)
    assert not webhooks.verify("another-secret", headers, body)
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert not webhooks.verify(secret, {**headers, "webhook-signature": flipped}, body)
    assert not webhooks.verify(secret, {**headers, "webhook-signature": ""}, body)
    assert not webhooks.verify(secret, {k: v for k, v in headers.items() if k != "webhook-signature"}, body)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert secret not in "\n".join(conn.iterdump())
    conn.close()
    figure("R6-webhooks", delivered=len(received), verified=True)


@pytest.mark.parametrize("content", [b"1 2 3 password=hunter2-SECRET\n", b"\xff\xfehunter2-SECRET",
                                     b"1,2,hunter2-SECRET," + b"9" * 40])
def test_users_from_a_file_never_echo_the_files_content(tmp_path, monkeypatch, content):
    """`sync --users @file` on a file that is not an id list: exit 5 naming the file and where, never what
    it holds (it may be any file: a .env, a key)."""
    db = tmp_path / "w.db"
    make_users(db, 5)
    assert run(db, "init").exit_code == 0
    ids = tmp_path / "ids.txt"
    ids.write_bytes(content)
    monkeypatch.setenv("WORKCTL_SOURCE_CRM_URL", "http://127.0.0.1:9/crm")
    before = file_snapshot(db)
    out = run(db, "sync", "--source", "crm", "--users", f"@{ids}", "--json")
    assert out.exit_code == 5, out.stderr
    assert "ids.txt" in out.stderr and out.json["error"]["code"] in ("invalid_users", "invalid_json")
    assert "hunter2" not in out.stdout + out.stderr and "9" * 40 not in out.stdout + out.stderr
    assert file_snapshot(db) == before


def test_the_lease_token_of_run_exec_is_never_on_a_command_line(tmp_path):
    """`run --exec` hands the lease token to its command in WORKCTL_LEASE_TOKEN (the documented path,
    CLI.md: "prefer the variable: it does not show in ps"), never as an argument: while the command runs,
    no process's command line (what `ps` shows) holds it."""
    import subprocess
    import sys

    db = tmp_path / "w.db"
    assert run(db, "propose", "task.batch", "--payload", '{"tasks": [1]}').exit_code == 0
    seen, argv_dump = tmp_path / "token.txt", tmp_path / "cmdlines.bin"
    script = (f'printf %s "$WORKCTL_LEASE_TOKEN" > {seen}; cat /proc/[0-9]*/cmdline > {argv_dump} 2>/dev/null; '
              "echo '{}'")
    env = {**os.environ, "WORKCTL_LOAD_PLUGINS": "0"}
    env.pop("WORKCTL_LEASE_TOKEN", None)
    done = subprocess.run([sys.executable, "-m", "workctl", "--db", str(db), "run", "--exec", script, "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    token = seen.read_text()
    assert len(token) >= 16
    assert token.encode() not in argv_dump.read_bytes()
    assert b"workctl" in argv_dump.read_bytes()  # the dump did see the running processes, run included
