"""Conflict policies decide on the source's time of the data, revert restores only where its order is
still the last writer, and ``why`` shows the chain (issue 11), through the CLI. Each case checks the
users table row by row and the provenance rows with their source times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers import propose_sync, query, run, sql, work_order


def at(hhmm: str) -> str:
    return f"2026-03-01T{hhmm}:00Z"


def stored(hhmm: str) -> str:
    return f"2026-03-01T{hhmm}:00.000000Z"


def rows(db: Path, columns: str = "email") -> dict[int, tuple[Any, ...]]:
    return {r[0]: r[1:] for r in query(db, f"SELECT id, {columns} FROM users ORDER BY id")}


def provenance(db: Path) -> list[tuple[Any, ...]]:
    return query(db, "SELECT user_id, field, new, order_id, source, source_at, reverted_by FROM provenance ORDER BY id")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "w.db"
    sql(path, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, phone TEXT, updated_at TEXT)")
    sql(path, "INSERT INTO users (id, email) VALUES (1, 'one@old'), (2, 'two@old')")
    return path


def order(db: Path, source: str, emails: dict[int, str], fetched: str, *, policy: str = "skip_if_newer",
          columns: bool = True, entry_extra: dict[int, dict[str, Any]] | None = None) -> str:
    """A submitted order syncing ``emails`` whose batch was fetched at ``fetched`` (proposed and worked then)."""
    env = {"WORKCTL_NOW": fetched}
    order_id = propose_sync(db, {"source": source, "user_ids": sorted(emails), "fields": ["email"],
                                 "policies": {"email": policy}, "provenance_columns": columns}, env=env)
    ran = work_order(db, order_id, {u: {"email": e} for u, e in emails.items()}, env=env, agent=f"{source}-agent",
                     extra={"fetched_at": fetched}, entry_extra=entry_extra)
    assert all(r.exit_code == 0 for r in ran), [r.stderr for r in ran]
    return order_id


def approve(db: Path, order_id: str, when: str) -> dict[str, Any]:
    ran = run(db, "approve", order_id, "--json", env={"WORKCTL_NOW": when})
    assert ran.exit_code == 0, ran.stderr
    return ran.json["diff"]


# -- skip_if_newer on source times ---------------------------------------------------------------------
def test_skip_if_newer_compares_source_times_not_apply_times(db):
    """The issue's case: A fetched at 09:00, B at 09:05; A approved at 09:10 stamped email_updated_at. B is
    newer data, so B writes (it used to be skipped as 'changed locally' by A's own stamp)."""
    a = order(db, "crm", {1: "a@crm"}, at("09:00"))
    b = order(db, "billing", {1: "b@billing"}, at("09:05"))
    assert approve(db, a, at("09:10"))["changes"] == [{"user_id": 1, "field": "email", "old": "one@old",
                                                        "new": "a@crm"}]
    # The stamp is the value's source time (09:00), not the approve's 09:10.
    assert rows(db, "email, email_updated_from, email_updated_at")[1] == ("a@crm", "crm", stored("09:00"))
    diff = approve(db, b, at("09:15"))
    assert diff["skipped_by_policy"] == {"skip_if_newer": 0}
    assert rows(db, "email, email_updated_from, email_updated_at")[1] == ("b@billing", "billing", stored("09:05"))
    assert provenance(db) == [(1, "email", '"a@crm"', a, "crm", stored("09:00"), None),
                              (1, "email", '"b@billing"', b, "billing", stored("09:05"), None)]


def test_older_data_approved_later_is_skipped(db):
    a = order(db, "crm", {1: "a@crm"}, at("09:00"))
    b = order(db, "billing", {1: "b@billing"}, at("09:05"))
    approve(db, b, at("09:10"))
    diff = approve(db, a, at("09:15"))
    assert diff["changes"] == [] and diff["skipped_by_policy"] == {"skip_if_newer": 1}
    assert rows(db)[1] == ("b@billing",)
    assert [r[3] for r in provenance(db)] == [b]


def test_the_sources_own_updated_at_wins_over_the_fetch_time(db):
    """A record the source last changed at 08:00, fetched at 10:00, is older than a value from 09:00."""
    first = order(db, "crm", {1: "a@crm", 2: "a2@crm"}, at("09:00"))
    approve(db, first, at("09:01"))
    second = order(db, "billing", {1: "b@billing", 2: "b2@billing"}, at("10:00"),
                   entry_extra={1: {"updated_at": at("08:00")}, 2: {"updated_at": at("09:30")}})
    diff = approve(db, second, at("10:01"))
    assert diff["skipped_by_policy"] == {"skip_if_newer": 1}
    assert rows(db, "email, email_updated_at") == {1: ("a@crm", stored("09:00")), 2: ("b2@billing", stored("09:30"))}
    assert provenance(db)[-1][5] == stored("09:30")


def test_local_edits_are_judged_by_their_own_time_and_kept_when_it_is_unknown(db):
    sql(db, "ALTER TABLE users ADD COLUMN email_updated_at TEXT")
    first = order(db, "crm", {1: "a@crm", 2: "a2@crm"}, at("09:00"), columns=False)
    approve(db, first, at("09:01"))
    # User 1: the app edits and stamps 11:00. User 2: the app edits without touching any time column.
    sql(db, "UPDATE users SET email = 'mine@app', email_updated_at = ? WHERE id = 1", params=(at("11:00"),))
    sql(db, "UPDATE users SET email = 'mine2@app' WHERE id = 2")
    before_edit = order(db, "crm", {1: "x@crm", 2: "x2@crm"}, at("10:00"), columns=False)
    diff = approve(db, before_edit, at("12:00"))
    assert diff["changes"] == [] and diff["skipped_by_policy"] == {"skip_if_newer": 2}
    after_edit = order(db, "crm", {1: "y@crm", 2: "y2@crm"}, at("11:30"), columns=False)
    diff = approve(db, after_edit, at("12:00"))
    # 11:30 data beats the 11:00 edit; the unstamped edit's time is unknown, so it is kept.
    assert [(c["user_id"], c["new"]) for c in diff["changes"]] == [(1, "y@crm")]
    assert rows(db) == {1: ("y@crm",), 2: ("mine2@app",)}


def test_a_local_value_workctl_never_wrote_and_without_a_time_has_nothing_to_protect_it(db):
    first = order(db, "crm", {1: "a@crm"}, at("09:00"), columns=False)
    assert approve(db, first, at("09:01"))["skipped_by_policy"] == {"skip_if_newer": 0}
    assert rows(db)[1] == ("a@crm",)


def test_users_updated_at_of_another_columns_edit_does_not_block_a_value_workctl_wrote(db):
    """The old rule read users.updated_at for every field: an edit of the phone blocked the email."""
    first = order(db, "crm", {1: "a@crm"}, at("09:00"), columns=False)
    approve(db, first, at("09:01"))
    sql(db, "UPDATE users SET phone = '555', updated_at = ? WHERE id = 1", params=(at("11:00"),))
    second = order(db, "crm", {1: "b@crm"}, at("10:00"), columns=False)
    assert [c["new"] for c in approve(db, second, at("12:00"))["changes"]] == ["b@crm"]


def test_fill_empty_does_not_fill_with_data_older_than_the_source_that_emptied_it(db):
    emptied = order(db, "crm", {1: "", 2: ""}, at("10:00"), policy="overwrite")
    approve(db, emptied, at("10:01"))
    older = order(db, "billing", {1: "old@billing", 2: "old2@billing"}, at("09:00"), policy="fill_empty")
    assert approve(db, older, at("10:02"))["skipped_by_policy"] == {"fill_empty": 2}
    sql(db, "UPDATE users SET email = NULL WHERE id = 2")            # emptied locally: any data fills it
    newer = order(db, "billing", {1: "new@billing", 2: "new2@billing"}, at("09:30"), policy="fill_empty")
    assert [c["user_id"] for c in approve(db, newer, at("10:03"))["changes"]] == [2]
    later = order(db, "billing", {1: "later@billing"}, at("11:00"), policy="fill_empty")
    assert [c["new"] for c in approve(db, later, at("11:01"))["changes"]] == ["later@billing"]
    assert rows(db) == {1: ("later@billing",), 2: ("new2@billing",)}


# -- revert by last writer ------------------------------------------------------------------------------
def overwrite(db: Path, source: str, email: str, fetched: str) -> str:
    order_id = order(db, source, {1: email}, fetched, policy="overwrite", columns=False)
    approve(db, order_id, fetched)
    return order_id


def test_revert_never_clobbers_a_later_writer_even_one_that_wrote_the_same_value(db):
    """A -> B -> C where C writes A's value again: reverting A is skipped (C is the last writer), and C's
    own revert still works (it used to be refused after A's revert had restored over it)."""
    a = overwrite(db, "crm", "a@x", at("09:00"))
    b = overwrite(db, "billing", "b@x", at("09:10"))
    c = overwrite(db, "analytics", "a@x", at("09:20"))
    assert rows(db)[1] == ("a@x",)
    reverted_a = run(db, "revert", a, "--json", env={"WORKCTL_NOW": at("10:00")})
    assert reverted_a.exit_code == 0, reverted_a.stderr
    assert reverted_a.json["stats"] == {"recorded": 1, "restored": 0, "skipped": 1}
    [skip] = reverted_a.json["skipped"]
    assert (skip["reason"], skip["current"], skip["changed_by"]["order_id"], skip["changed_by"]["source"]) == (
        "changed_since", "a@x", c, "analytics")
    human = run(db, "revert", b, "--dry-run")
    assert "changed_since" in human.stdout and c[:8] in human.stdout
    assert rows(db)[1] == ("a@x",)
    reverted_c = run(db, "revert", c, "--json", env={"WORKCTL_NOW": at("10:05")})
    assert reverted_c.exit_code == 0 and reverted_c.json["stats"]["restored"] == 1
    assert rows(db)[1] == ("b@x",)
    # B is the last standing writer again (C was reverted): its revert puts A's value back.
    reverted_b = run(db, "revert", b, "--json", env={"WORKCTL_NOW": at("10:10")})
    assert reverted_b.json["stats"]["restored"] == 1 and rows(db)[1] == ("a@x",)
    revert_ids = {o: query(db, "SELECT id FROM reverts WHERE order_id = ?", (o,))[0][0] for o in (a, b, c)}
    assert provenance(db) == [
        (1, "email", '"a@x"', a, "crm", stored("09:00"), None),
        (1, "email", '"b@x"', b, "billing", stored("09:10"), revert_ids[b]),
        (1, "email", '"a@x"', c, "analytics", stored("09:20"), revert_ids[c]),
        (1, "email", '"b@x"', c, "revert", stored("09:10"), None),   # the restored value keeps its source time
        (1, "email", '"a@x"', b, "revert", stored("09:00"), None),
    ]
    # why shows the whole chain, reverts included, and who wrote the value last.
    why = run(db, "why", "1", "email", "--json").json
    assert [(e["kind"], e["order_id"], e["value"]) for e in why["history"]] == [
        ("sync", a, "a@x"), ("sync", b, "b@x"), ("sync", c, "a@x"), ("revert", c, "b@x"), ("revert", b, "a@x")]
    assert why["fields"]["email"]["last_writer"]["kind"] == "revert"
    assert why["fields"]["email"]["last_writer"]["source_at"] == stored("09:00")
    human = run(db, "why", "1", "email")
    assert human.exit_code == 0 and "revert" in human.stdout and "reverted" in human.stdout


def test_revert_skips_a_field_edited_outside_workctl_and_says_so(db):
    a = order(db, "crm", {1: "a@x", 2: "a2@x"}, at("09:00"), policy="overwrite", columns=False)
    approve(db, a, at("09:01"))
    sql(db, "UPDATE users SET email = 'mine@app' WHERE id = 2")
    done = run(db, "revert", a, "--json", env={"WORKCTL_NOW": at("10:00")})
    assert done.exit_code == 0, done.stderr
    assert [(c["user_id"], c["reason"], c["changed_by"]) for c in done.json["skipped"]] == [
        (2, "changed_since", {"kind": "outside_workctl"})]
    assert rows(db) == {1: ("one@old",), 2: ("mine@app",)}
    human = run(db, "why", "2")
    assert "changed outside workctl" in human.stdout


def test_a_store_upgraded_keeps_the_source_times_of_its_provenance(tmp_path):
    """m008 gives existing provenance rows their item's source time: the result's fetched_at, else when
    it was submitted; a row without an item keeps none."""
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

    from workctl.store import sqlite_migrations as migrations

    db = tmp_path / "w.db"
    older = Migrations(migrations.MIGRATION_SET)
    for fn in migrations.MIGRATIONS[:migrations.MIGRATION_NAMES.index("m008_source_times_and_staged_provenance")]:
        older()(fn)
    store = Database(db)
    older.apply(store)
    conn = store.conn
    for n, item in ((1, "i1"), (2, "i2")):
        conn.execute("INSERT INTO items (n, id, order_id, seq, type, priority, state, attempts, max_attempts, "
                     "visible_at, updated_at) VALUES (?, ?, 'o1', ?, 'user.data.sync', 0, 'completed', 1, 3, '', "
                     "'2026-03-09T00:00:00.000000Z')", (n, item, n))
    conn.execute("INSERT INTO item_results (n, result, submitted_by, updated_at) VALUES (1, ?, 'a', ?)",
                 ('{"success": true, "synced_users": [], "fetched_at": "2026-03-01T09:00:00Z"}',
                  "2026-03-01T09:30:00.000000Z"))
    conn.execute("INSERT INTO item_results (n, result, submitted_by, updated_at) VALUES (2, ?, 'a', ?)",
                 ('{"success": true, "synced_users": []}', "2026-03-01T09:40:00.000000Z"))
    for pid, item in ((1, "i1"), (2, "i2"), (3, None)):
        conn.execute("INSERT INTO provenance (id, user_id, field, old, new, source, order_id, item_id, agent, "
                     "applied_at) VALUES (?, 1, 'email', 'null', '\"x\"', 'crm', 'o1', ?, 'a', "
                     "'2026-03-09T00:00:00.000000Z')", (pid, item))
    conn.commit()
    conn.close()
    assert run(db, "status").exit_code == 0                       # the store migrates on first use
    assert query(db, "SELECT id, source_at, attempt FROM provenance ORDER BY id") == [
        (1, "2026-03-01T09:00:00Z", None), (2, "2026-03-01T09:40:00.000000Z", None), (3, None, None)]
