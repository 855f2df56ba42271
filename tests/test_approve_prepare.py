"""Approve prepares before it takes the write lock and writes in one short transaction (issue 12): what it
relied on is re-checked inside (the order's watermark, the affected rows' values, the fields' recorded
history), and a large order's provenance rows are written ahead of the lock in small transactions that
count only once the apply commits. Through the CLI, with something done between the preparation and the
lock by wrapping ``core.approve._prepare`` (the moment a concurrent writer would act).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

import workctl.core.approve as approving
import workctl.types.user_data_sync.apply as applying
from helpers import count, propose_sync, query, run, sql, work_order

T = "2026-03-01T10:00:00Z"


def between_prepare_and_lock(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    original = approving._prepare
    done: list[bool] = []

    def prepare_then_act(*args: Any) -> Any:
        prepared = original(*args)
        if not done:
            done.append(True)
            action()
        return prepared

    monkeypatch.setattr(approving, "_prepare", prepare_then_act)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "w.db"
    sql(path, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, email_updated_at TEXT)")
    for u in range(1, 5):
        sql(path, "INSERT INTO users (id, email) VALUES (?, ?)", params=(u, f"{u}@old"))
    return path


@pytest.fixture(params=[False, True], ids=["in-lock", "staged"])
def staged(request, monkeypatch) -> bool:
    """Run each test with provenance written inside the lock (small orders) and staged ahead of it."""
    if request.param:
        monkeypatch.setattr(applying, "STAGE_ABOVE", 0)
    return request.param


def submitted(db: Path, emails: dict[int, str], policy: str = "overwrite") -> str:
    order_id = propose_sync(db, {"source": "crm", "user_ids": sorted(emails), "fields": ["email"],
                                 "policies": {"email": policy}}, env={"WORKCTL_NOW": T})
    work_order(db, order_id, {u: {"email": e} for u, e in emails.items()}, env={"WORKCTL_NOW": T},
               extra={"fetched_at": T})
    return order_id


def live_provenance(db: Path) -> list[tuple[Any, ...]]:
    """Provenance rows that count (written in their transaction, or staged by a committed attempt)."""
    return query(db, "SELECT p.user_id, p.field, p.old, p.new, p.order_id FROM provenance p WHERE p.attempt IS NULL "
                     "OR p.attempt IN (SELECT attempt FROM provenance_attempts WHERE committed_at IS NOT NULL) "
                     "ORDER BY p.id")


def test_a_row_edited_between_prepare_and_lock_is_decided_again(db, monkeypatch, staged):
    """The local edit lands after approve read the users (stamped 11:00, after the 10:00 fetch): with
    skip_if_newer the re-check inside the lock keeps it, and the diff and provenance say so."""
    order_id = submitted(db, {1: "a@x", 2: "b@x"}, policy="skip_if_newer")
    between_prepare_and_lock(monkeypatch, lambda: sql(
        db, "UPDATE users SET email = 'mine@app', email_updated_at = '2026-03-01T11:00:00Z' WHERE id = 2"))
    approved = run(db, "approve", order_id, "--json", env={"WORKCTL_NOW": "2026-03-01T12:00:00Z"})
    assert approved.exit_code == 0, approved.stderr
    diff = approved.json["diff"]
    assert diff["changes"] == [{"user_id": 1, "field": "email", "old": "1@old", "new": "a@x"}]
    assert diff["skipped_by_policy"] == {"skip_if_newer": 1}
    assert query(db, "SELECT id, email FROM users ORDER BY id") == [(1, "a@x"), (2, "mine@app"), (3, "3@old"),
                                                                    (4, "4@old")]
    assert live_provenance(db) == [(1, "email", '"1@old"', '"a@x"', order_id)]
    assert json.loads(query(db, "SELECT diff FROM orders WHERE id = ?", (order_id,))[0][0]) == diff
    assert count(db, "SELECT count(*) FROM provenance") == 1     # nothing staged is left behind


def test_a_history_that_moved_while_the_value_came_back_is_decided_again(db, monkeypatch, staged):
    """Another order writes user 1 and an edit puts the old value back before the lock: the row reads the
    same, but its history moved on, so this order's provenance row must come after the other's."""
    first = submitted(db, {1: "a@x", 2: "b@x"})
    other = submitted(db, {1: "z@x"})

    def other_then_back() -> None:
        assert run(db, "approve", other, env={"WORKCTL_NOW": T}).exit_code == 0
        sql(db, "UPDATE users SET email = '1@old' WHERE id = 1")

    between_prepare_and_lock(monkeypatch, other_then_back)
    approved = run(db, "approve", first, "--json", env={"WORKCTL_NOW": T})
    assert approved.exit_code == 0, approved.stderr
    assert [(c["user_id"], c["old"], c["new"]) for c in approved.json["diff"]["changes"]] == [
        (1, "1@old", "a@x"), (2, "2@old", "b@x")]
    rows = live_provenance(db)
    assert [r[4] for r in rows if r[0] == 1] == [other, first]    # the history in the order it happened
    why = run(db, "why", "1", "email", "--json").json
    assert why["fields"]["email"]["last_writer"]["order_id"] == first
    # first's revert restores user 1 (it is the last writer) to the value it overwrote.
    reverted = run(db, "revert", first, "--json", env={"WORKCTL_NOW": T}).json
    assert reverted["stats"]["restored"] == 2
    assert query(db, "SELECT email FROM users WHERE id = 1") == [("1@old",)]


@pytest.mark.parametrize("refusal", ["unique", "order-changed"])
def test_a_failed_approve_leaves_no_provenance(db, monkeypatch, refusal):
    monkeypatch.setattr(applying, "STAGE_ABOVE", 0)
    order_id = submitted(db, {1: "a@x", 2: "b@x", 3: "c@x"})
    if refusal == "unique":
        sql(db, "CREATE UNIQUE INDEX users_email ON users(email)")
        between_prepare_and_lock(monkeypatch, lambda: sql(db, "UPDATE users SET email = 'c@x' WHERE id = 4"))
        expected = (5, "apply_refused")
    else:
        def requeue_and_resubmit() -> None:
            assert run(db, "reject", order_id, "--reason", "again", "--requeue").exit_code == 0
            work_order(db, order_id, {u: {"email": e} for u, e in {1: "a@x", 2: "b@x", 3: "c@x"}.items()})

        between_prepare_and_lock(monkeypatch, requeue_and_resubmit)
        expected = (6, "order_changed")
    before = query(db, "SELECT * FROM users ORDER BY id")
    refused = run(db, "approve", order_id, "--json", env={"WORKCTL_NOW": T})
    assert (refused.exit_code, refused.json["error"]["code"]) == expected, refused.stderr
    if refusal == "unique":
        assert [(d["user_id"], d["field"]) for d in refused.json["error"]["details"]] == [(3, "email")]
        assert query(db, "SELECT * FROM users ORDER BY id") == [*before[:3], (4, "c@x", None)]
    assert count(db, "SELECT count(*) FROM provenance") == 0
    assert count(db, "SELECT count(*) FROM provenance_attempts") == 0
    assert run(db, "show", order_id, "--json").json["order"]["state"] == "submitted"


def test_staged_rows_of_a_killed_approve_never_count_and_are_swept(db, monkeypatch):
    """What a process killed after staging leaves: invisible to why, revert and the policies, and removed
    by the next approve of the order."""
    monkeypatch.setattr(applying, "STAGE_ABOVE", 0)
    order_id = submitted(db, {1: "a@x", 2: "b@x"})

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise SystemExit(137)  # dies after staging, before the lock; nothing unstages

    monkeypatch.setattr(approving, "_commit", killed)
    monkeypatch.setattr(approving, "_unstage", lambda *a: None)
    assert run(db, "approve", order_id).exit_code == 137
    assert count(db, "SELECT count(*) FROM provenance") == 2
    assert live_provenance(db) == []
    assert run(db, "why", "1", "--json").json["history"] == []
    monkeypatch.undo()
    monkeypatch.setattr(applying, "STAGE_ABOVE", 0)
    assert run(db, "approve", order_id, env={"WORKCTL_NOW": T}).exit_code == 0
    assert count(db, "SELECT count(*) FROM provenance") == 2 and len(live_provenance(db)) == 2
    assert count(db, "SELECT count(*) FROM provenance_attempts WHERE committed_at IS NULL") == 0
