"""Which columns a sync may write (issue 12, field safety): the default deny-list matches by pattern —
every sensitive-looking name the substring list let through is refused — and ``[target] allow_fields``,
when set, is the only list that may be written. Through the CLI, with the store's bytes unchanged by a
refusal."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from workctl.types.user_data_sync.fields import deny_reason, words
from helpers import count, file_snapshot, propose_sync, query, run, work_order

# The 20 of 23 sensitive-looking columns that were writable with the substring deny-list, and more.
SENSITIVE = ["pwd", "passcode", "pin", "private_key", "signing_key", "credentials", "otp_seed", "totp",
             "recovery_codes", "session_id", "privileges", "access_level", "scopes", "groups", "mfa_enabled",
             "email_verified", "owner_id", "password", "userPassword2", "api_token", "is_admin", "role", "isAdmin",
             "secret_answer", "apiKey", "refresh_token", "hotp_counter", "backup_codes", "two_factor_enabled",
             "one_time_code", "sessionToken", "permissions", "acl", "entitlements", "access_rights", "user_groups",
             "member_of", "ownership", "tenant_id", "phone_verified", "is_confirmed", "locked_out", "ssh_key",
             "cert_pem", "jwt", "oauth_id", "password_hash", "salt", "pin_code", "superuser", "is_staff", "sudoer"]
# Ordinary columns that must stay syncable (several of them look a little like the patterns).
ORDINARY = ["email", "phone", "company", "name", "last_seen", "sessions", "plan", "mrr", "currency", "work_email",
            "employer", "address", "city", "country_code", "zip_code", "title", "department", "display_name",
            "timezone", "locale", "passport_number", "pinned_at", "keyword", "last_access_at", "author",
            "description", "grouping_hint", "first_name"]


@pytest.mark.parametrize("name", SENSITIVE)
def test_the_pattern_deny_list_matches_sensitive_names(name):
    assert deny_reason(name) is not None, (name, words(name))


@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_names_stay_syncable(name):
    assert deny_reason(name) is None, (name, deny_reason(name))


def test_words_split_case_punctuation_and_counters():
    assert words("userPassword2") == ["user", "password"]
    assert words("HTTPAuthToken") == ["http", "auth", "token"]
    assert words("recovery-codes_v2") == ["recovery", "codes", "v"]


@pytest.fixture
def table(tmp_path: Path) -> Path:
    db = tmp_path / "w.db"
    columns = ", ".join(f'"{c}" TEXT' for c in SENSITIVE + ORDINARY)
    conn = sqlite3.connect(db)
    conn.execute(f"CREATE TABLE users (id INTEGER PRIMARY KEY, {columns})")
    conn.executemany("INSERT INTO users (id, email, pwd) VALUES (?, ?, 'hunter1')", [(1, "a@x"), (2, "b@x")])
    conn.commit()
    conn.close()
    assert run(db, "status").exit_code == 0
    return db


@pytest.mark.parametrize("name", SENSITIVE)
def test_propose_refuses_every_sensitive_column_and_says_why(table, name):
    before = file_snapshot(table)
    out = run(table, "propose", "user.data.sync", "--payload",
              json.dumps({"source": "crm", "user_ids": [1], "fields": ["email", name]}), "--json")
    assert out.exit_code == 5, out.stdout
    error = out.json["error"]
    assert error["code"] == "field_not_allowed" and error["details"][0]["path"] == "fields.1"
    assert f"'{name}'" in error["message"] and "default deny-list" in error["message"]
    assert file_snapshot(table) == before


def test_ordinary_columns_are_all_writable(table):
    order_id = propose_sync(table, {"source": "crm", "user_ids": [1], "fields": ORDINARY})
    work_order(table, order_id, {1: {f: f"{f}-new" for f in ORDINARY}})
    assert run(table, "approve", order_id).exit_code == 0
    assert query(table, f"SELECT {', '.join(ORDINARY)} FROM users WHERE id = 1") == [
        tuple(f"{f}-new" for f in ORDINARY)]


def test_the_field_map_cannot_target_a_sensitive_column(table):
    out = run(table, "propose", "user.data.sync", "--payload", json.dumps(
        {"source": "crm", "user_ids": [1], "fields": ["email"], "field_map": {"secret": "pwd"}}), "--json")
    assert out.exit_code == 5 and out.json["error"]["code"] == "field_not_allowed"
    assert out.json["error"]["details"][0]["path"] == "field_map.secret"


def config(tmp_path: Path, text: str) -> tuple[str, str]:
    path = tmp_path / "workctl.toml"
    path.write_text(text)
    return "--config", str(path)


def test_allow_fields_is_the_only_list_that_may_be_written(table, tmp_path):
    cfg = config(tmp_path, '[target]\nallow_fields = ["email", "email_verified"]\n')
    for field in ("phone", "company"):  # ordinary, but not on the list
        out = run(table, *cfg, "propose", "user.data.sync", "--payload",
                  json.dumps({"source": "crm", "user_ids": [1], "fields": [field]}), "--json")
        assert out.exit_code == 5 and "not in [target] allow_fields" in out.json["error"]["message"]
    # A column the patterns would refuse is writable because the operator listed it by name.
    order_id = propose_sync(table, {"source": "crm", "user_ids": [1, 2], "fields": ["email", "email_verified"]},
                            *cfg)
    work_order(table, order_id, {1: {"email": "a2@x", "email_verified": "yes"},
                                 2: {"email": "b2@x", "email_verified": "no"}}, *cfg)
    assert run(table, *cfg, "approve", order_id).exit_code == 0
    assert query(table, "SELECT id, email, email_verified FROM users ORDER BY id") == [(1, "a2@x", "yes"),
                                                                                        (2, "b2@x", "no")]
    # Without a fields list, an order gets only the source's fields that are on it.
    implicit = run(table, *cfg, "propose", "user.data.sync", "--payload",
                   json.dumps({"source": "crm", "user_ids": [1]}), "--json")
    assert implicit.exit_code == 0 and implicit.json["order"]["payload"]["fields"] == ["email"]


def test_deny_fields_still_wins_over_allow_fields(table, tmp_path):
    cfg = config(tmp_path, '[target]\nallow_fields = ["email", "phone"]\n\n'
                           '[types."user.data.sync"]\ndeny_fields = ["phone"]\n')
    out = run(table, *cfg, "propose", "user.data.sync", "--payload",
              json.dumps({"source": "crm", "user_ids": [1], "fields": ["phone"]}), "--json")
    assert out.exit_code == 5 and "matches deny_fields" in out.json["error"]["message"]


def test_a_field_taken_off_allow_fields_after_propose_is_refused_at_approve(table, tmp_path):
    cfg = config(tmp_path, '[target]\nallow_fields = ["email", "phone"]\n')
    order_id = propose_sync(table, {"source": "crm", "user_ids": [1, 2], "fields": ["email", "phone"]}, *cfg)
    work_order(table, order_id, {1: {"email": "n1", "phone": "p1"}, 2: {"email": "n2", "phone": "p2"}}, *cfg)
    narrowed = config(tmp_path, '[target]\nallow_fields = ["email"]\n')
    before = query(table, "SELECT * FROM users ORDER BY id")
    for args in (("approve", order_id, "--dry-run", "--json"), ("approve", order_id, "--json")):
        out = run(table, *narrowed, *args)
        assert out.exit_code == 5 and out.json["error"]["code"] == "field_not_allowed"
        assert "phone" in out.json["error"]["message"]
    assert query(table, "SELECT * FROM users ORDER BY id") == before
    assert count(table, "SELECT count(*) FROM provenance") == 0
    assert run(table, *narrowed, "show", order_id, "--json").json["order"]["state"] == "submitted"


@pytest.mark.parametrize("value", ['"email"', "[1]", '["bad name"]'])
def test_a_malformed_allow_fields_is_a_config_error(table, tmp_path, value):
    cfg = config(tmp_path, f"[target]\nallow_fields = {value}\n")
    out = run(table, *cfg, "propose", "user.data.sync", "--payload",
              json.dumps({"source": "crm", "user_ids": [1], "fields": ["email"]}), "--json")
    assert out.exit_code == 5 and out.json["error"]["code"] == "config_invalid"
