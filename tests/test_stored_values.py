"""What approve writes is what the target column stores (issue 11), through the CLI: values compared as
their column stores them (no phantom changes, no provenance rows, no notifications for them), TEXT and
INTEGER ids, a users view or a table without a unique id refused at propose, and the target's own
refusals reported as ``apply_refused`` naming user, field and constraint with nothing applied.

Every case checks the users table row by row (values and SQLite storage classes), the provenance rows
and the order's state.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from helpers import count, order_state, propose_sync, query, run, sql, work_order

NOW = "2026-03-01T00:00:00Z"
ENV = {"WORKCTL_NOW": NOW}


def typed_rows(db: Path, columns: str) -> list[tuple[Any, ...]]:
    """Every users row with each column's value and its storage class (typeof)."""
    names = [c.strip() for c in columns.split(",")]
    select = ", ".join(f"{n}, typeof({n})" for n in names)
    return query(db, f"SELECT id, {select} FROM users ORDER BY id")


# -- values compared as the column stores them ----------------------------------------------------------
TYPED = ("CREATE TABLE users (id INTEGER PRIMARY KEY, code TEXT, score INTEGER, ratio REAL, amount NUMERIC, "
         "misc, label VARCHAR(20))")


@pytest.fixture
def typed_db(tmp_path: Path) -> Path:
    db = tmp_path / "w.db"
    sql(db, TYPED, "INSERT INTO users VALUES (1, '49', 7, 1.5, 10, 'x', 'a'), (2, '0049', 8, 2.0, 10.5, 3, NULL)")
    return db


SAME = {1: {"code": 49, "score": "7", "ratio": 1.5, "amount": "10", "misc": "x", "label": "a"},
        2: {"code": "0049", "score": 8.0, "ratio": 2, "amount": 10.5, "misc": 3, "label": None}}


def test_a_value_the_column_already_holds_is_no_change_no_write_no_provenance_no_notification(typed_db, tmp_path):
    """TEXT '49' synced with 49, INTEGER 7 with '7' or 8.0, REAL 2.0 with 2, NUMERIC 10 with '10': the same
    stored value, three times over: nothing is written, recorded or announced."""
    config = tmp_path / "workctl.toml"
    config.write_text('[[webhooks]]\nname = "cache"\nurl = "http://127.0.0.1:9/hook"\n'
                      'events = ["order.applied", "user.updated"]\n')
    cfg = ("--config", str(config))
    before = typed_rows(typed_db, "code, score, ratio, amount, misc, label")
    fields = ["code", "score", "ratio", "amount", "misc", "label"]
    for _ in range(3):
        order_id = propose_sync(typed_db, {"source": "crm", "user_ids": [1, 2], "fields": fields}, *cfg, env=ENV)
        assert all(r.exit_code == 0 for r in work_order(typed_db, order_id, SAME, *cfg, env=ENV))
        dry = run(typed_db, *cfg, "approve", order_id, "--dry-run", "--json", env=ENV).json["diff"]
        approved = run(typed_db, *cfg, "approve", order_id, "--json", env=ENV)
        assert approved.exit_code == 0, approved.stderr
        diff = approved.json["diff"]
        assert diff == dry
        assert diff["changes"] == [] and diff["stats"]["updated"] == 0 and diff["stats"]["unchanged"] == 2
        assert diff["summary"] == "Synced data for 0 users from crm"
    assert typed_rows(typed_db, "code, score, ratio, amount, misc, label") == before
    assert count(typed_db, "SELECT count(*) FROM provenance") == 0
    # The order-level notification stays (the order was applied); no user.updated for an unchanged user.
    assert query(typed_db, "SELECT event, count(*) FROM outbox GROUP BY event") == [("order.applied", 3)]


def test_a_real_change_is_reported_and_recorded_as_the_column_stores_it(typed_db):
    order_id = propose_sync(typed_db, {"source": "crm", "user_ids": [1, 2], "fields": ["code", "score", "ratio"]},
                            env=ENV)
    work_order(typed_db, order_id, {1: {"code": 50, "score": "9", "ratio": 3},
                                    2: {"code": "0049", "score": 8, "ratio": 2.0}}, env=ENV)
    approved = run(typed_db, "approve", order_id, "--json", env=ENV)
    assert approved.exit_code == 0, approved.stderr
    assert approved.json["diff"]["changes"] == [
        {"user_id": 1, "field": "code", "old": "49", "new": "50"},     # 50 into TEXT is '50'
        {"user_id": 1, "field": "ratio", "old": 1.5, "new": 3.0},      # 3 into REAL is 3.0
        {"user_id": 1, "field": "score", "old": 7, "new": 9},          # '9' into INTEGER is 9
    ]
    assert typed_rows(typed_db, "code, score, ratio") == [
        (1, "50", "text", 9, "integer", 3.0, "real"), (2, "0049", "text", 8, "integer", 2.0, "real")]
    assert query(typed_db, "SELECT user_id, field, old, new FROM provenance ORDER BY id") == [
        (1, "code", '"49"', '"50"'), (1, "ratio", "1.5", "3.0"), (1, "score", "7", "9")]
    # Synced again with the same values in other spellings: nothing more.
    again = propose_sync(typed_db, {"source": "crm", "user_ids": [1], "fields": ["code", "score", "ratio"]}, env=ENV)
    work_order(typed_db, again, {1: {"code": "50", "score": 9.0, "ratio": "3"}}, env=ENV)
    assert run(typed_db, "approve", again, "--json", env=ENV).json["diff"]["changes"] == []
    assert count(typed_db, "SELECT count(*) FROM provenance") == 3


# -- ids -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("id_type", ["TEXT", "INTEGER"])
def test_text_and_integer_primary_keys_both_work(tmp_path, id_type):
    db = tmp_path / "w.db"
    sql(db, f"CREATE TABLE users (id {id_type} PRIMARY KEY, email TEXT)",
        "INSERT INTO users VALUES ('1', 'a'), ('2', 'b'), ('10', 'c')")
    order_id = propose_sync(db, {"source": "crm", "user_ids": [1, 2, 10, 11], "fields": ["email"]}, env=ENV)
    work_order(db, order_id, {u: {"email": f"{u}@new"} for u in (1, 2, 10, 11)}, env=ENV)
    approved = run(db, "approve", order_id, "--json", env=ENV)
    assert approved.exit_code == 0, approved.stderr
    stats = approved.json["diff"]["stats"]
    assert (stats["updated"], stats["missing_locally"]) == (3, 1)
    assert approved.json["diff"]["missing_user_ids"] == [11]
    stored = "text" if id_type == "TEXT" else "integer"
    spelled = int if stored == "integer" else str
    assert query(db, "SELECT id, typeof(id), email FROM users ORDER BY CAST(id AS INTEGER)") == [
        (spelled(1), stored, "1@new"), (spelled(2), stored, "2@new"), (spelled(10), stored, "10@new")]
    assert query(db, "SELECT user_id, typeof(user_id), new FROM provenance ORDER BY id") == [
        (1, "integer", '"1@new"'), (2, "integer", '"2@new"'), (10, "integer", '"10@new"')]
    # --users all reads the TEXT ids as the integers they spell.
    assert run(db, "why", "10", "email", "--json").json["fields"]["email"]["current"] == "10@new"


@pytest.mark.parametrize("schema, message", [
    ("CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT); CREATE VIEW users AS SELECT * FROM people",
     "is a view"),
    ("CREATE TABLE users (user_id INTEGER PRIMARY KEY, email TEXT)", "has no 'id' column"),
    ("CREATE TABLE users (id INTEGER, email TEXT)", "neither the primary key nor UNIQUE"),
], ids=["view", "no-id", "id-not-unique"])
def test_a_users_view_or_a_table_without_a_unique_id_is_refused_at_propose(tmp_path, schema, message):
    db = tmp_path / "w.db"
    conn = sqlite3.connect(db)
    conn.executescript(schema)
    conn.close()
    refused = run(db, "propose", "user.data.sync", "--payload",
                  json.dumps({"source": "crm", "user_ids": [1], "fields": ["email"]}), "--json")
    assert refused.exit_code == 5, refused.stderr
    assert refused.json["error"]["code"] == "target_unsupported" and message in refused.json["error"]["message"]
    assert count(db, "SELECT count(*) FROM orders") == 0


def test_a_unique_index_on_id_is_enough(tmp_path):
    db = tmp_path / "w.db"
    sql(db, "CREATE TABLE users (id INTEGER, email TEXT)", "CREATE UNIQUE INDEX users_id ON users(id)",
        "INSERT INTO users VALUES (1, 'a')")
    order_id = propose_sync(db, {"source": "crm", "user_ids": [1], "fields": ["email"]})
    work_order(db, order_id, {1: {"email": "new"}})
    assert run(db, "approve", order_id).exit_code == 0
    assert query(db, "SELECT id, email FROM users") == [(1, "new")]


# -- the target's refusals ---------------------------------------------------------------------------------
REFUSING = [
    ("unique", ["CREATE UNIQUE INDEX users_email ON users(email)"], {2: {"email": "c", "score": 5}},
     2, "email", "UNIQUE constraint failed: users.email"),
    ("check", ["CREATE TABLE t (x)"], {2: {"email": "b", "score": -5}}, 2, "score", "CHECK constraint failed"),
    ("trigger", ["CREATE TRIGGER no_robots BEFORE UPDATE OF email ON users WHEN NEW.email LIKE '%robot%' "
                 "BEGIN SELECT RAISE(ABORT, 'robots are not users'); END"],
     {2: {"email": "robot@x", "score": 2}}, 2, "email", "robots are not users"),
    ("trigger-ignore", ["CREATE TRIGGER quietly BEFORE UPDATE OF score ON users WHEN NEW.score = 99 "
                        "BEGIN SELECT RAISE(IGNORE); END"],
     {2: {"email": "b", "score": 99}}, 2, "score", "RAISE(IGNORE)"),
    ("not-null", [], {2: {"email": None, "score": 2}}, 2, "email", "NOT NULL constraint failed: users.email"),
]


def _refusing_users(db: Path, strict: bool = False) -> None:
    sql(db, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL, score INTEGER CHECK (score >= 0))"
            + (" STRICT" if strict else ""),
        "INSERT INTO users VALUES (1, 'taken@x', 1), (2, 'b', 2), (3, 'c', 3)")


@pytest.mark.parametrize("case", REFUSING, ids=[c[0] for c in REFUSING])
def test_a_refused_write_is_exit_5_naming_user_field_and_constraint_and_nothing_is_applied(tmp_path, case):
    _, statements, data, user, field, constraint = case
    db = tmp_path / "w.db"
    _refusing_users(db)
    sql(db, *statements)
    order_id = propose_sync(db, {"source": "crm", "user_ids": [1, 2, 3], "fields": ["email", "score"]}, env=ENV)
    # User 1 and 3 change too (so a half-applied batch would show), user 2 is refused.
    work_order(db, order_id, {1: {"email": "one@x", "score": 10}, 3: {"email": "three@x", "score": 30}, **data},
               env=ENV)
    users_before = typed_rows(db, "email, score")
    refused = run(db, "approve", order_id, "--json", env=ENV)
    assert refused.exit_code == 5, refused.stderr
    error = refused.json["error"]
    assert error["code"] == "apply_refused"
    assert [(d["user_id"], d["field"]) for d in error["details"]] == [(user, field)]
    assert constraint in error["details"][0]["constraint"] and constraint in error["message"]
    assert f"user {user}" in refused.stderr and field in refused.stderr
    assert typed_rows(db, "email, score") == users_before
    assert count(db, "SELECT count(*) FROM provenance") == 0
    assert count(db, "SELECT count(*) FROM sqlite_master WHERE name = '_workctl_applied'") == 0
    assert order_state(db, order_id) == "submitted"
    assert run(db, "reject", order_id, "--reason", "refused by the target").exit_code == 0


def test_a_strict_tables_type_is_refused_before_the_lock(tmp_path):
    db = tmp_path / "w.db"
    _refusing_users(db, strict=True)
    order_id = propose_sync(db, {"source": "crm", "user_ids": [1, 2], "fields": ["score"]}, env=ENV)
    work_order(db, order_id, {1: {"score": "7"}, 2: {"score": "seven"}}, env=ENV)
    dry = run(db, "approve", order_id, "--dry-run", "--json", env=ENV)     # the preview says so already
    refused = run(db, "approve", order_id, "--json", env=ENV)
    for ran in (dry, refused):
        assert ran.exit_code == 5 and ran.json["error"]["code"] == "apply_refused"
        assert [(d["user_id"], d["field"]) for d in ran.json["error"]["details"]] == [(2, "score")]
        assert "cannot store TEXT value in INTEGER column users.score" in ran.json["error"]["message"]
    assert typed_rows(db, "score") == [(1, 1, "integer"), (2, 2, "integer"), (3, 3, "integer")]
    assert order_state(db, order_id) == "submitted"


def test_a_deferred_foreign_key_refused_at_commit_names_the_user(tmp_path):
    db = tmp_path / "w.db"
    sql(db, "CREATE TABLE teams (id INTEGER PRIMARY KEY)", "INSERT INTO teams VALUES (1), (2)",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, "
        "team INTEGER REFERENCES teams(id) DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO users VALUES (1, 'a', 1), (2, 'b', 2)")
    order_id = propose_sync(db, {"source": "crm", "user_ids": [1, 2], "fields": ["email", "team"]}, env=ENV)
    work_order(db, order_id, {1: {"email": "a2", "team": 2}, 2: {"email": "b2", "team": 7}}, env=ENV)
    refused = run(db, "approve", order_id, "--json", env=ENV)
    assert refused.exit_code == 5, refused.stderr
    assert refused.json["error"]["code"] == "apply_refused"
    assert [(d["user_id"], d["field"]) for d in refused.json["error"]["details"]] == [(2, "team")]
    assert "refers to teams" in refused.json["error"]["details"][0]["constraint"]
    assert query(db, "SELECT id, email, team FROM users ORDER BY id") == [(1, "a", 1), (2, "b", 2)]
    assert order_state(db, order_id) == "submitted" and count(db, "SELECT count(*) FROM provenance") == 0
    # Once the data is fixed at the source (the order is rejected and redone), it applies.
    assert run(db, "reject", order_id, "--reason", "bad team").exit_code == 0


def test_a_refusal_in_a_separate_target_leaves_both_databases_alone(tmp_path):
    store, app = tmp_path / "w.db", tmp_path / "app.db"
    _refusing_users(app)
    sql(app, "CREATE UNIQUE INDEX users_email ON users(email)")
    config = tmp_path / "workctl.toml"
    config.write_text('[target]\ndb = "app.db"\n')
    cfg = ("--config", str(config))
    order_id = propose_sync(store, {"source": "crm", "user_ids": [1, 2, 3], "fields": ["email"]}, *cfg, env=ENV)
    work_order(store, order_id, {1: {"email": "new1"}, 2: {"email": "new3"}, 3: {"email": "new3"}}, *cfg, env=ENV)
    before = typed_rows(app, "email")
    refused = run(store, *cfg, "approve", order_id, "--json", env=ENV)
    assert refused.exit_code == 5 and refused.json["error"]["code"] == "apply_refused"
    assert [(d["user_id"], d["field"]) for d in refused.json["error"]["details"]] == [(3, "email")]
    assert typed_rows(app, "email") == before
    assert count(app, "SELECT count(*) FROM sqlite_master WHERE name = '_workctl_applied'") == 0
    assert order_state(store, order_id, *cfg) == "submitted"
