"""Orders: propose (planning, schema and field checks), submit validation, approve, reject,
idempotency keys, and exactly-once apply into a separate target database."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest


from workctl.clock import iso
from workctl.config import Config
from workctl.errors import Conflict, ExitCode, IllegalTransition, Invalid, NoWork, NotFound, StoreError
from workctl.store.target import APPLIED_MARKER as MARKER_TABLE
from helpers import connect, events, is_url, make_users, read_users, result_for_item, rows, table_snapshot

BACKENDS = ("sqlite", "postgres")  # the contract suite: every test that uses the store runs on both

ALL_USERS = list(range(1, 151))
CRM_FIELDS = ["email", "phone", "company", "name"]


def propose_users(wc, user_ids=ALL_USERS, **payload):
    return wc.propose("user.data.sync", {"source": "crm", "user_ids": list(user_ids), **payload})


def work_all(wc, order_id, *, agent="agent-1", make=result_for_item):
    """Check out and submit every queued item of the order; return the submitted results by item id."""
    results = {}
    while True:
        try:
            item = wc.checkout(order_id, agent=agent)["item"]
        except NoWork:
            return results
        results[item["id"]] = make(item["input"])
        wc.submit(item["id"], results[item["id"]], agent=agent, lease_token=item["lease_token"])


def table_names(db) -> set[str]:
    with closing(connect(db)) as conn:
        if is_url(db):
            sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        return {r[0] for r in conn.execute(sql)}


# -- propose ----------------------------------------------------------------------------------------
def test_propose_150_users_plans_three_batches_of_50_in_order(wc, clock, db_path):
    response = propose_users(wc)
    order = response["order"]
    assert order["type"] == "user.data.sync" and order["state"] == "queued" and order["priority"] == 0
    assert order["created_at"] == iso(clock())
    assert order["payload"] == {"source": "crm", "user_ids": ALL_USERS, "fields": CRM_FIELDS, "batch_size": 50,
                                "max_attempts": 3, "min_success_ratio": 1.0}
    items = response["items"]
    assert [it["input"]["user_ids"] for it in items] == [ALL_USERS[0:50], ALL_USERS[50:100], ALL_USERS[100:150]]
    assert all(it["state"] == "queued" and it["max_attempts"] == 3 for it in items)
    assert all(it["input"]["fields"] == CRM_FIELDS and it["input"]["source"] == "crm" for it in items)
    shown = wc.show(order["id"])["items"]
    assert [(it["id"], it["seq"], it["state"]) for it in shown] == [(it["id"], n, "queued")
                                                                    for n, it in enumerate(items)]


@pytest.mark.parametrize("batch_size,sizes", [(40, [40, 40, 40, 30]), (150, [150]), (1000, [150]), (1, [1] * 150)])
def test_propose_batch_size(wc, batch_size, sizes):
    items = propose_users(wc, batch_size=batch_size)["items"]
    assert [len(it["input"]["user_ids"]) for it in items] == sizes
    assert [uid for it in items for uid in it["input"]["user_ids"]] == ALL_USERS


def test_propose_schema_errors_list_every_error_with_its_path(wc, db_path):
    before = table_snapshot(db_path)
    bad = {"source": "nope", "user_ids": [0, "x", 3, 3], "batch_size": 0, "max_attempts": 1000,
           "fields": "email", "extra": True}
    with pytest.raises(Invalid) as info:
        wc.propose("user.data.sync", bad)
    error = info.value
    assert (error.exit_code, error.code) == (ExitCode.INVALID, "payload_invalid")
    assert error.exit_code == 5
    paths = sorted(d["path"] for d in error.details)
    assert paths == ["$", "batch_size", "fields", "max_attempts", "source", "user_ids", "user_ids.0", "user_ids.1"]
    assert all(d["message"] for d in error.details)
    assert "source" in error.message and "batch_size" in error.message
    assert table_snapshot(db_path) == before


@pytest.mark.parametrize("payload,path", [
    ({"source": "crm"}, "$"),
    ({"source": "crm", "user_ids": []}, "user_ids"),
    ({"user_ids": [1]}, "$"),
    ({"source": "crm", "user_ids": [1], "fields": []}, "fields"),
    ({"source": "crm", "user_ids": [True]}, "user_ids.0"),
    ([1, 2], "$"),
])
def test_propose_rejects_malformed_payloads(wc, payload, path):
    with pytest.raises(Invalid) as info:
        wc.propose("user.data.sync", payload)
    assert info.value.exit_code == 5
    assert path in [d["path"] for d in info.value.details]


def test_fields_must_be_allowed_columns(wc, db_path):
    before = table_snapshot(db_path)
    with pytest.raises(Invalid) as info:
        propose_users(wc, fields=["email", "nickname", "password", "plan"])
    assert (info.value.code, info.value.exit_code) == ("field_not_allowed", 5)
    assert [d["path"] for d in info.value.details] == ["fields.1", "fields.2"]
    assert "'nickname'" in info.value.details[0]["message"] and "'password'" in info.value.details[1]["message"]
    assert table_snapshot(db_path) == before
    assert propose_users(wc, fields=["email", "plan", "mrr"])["order"]["payload"]["fields"] == ["email", "plan", "mrr"]


@pytest.mark.parametrize("field", ["id", "password", "is_admin", "role"])
def test_key_and_sensitive_columns_are_refused(wc, db_path, field):
    before = table_snapshot(db_path)
    with pytest.raises(Invalid) as info:
        propose_users(wc, fields=[field])
    assert (info.value.code, info.value.exit_code) == ("field_not_allowed", 5)
    assert info.value.details[0]["path"] == "fields.0"
    assert table_snapshot(db_path) == before


@pytest.mark.parametrize("field", [
    "email; DROP TABLE users",
    "email = 'x' --",
    'email" = 1; --',
    "email FROM users; DELETE FROM users WHERE 1 OR",
    "sqlite_master",
    "users.email",
    "(SELECT password FROM users)",
])
def test_sql_smuggled_into_fields_is_refused(wc, db_path, field):
    users_before = read_users(db_path)
    with pytest.raises(Invalid) as info:
        propose_users(wc, fields=[field])
    assert info.value.exit_code == 5
    assert info.value.code in ("payload_invalid", "field_not_allowed")
    assert read_users(db_path) == users_before
    assert rows(db_path, "orders") == []


def test_unknown_type_is_not_found(wc, db_path):
    with pytest.raises(NotFound) as info:
        wc.propose("user.data.sink", {"source": "crm", "user_ids": [1]})
    assert (info.value.code, info.value.exit_code) == ("unknown_type", 4)
    assert "user.data.sync" in info.value.message  # names the known types
    assert rows(db_path, "orders") == []


def test_propose_without_a_users_table(db_path, make_wc):
    wc = make_wc()
    with pytest.raises(Invalid) as info:
        propose_users(wc)
    assert (info.value.code, info.value.exit_code) == ("no_users_table", 5)


# -- submit validation ----------------------------------------------------------------------------
def _drop_last_two(result, batch):
    result["synced_users"] = result["synced_users"][:-2]


def _duplicate_first(result, batch):
    result["synced_users"].append(dict(result["synced_users"][0]))


def _foreign_user(result, batch):
    result["synced_users"][3]["user_id"] = 149  # in another batch


def _unknown_user(result, batch):
    result["failed_users"] = [{"user_id": 9999, "error": "no such user"}]


def _unverified(result, batch):
    result["synced_users"][7]["verified"] = False


def _unrequested_fields(result, batch):
    result["synced_users"][2]["data"]["plan"] = "pro"
    result["synced_users"][2]["data"]["password"] = "hunter2"


def _nested_value(result, batch):
    result["synced_users"][5]["data"]["email"] = {"value": "x@y"}


def _failed_without_error(result, batch):
    moved = result["synced_users"].pop()
    result["failed_users"] = [{"user_id": moved["user_id"]}]


@pytest.mark.parametrize("mutate,paths", [
    (_drop_last_two, ["synced_users"]),
    (_duplicate_first, ["synced_users.50.user_id"]),
    (_foreign_user, ["synced_users", "synced_users.3.user_id"]),
    (_unknown_user, ["failed_users.0.user_id"]),
    (_unverified, ["synced_users.7.verified"]),
    (_unrequested_fields, ["synced_users.2.data.password", "synced_users.2.data.plan"]),
    (_nested_value, ["synced_users.5.data.email"]),
    (_failed_without_error, ["failed_users.0.error"]),
], ids=lambda v: v.__name__.strip("_") if callable(v) else None)
def test_submit_validation_names_every_problem_and_keeps_the_lease(wc, db_path, mutate, paths):
    propose_users(wc)
    item = wc.checkout(agent="a")["item"]
    result = result_for_item(item["input"])
    mutate(result, item["input"]["user_ids"])
    before = table_snapshot(db_path)
    with pytest.raises(Invalid) as info:
        wc.submit(item["id"], result, agent="a", lease_token=item["lease_token"])
    assert (info.value.code, info.value.exit_code) == ("result_invalid", 5)
    assert sorted(d["path"] for d in info.value.details) == paths
    assert "lease is kept" in info.value.message
    assert table_snapshot(db_path) == before  # still leased, same token, nothing logged
    # the agent fixes the result and resubmits under the same lease
    fixed = wc.submit(item["id"], result_for_item(item["input"]), agent="a", lease_token=item["lease_token"])
    assert fixed["item"] == {"id": item["id"], "state": "submitted"}


@pytest.mark.parametrize("result", [[], "ok", None, 42, [{"user_id": 1}]])
def test_submit_refuses_a_result_that_is_not_an_object(wc, db_path, result):
    propose_users(wc)
    item = wc.checkout(agent="a")["item"]
    before = table_snapshot(db_path)
    with pytest.raises(Invalid) as info:
        wc.submit(item["id"], result, agent="a", lease_token=item["lease_token"])
    assert info.value.exit_code == 5
    assert [d["path"] for d in info.value.details] == ["$"]
    assert table_snapshot(db_path) == before


def test_submit_reports_all_problems_at_once(wc):
    propose_users(wc, [1, 2, 3])
    item = wc.checkout(agent="a")["item"]
    result = {"success": "yes", "synced_users": [{"user_id": 1, "data": {"email": "a@b"}, "verified": False},
                                                 {"user_id": 1, "data": {}, "verified": True, "extra": 1}],
              "failed_users": "none", "bogus": 1}
    with pytest.raises(Invalid) as info:
        wc.submit(item["id"], result, agent="a", lease_token=item["lease_token"])
    assert sorted(d["path"] for d in info.value.details) == [
        "bogus", "failed_users", "success", "synced_users", "synced_users.0.verified",
        "synced_users.1.extra", "synced_users.1.user_id"]


def test_min_success_ratio(wc):
    propose_users(wc, [1, 2, 3, 4], min_success_ratio=0.75)
    item = wc.checkout(agent="a")["item"]
    good = result_for_item(item["input"])
    two_failed = dict(good, synced_users=good["synced_users"][:2],
                      failed_users=[{"user_id": 3, "error": "404"}, {"user_id": 4, "error": "404"}])
    with pytest.raises(Invalid) as info:
        wc.submit(item["id"], two_failed, agent="a", lease_token=item["lease_token"])
    assert [d["path"] for d in info.value.details] == ["failed_users"]
    one_failed = dict(good, synced_users=good["synced_users"][:3], failed_users=[{"user_id": 4, "error": "404"}])
    assert wc.submit(item["id"], one_failed, agent="a", lease_token=item["lease_token"])["item"]["state"] == "submitted"


# -- approve ----------------------------------------------------------------------------------------
def test_dry_run_changes_nothing(wc, db_path):
    order_id = propose_users(wc)["order"]["id"]
    work_all(wc, order_id)
    before, users_before = table_snapshot(db_path), read_users(db_path)
    dry = wc.approve(order_id, dry_run=True)
    assert dry["order"] == {"id": order_id, "state": "submitted"}
    assert dry["diff"]["summary"] == "Synced data for 150 users from crm"
    assert len(dry["diff"]["changes"]) == 150 * 4
    assert table_snapshot(db_path) == before
    assert read_users(db_path) == users_before
    assert MARKER_TABLE not in table_names(db_path)
    # the dry run's diff is exactly what the real approve then applies
    assert wc.approve(order_id)["diff"] == dry["diff"]


def test_approve_applies_every_result_and_completes(wc, clock, db_path):
    order_id = propose_users(wc)["order"]["id"]
    work_all(wc, order_id)
    users_before = read_users(db_path)
    clock.advance(60)
    response = wc.approve(order_id)
    assert response["order"] == {"id": order_id, "state": "completed"}
    diff = response["diff"]
    assert diff["before"] == {"updated_count": 0} and diff["after"] == {"updated_count": 150}
    assert diff["summary"] == "Synced data for 150 users from crm"
    assert diff["stats"] == {"users": 150, "synced": 150, "updated": 150, "unchanged": 0, "missing_locally": 0,
                             "failed": 0}
    assert {"user_id": 7, "field": "email", "old": "user7@old.example", "new": "email-7-new"} in diff["changes"]
    users = read_users(db_path)
    for uid in ALL_USERS:
        for field in CRM_FIELDS:
            assert users[uid][field] == f"{field}-{uid}-new"
        # columns outside the order are untouched
        for field in ("password", "is_admin", "role", "plan", "mrr"):
            assert users[uid][field] == users_before[uid][field]
    shown = wc.show(order_id)
    assert shown["order"]["state"] == "completed" and shown["order"]["diff"] == diff
    assert shown["order"]["approved_at"] == shown["order"]["completed_at"] == iso(clock())
    assert {it["state"] for it in shown["items"]} == {"completed"}


def refuse_user(db, user_id: int) -> None:
    """A trigger on users that aborts any update of one user (with the message 'user N refused by trigger')."""
    with closing(connect(db)) as conn:
        if is_url(db):
            conn.execute(f"CREATE FUNCTION refuse_{user_id}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                         f"RAISE EXCEPTION 'user {user_id} refused by trigger'; END $$")
            conn.execute(f"CREATE TRIGGER refuse_{user_id} BEFORE UPDATE ON users FOR EACH ROW "
                         f"WHEN (NEW.id = {user_id}) EXECUTE FUNCTION refuse_{user_id}()")
        else:
            conn.execute(f"CREATE TRIGGER refuse_{user_id} BEFORE UPDATE ON users WHEN NEW.id = {user_id} "
                         f"BEGIN SELECT RAISE(ABORT, 'user {user_id} refused by trigger'); END")
        conn.commit()


def test_approve_is_one_transaction(wc, db_path):
    """A failure part-way through the apply (a trigger aborting on user 120) leaves no user changed."""
    order_id = propose_users(wc)["order"]["id"]
    work_all(wc, order_id)
    refuse_user(db_path, 120)
    conn = connect(db_path)
    before, users_before = table_snapshot(db_path), read_users(db_path)
    with pytest.raises(Invalid) as info:
        wc.approve(order_id)
    # The target's refusal is the order's problem (exit 5, apply_refused), not the store's (it was exit 8).
    assert (info.value.exit_code, info.value.code) == (5, "apply_refused")
    assert "user 120 refused by trigger" in info.value.message
    assert [(d["user_id"], d["constraint"]) for d in info.value.details] == [(120, "user 120 refused by trigger")]
    assert read_users(db_path) == users_before  # users 1..119 were not left half-applied
    assert table_snapshot(db_path) == before
    assert MARKER_TABLE not in table_names(db_path)
    conn.execute("DROP TRIGGER refuse_120" + (" ON users" if is_url(db_path) else ""))
    conn.commit()
    conn.close()
    assert wc.approve(order_id)["order"]["state"] == "completed"


def test_approve_twice_is_an_illegal_transition(wc, db_path):
    order_id = propose_users(wc)["order"]["id"]
    work_all(wc, order_id)
    wc.approve(order_id)
    conn = connect(db_path)
    conn.execute("UPDATE users SET email = 'changed-later' WHERE id = 1")
    conn.commit()
    conn.close()
    before = table_snapshot(db_path)
    with pytest.raises(IllegalTransition) as info:
        wc.approve(order_id)
    assert (info.value.code, info.value.exit_code) == ("order_not_submitted", 6)
    assert "'completed'" in info.value.message
    assert table_snapshot(db_path) == before
    assert read_users(db_path)[1]["email"] == "changed-later"


@pytest.mark.parametrize("action", ["approve", "reject"])
def test_approve_or_reject_before_every_item_is_submitted(wc, db_path, action):
    order_id = propose_users(wc)["order"]["id"]
    item = wc.checkout(order_id, agent="a")["item"]
    wc.submit(item["id"], result_for_item(item["input"]), agent="a", lease_token=item["lease_token"])
    wc.checkout(order_id, agent="b")
    before = table_snapshot(db_path)
    with pytest.raises(IllegalTransition) as info:
        if action == "approve":
            wc.approve(order_id)
        else:
            wc.reject(order_id, reason="no")
    assert info.value.exit_code == 6
    assert "1 of 3 items submitted" in info.value.message
    assert "1 leased, 1 queued, 1 submitted" in info.value.message
    assert info.value.details == [{"state": "in_progress", "items": {"leased": 1, "queued": 1, "submitted": 1}}]
    assert table_snapshot(db_path) == before


def test_users_missing_locally_are_skipped_and_counted(wc, db_path):
    order_id = propose_users(wc, list(range(141, 161)), fields=["email"])["order"]["id"]
    work_all(wc, order_id)
    diff = wc.approve(order_id)["diff"]
    assert diff["stats"]["missing_locally"] == 10
    assert diff["missing_user_ids"] == list(range(151, 161))
    assert diff["stats"]["updated"] == 10 and diff["after"] == {"updated_count": 10}
    assert {c["user_id"] for c in diff["changes"]} == set(range(141, 151))
    users = read_users(db_path)
    assert len(users) == 150  # nobody was created
    assert users[141]["email"] == "email-141-new"


def test_only_changed_fields_are_written_and_reported(wc, db_path):
    # user 3 fails at the source, so the order needs a lenient success ratio
    order_id = propose_users(wc, [1, 2, 3], fields=["email", "phone"], min_success_ratio=0.5)["order"]["id"]
    current = read_users(db_path)

    def make(item_input):
        return {"success": True, "failed_users": [{"user_id": 3, "error": "not in crm"}], "synced_users": [
            {"user_id": 1, "data": {"email": current[1]["email"], "phone": "+1-000"}, "verified": True},
            {"user_id": 2, "data": {"email": current[2]["email"], "phone": current[2]["phone"]}, "verified": True},
        ]}

    work_all(wc, order_id, make=make)
    diff = wc.approve(order_id)["diff"]
    assert diff["changes"] == [{"user_id": 1, "field": "phone", "old": current[1]["phone"], "new": "+1-000"}]
    assert diff["stats"] == {"users": 3, "synced": 2, "updated": 1, "unchanged": 1, "missing_locally": 0,
                             "failed": 1}
    after = read_users(db_path)
    assert after[1] == {**current[1], "phone": "+1-000"}
    assert after[2] == current[2] and after[3] == current[3]


def test_field_values_cannot_inject_sql(wc, db_path):
    order_id = propose_users(wc, [1, 2], fields=["email", "company"])["order"]["id"]
    nasty = "x'); DROP TABLE users; --"

    def make(item_input):
        return {"success": True, "synced_users": [
            {"user_id": uid, "data": {"email": nasty, "company": 'Robert"); --'}, "verified": True}
            for uid in item_input["user_ids"]]}

    work_all(wc, order_id, make=make)
    wc.approve(order_id)
    users = read_users(db_path)
    assert len(users) == 150
    assert users[1]["email"] == nasty and users[2]["company"] == 'Robert"); --'


# -- reject -----------------------------------------------------------------------------------------
def test_reject_is_final(wc, db_path):
    order_id = propose_users(wc)["order"]["id"]
    results = work_all(wc, order_id)
    users_before = read_users(db_path)
    response = wc.reject(order_id, reason="source data is stale")
    assert response == {"order": {"id": order_id, "state": "rejected"}, "items": {"count": 3, "state": "rejected"},
                        "reason": "source data is stale"}
    shown = wc.show(order_id)
    assert shown["order"]["state"] == "rejected" and {it["state"] for it in shown["items"]} == {"rejected"}
    assert shown["order"]["error"] == {"reason": "source data is stale"}
    rejected = events(db_path, "event = 'rejected' AND entity = 'item'")
    assert len(rejected) == 3 and all("source data is stale" in e["payload"] for e in rejected)
    assert read_users(db_path) == users_before
    with pytest.raises(NoWork):
        wc.checkout(order_id, agent="a")
    for call in (lambda: wc.approve(order_id), lambda: wc.reject(order_id, reason="again"),
                 lambda: wc.reject(order_id, reason="again", requeue=True)):
        with pytest.raises(IllegalTransition):
            call()
    assert len(results) == 3


def test_reject_needs_a_reason(wc, db_path):
    order_id = propose_users(wc)["order"]["id"]
    work_all(wc, order_id)
    with pytest.raises(Invalid) as info:
        wc.reject(order_id, reason="  ")
    assert (info.value.code, info.value.exit_code) == ("reason_required", 5)
    assert wc.status(order_id)["order"]["state"] == "submitted"


def test_reject_with_requeue_sends_the_work_back(wc, db_path):
    order_id = propose_users(wc)["order"]["id"]
    first_round = work_all(wc, order_id, agent="a1")
    response = wc.reject(order_id, reason="phone numbers unformatted", requeue=True)
    assert response["order"] == {"id": order_id, "state": "queued"}
    assert response["items"] == {"count": 3, "state": "queued"}
    shown = wc.show(order_id)
    assert [(it["state"], it["attempts"], it["result"]) for it in shown["items"]] == [("queued", 1, None)] * 3

    second = []
    while True:
        try:
            item = wc.checkout(order_id, agent="a2")["item"]
        except NoWork:
            break
        second.append(item)
        assert item["attempts"] == 2  # attempts were kept
        result = result_for_item(item["input"])
        for entry in result["synced_users"]:
            entry["data"]["phone"] = f"+1 555 {entry['user_id']:04d}"
        wc.submit(item["id"], result, agent="a2", lease_token=item["lease_token"])
    assert [it["id"] for it in second] == [it["id"] for it in shown["items"]]
    assert wc.status(order_id)["order"]["state"] == "submitted"
    diff = wc.approve(order_id)["diff"]
    assert diff["stats"]["updated"] == 150
    assert read_users(db_path)[42]["phone"] == "+1 555 0042"
    # the rejected first results stay in the audit trail
    requeued = events(db_path, "event = 'requeued' AND entity = 'item'")
    assert len(requeued) == 3 and all('"result":' in e["payload"] for e in requeued)
    assert set(first_round) == {it["id"] for it in second}


# -- idempotency keys -------------------------------------------------------------------------------
def test_propose_idempotency(wc, clock, db_path):
    payload = {"source": "crm", "user_ids": ALL_USERS}
    first = wc.propose("user.data.sync", payload, idempotency_key="k-1")
    before = table_snapshot(db_path)
    clock.advance(30)
    again = wc.propose("user.data.sync", payload, idempotency_key="k-1")
    assert again == first
    assert table_snapshot(db_path) == before
    for different in (lambda: wc.propose("user.data.sync", {**payload, "batch_size": 10}, idempotency_key="k-1"),
                      lambda: wc.propose("user.data.sync", payload, priority=3, idempotency_key="k-1"),
                      lambda: wc.propose("task.batch", {"tasks": [1]}, idempotency_key="k-1")):
        with pytest.raises(Conflict) as info:
            different()
        assert (info.value.code, info.value.exit_code) == ("idempotency_mismatch", 6)
    assert table_snapshot(db_path) == before
    other = wc.propose("user.data.sync", payload, idempotency_key="k-2")
    assert other["order"]["id"] != first["order"]["id"]
    assert len(rows(db_path, "orders")) == 2
    keys = rows(db_path, "idempotency_keys")
    assert all("k-1" not in str(row) and "k-2" not in str(row) for row in keys)  # only hashes are stored


def test_submit_idempotency(wc, db_path):
    propose_users(wc)
    item = wc.checkout(agent="a")["item"]
    result = result_for_item(item["input"])
    first = wc.submit(item["id"], result, agent="a", lease_token=item["lease_token"], idempotency_key="s-1")
    before = table_snapshot(db_path)
    again = wc.submit(item["id"], result, agent="a", lease_token=item["lease_token"], idempotency_key="s-1")
    assert again == first
    assert table_snapshot(db_path) == before
    changed = result_for_item(item["input"], errors=["retry differed"])
    with pytest.raises(Conflict) as info:
        wc.submit(item["id"], changed, agent="a", idempotency_key="s-1", lease_token=item["lease_token"])
    assert (info.value.code, info.value.exit_code) == ("idempotency_mismatch", 6)
    with pytest.raises(IllegalTransition):  # without the key it is simply a second submit
        wc.submit(item["id"], result, agent="a", lease_token=item["lease_token"])
    assert table_snapshot(db_path) == before


def test_approve_idempotency(wc, db_path):
    order_id = propose_users(wc)["order"]["id"]
    work_all(wc, order_id)
    first = wc.approve(order_id, idempotency_key="a-1")
    before, users = table_snapshot(db_path), read_users(db_path)
    again = wc.approve(order_id, idempotency_key="a-1")
    assert again == first
    assert table_snapshot(db_path) == before and read_users(db_path) == users
    with pytest.raises(IllegalTransition):  # a new key is a new request: the order is already completed
        wc.approve(order_id, idempotency_key="a-2")


def test_reject_idempotency(wc, db_path):
    order_id = propose_users(wc)["order"]["id"]
    work_all(wc, order_id)
    first = wc.reject(order_id, reason="bad", requeue=True, idempotency_key="r-1")
    before = table_snapshot(db_path)
    assert wc.reject(order_id, reason="bad", requeue=True, idempotency_key="r-1") == first
    assert table_snapshot(db_path) == before
    for different in (dict(reason="worse", requeue=True), dict(reason="bad", requeue=False)):
        with pytest.raises(Conflict) as info:
            wc.reject(order_id, idempotency_key="r-1", **different)
        assert (info.value.code, info.value.exit_code) == ("idempotency_mismatch", 6)
    assert table_snapshot(db_path) == before


def test_a_failed_request_does_not_consume_its_key(wc, db_path):
    with pytest.raises(Invalid):
        wc.propose("user.data.sync", {"source": "crm", "user_ids": [1], "fields": ["password"]},
                   idempotency_key="k")
    assert rows(db_path, "idempotency_keys") == []
    assert wc.propose("user.data.sync", {"source": "crm", "user_ids": [1]}, idempotency_key="k")["order"]


def test_maintain_purges_keys_older_than_retention(wc, make_wc, clock, db_path):
    payload = {"source": "crm", "user_ids": [1, 2]}
    first = wc.propose("user.data.sync", payload, idempotency_key="old")
    clock.advance(7 * 86400 - 1)
    assert wc.maintain()["idempotency_keys_purged"] == 0
    assert wc.propose("user.data.sync", payload, idempotency_key="old") == first
    clock.advance(2)
    assert wc.maintain()["idempotency_keys_purged"] == 1
    assert rows(db_path, "idempotency_keys") == []
    maintained = events(db_path, "event = 'maintained'")
    assert len(maintained) == 1 and '"keys_purged":1' in maintained[0]["payload"]
    # the key is free again: the same key now makes a new order (and a different request is no mismatch)
    fresh = wc.propose("user.data.sync", {**payload, "batch_size": 1}, idempotency_key="old")
    assert fresh["order"]["id"] != first["order"]["id"]
    # retention comes from the config
    short = make_wc(config=Config(idempotency_days=1))
    clock.advance(86400 + 1)
    assert short.maintain()["idempotency_keys_purged"] == 1


# -- exactly-once apply ------------------------------------------------------------------------------
@pytest.fixture
def app_db(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    make_users(path, 150, filled=True)
    return path


@pytest.fixture
def split(db_path, app_db, make_wc):
    """A store (w.db, no users table) whose target is a separate app.db."""
    return make_wc(config=Config(target_db=str(app_db)))


def marker_rows(path):
    with closing(connect(path)) as conn:
        return [tuple(r) for r in conn.execute(f"SELECT order_id, diff FROM {MARKER_TABLE}").fetchall()]


def test_approve_into_a_separate_target_database(split, db_path, app_db):
    order_id = propose_users(split)["order"]["id"]
    assert "users" not in table_names(db_path)
    work_all(split, order_id)
    response = split.approve(order_id)
    assert response["order"]["state"] == "completed"
    assert read_users(app_db)[150]["company"] == "company-150-new"
    assert [r[0] for r in marker_rows(app_db)] == [order_id]
    assert MARKER_TABLE not in table_names(db_path)


def test_same_file_approve_leaves_a_marker_in_the_store(wc, db_path):
    """The marker commits with orders.diff in the same transaction, so it names that copy instead of
    holding a second one (a 1M-user diff is ~250 MB); a separate target keeps the diff itself."""
    order_id = propose_users(wc)["order"]["id"]
    work_all(wc, order_id)
    diff = wc.approve(order_id)["diff"]
    import json

    assert wc.show(order_id)["order"]["diff"] == diff

    assert [(r[0], json.loads(r[1])) for r in marker_rows(db_path)] == [(order_id, {"stored_in": "orders.diff"})]


@pytest.mark.backends("sqlite")  # blocks the store's commit with SQLite's write lock
def test_apply_is_exactly_once_when_the_store_commit_does_not_happen(split, db_path, app_db):
    """The apply commits into app.db, then the store's own commit fails (its write lock is held by another
    process past the busy timeout). The next approve finds the marker, does not apply again, and completes."""
    order_id = propose_users(split)["order"]["id"]
    work_all(split, order_id)
    users_before = read_users(app_db)
    assert _approve_with_store_commit_blocked(split, db_path, order_id).code == "store_locked"

    # the target holds the apply and its marker; the store never heard of it
    applied = read_users(app_db)
    assert applied[1]["email"] == "email-1-new" and applied != users_before
    assert [r[0] for r in marker_rows(app_db)] == [order_id]
    assert split.status(order_id)["order"]["state"] == "submitted"
    assert events(db_path, "event = 'approved'") == []

    # someone edits a user in the meantime: a second apply would overwrite this
    conn = sqlite3.connect(str(app_db))
    conn.execute("UPDATE users SET email = 'edited-by-hand' WHERE id = 1")
    conn.commit()
    conn.close()

    response = split.approve(order_id)
    assert response["order"] == {"id": order_id, "state": "completed"}
    assert response["diff"]["stats"]["updated"] == 150  # the diff recorded with the one real apply
    assert read_users(app_db)[1]["email"] == "edited-by-hand"
    assert len(marker_rows(app_db)) == 1
    with pytest.raises(IllegalTransition):
        split.approve(order_id)


def test_marker_written_by_a_previous_apply_prevents_a_second_one(split, db_path, app_db):
    """The same situation built by hand: the order's apply and marker are already in the target."""
    from workctl.core.approve import _apply_once
    from workctl.store.target import connect_target
    from workctl.store.sqlite import write_tx
    from workctl.types import ApplyContext, get_type

    order_id = propose_users(split)["order"]["id"]
    work_all(split, order_id)
    shown = split.show(order_id)
    order = {"id": order_id, "type": "user.data.sync", "payload": shown["order"]["payload"]}
    items = [{"id": it["id"], "state": it["state"], "result": it["result"]} for it in shown["items"]]
    target = connect_target(str(app_db))
    with write_tx(target):
        ctx = ApplyContext(target=target, now="2026-01-01T00:00:00.000000Z")
        first_diff, _ = _apply_once(target, get_type("user.data.sync"), ctx, order, items)
    target.execute("UPDATE users SET phone = 'edited-by-hand' WHERE id = 99")
    target.close()

    response = split.approve(order_id)
    assert response["diff"] == first_diff
    assert read_users(app_db)[99]["phone"] == "edited-by-hand"
    assert len(marker_rows(app_db)) == 1
    assert split.show(order_id)["order"]["state"] == "completed"


def _approve_with_store_commit_blocked(split, db_path, order_id):
    """Run approve while another connection holds the store's write lock: the apply commits into the
    target, the store's own commit cannot happen (StoreError, exit 8)."""
    split.session.conn.execute("PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(str(db_path), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError) as info:
            split.approve(order_id)
        assert info.value.exit_code == 8
        return info.value
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        split.session.conn.execute("PRAGMA busy_timeout = 30000")


@pytest.mark.backends("sqlite")  # blocks the store's commit with SQLite's write lock
@pytest.mark.parametrize("requeue", [False, True], ids=["reject", "reject-requeue"])
def test_an_order_already_applied_to_the_target_cannot_be_rejected(split, db_path, app_db, requeue):
    """Regression: after an approve applied into the target but could not record it in the store, a reject
    used to succeed, leaving the store saying 'rejected' (or, with --requeue, re-running the work whose
    new results the next approve would then silently skip because of the marker) while app.db held the
    first results. The reject is refused; approve finishes the job."""
    order_id = propose_users(split)["order"]["id"]
    work_all(split, order_id)
    _approve_with_store_commit_blocked(split, db_path, order_id)
    applied = read_users(app_db)
    before = table_snapshot(db_path)
    with pytest.raises(IllegalTransition) as info:
        split.reject(order_id, reason="approve failed, start over", requeue=requeue)
    assert (info.value.code, info.value.exit_code) == ("already_applied", 6)
    assert "approve" in info.value.message
    assert table_snapshot(db_path) == before
    assert read_users(app_db) == applied
    assert split.approve(order_id)["order"]["state"] == "completed"
    assert len(marker_rows(app_db)) == 1


def test_reject_with_a_separate_target_that_was_not_applied(split, app_db):
    order_id = propose_users(split)["order"]["id"]
    work_all(split, order_id)
    assert split.reject(order_id, reason="wrong users")["order"]["state"] == "rejected"
    assert MARKER_TABLE not in table_names(app_db)
