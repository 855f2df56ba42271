"""Leases: claim order, TTLs and heartbeats, fencing, expiry and reclaim, attempts, and the claim's query plan."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import closing

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test


from workctl import Workctl
from workctl.core.session import ITEM_SELECT
from workctl.store import sqlite_hotpath
from workctl.clock import ManualClock, after, iso, parse
from workctl.config import Config
from workctl.errors import Conflict, ExitCode, IllegalTransition, LeaseLost, NoWork, NotFound, Usage
from workctl.core.lifecycle import ITEM_TRANSITIONS, derived_order_state
from helpers import connect, events, result_for_item, rows, table_snapshot

BACKENDS = ("sqlite", "postgres")  # the contract suite: every test that uses the store runs on both


def tasks(wc, n, *, priority=0, max_attempts=None):
    """Propose a task.batch order of n tasks."""
    payload = {"tasks": [f"t{i}" for i in range(n)]}
    if max_attempts is not None:
        payload["max_attempts"] = max_attempts
    return wc.propose("task.batch", payload, priority=priority)


def subset(mapping, *keys):
    return {key: mapping[key] for key in keys}


def wait_for_retry(wc, clock, released):
    """An item released with an error may have to wait out a backoff (``retry_at``): until then it is
    not claimable; move the clock to that moment."""
    retry_at = released["item"].get("retry_at")
    if retry_at:
        with pytest.raises(NoWork):
            wc.checkout(agent="someone-early")
        clock.advance((parse(retry_at) - clock()).total_seconds())


def item_row(db, item_id):
    """The item as the engine reads it: its narrow row, its input and its outcome."""
    with closing(connect(db)) as conn:
        return dict(conn.execute(ITEM_SELECT + " WHERE i.id = ?", (item_id,)).fetchone())


# -- claim order ----------------------------------------------------------------------------------
def test_checkout_takes_highest_priority_first_then_oldest(wc, clock):
    low = tasks(wc, 2)
    clock.advance(1)
    high = tasks(wc, 2, priority=5)
    clock.advance(1)
    high_later = tasks(wc, 1, priority=5)
    clock.advance(1)
    mid = tasks(wc, 1, priority=2)
    expected = ([it["id"] for it in high["items"]] + [high_later["items"][0]["id"]] + [mid["items"][0]["id"]]
                + [it["id"] for it in low["items"]])
    got = [wc.checkout(agent="a")["item"]["id"] for _ in expected]
    assert got == expected
    with pytest.raises(NoWork) as info:
        wc.checkout(agent="a")
    assert (info.value.exit_code, info.value.code) == (ExitCode.NO_WORK, "no_items_available")
    assert info.value.exit_code == 3


def test_checkout_scoped_to_an_order(wc):
    first = tasks(wc, 3)
    tasks(wc, 3, priority=9)  # higher priority, but not the order asked for
    got = [wc.checkout(first["order"]["id"], agent="a")["item"] for _ in range(3)]
    assert [it["id"] for it in got] == [it["id"] for it in first["items"]]
    assert {it["order_id"] for it in got} == {first["order"]["id"]}
    with pytest.raises(NoWork, match=f"order {first['order']['id']}"):
        wc.checkout(first["order"]["id"], agent="a")
    with pytest.raises(NotFound) as info:
        wc.checkout("no-such-order", agent="a")
    assert info.value.exit_code == 4


def test_checkout_filtered_by_type(wc):
    sync = wc.propose("user.data.sync", {"source": "crm", "user_ids": [1, 2, 3]})
    tasks(wc, 2, priority=9)
    item = wc.checkout(agent="a", type_name="user.data.sync")["item"]
    assert (item["id"], item["type"]) == (sync["items"][0]["id"], "user.data.sync")
    with pytest.raises(NoWork, match="type user.data.sync"):
        wc.checkout(agent="a", type_name="user.data.sync")
    assert wc.checkout(agent="a", type_name="task.batch")["item"]["type"] == "task.batch"
    with pytest.raises(NotFound) as info:  # an unknown type is a mistake, not an empty queue
        wc.checkout(agent="a", type_name="no.such.type")
    assert (info.value.code, info.value.exit_code) == ("unknown_type", 4)


def test_checkout_response_defaults(wc, clock):
    order = wc.propose("user.data.sync", {"source": "crm", "user_ids": [1, 2, 3]})
    item = wc.checkout(agent="a")["item"]
    assert set(item) == {"id", "order_id", "type", "state", "input", "attempts", "max_attempts",
                         "lease_expires_at", "heartbeat_every_seconds", "lease_token"}
    assert item["state"] == "leased"
    assert item["order_id"] == order["order"]["id"]
    assert item["input"] == {"source": "crm", "user_ids": [1, 2, 3], "fields": ["email", "phone", "company", "name"],
                             "min_success_ratio": 1.0}
    assert (item["attempts"], item["max_attempts"]) == (1, 3)
    assert item["lease_expires_at"] == after(clock(), 600)
    assert item["heartbeat_every_seconds"] == 120
    assert re.fullmatch(r"[0-9a-f]{32}", item["lease_token"])
    row = item_row(wc.db_path, item["id"])
    assert (row["leased_by"], row["lease_token"], row["lease_expires_at"]) == ("a", item["lease_token"],
                                                                               item["lease_expires_at"])


def test_checkout_ttl_and_config_ttl(wc, make_wc, clock):
    tasks(wc, 2)
    assert wc.checkout(agent="a", ttl=30)["item"]["lease_expires_at"] == after(clock(), 30)
    other = make_wc(config=Config(ttl_seconds=45, heartbeat_every_seconds=9))
    item = other.checkout(agent="b")["item"]
    assert (item["lease_expires_at"], item["heartbeat_every_seconds"]) == (after(clock(), 45), 9)


def test_lease_token_is_fresh_for_every_checkout(wc, clock):
    tasks(wc, 2)
    one = wc.checkout(agent="a")["item"]
    two = wc.checkout(agent="a")["item"]
    assert one["lease_token"] != two["lease_token"]
    wc.release(one["id"], agent="a", lease_token=one["lease_token"])
    again = wc.checkout(agent="a")["item"]
    assert again["id"] == one["id"]
    assert again["lease_token"] not in (one["lease_token"], two["lease_token"])


# -- heartbeat ------------------------------------------------------------------------------------
def test_heartbeat_extends_the_lease(wc, clock, db_path):
    tasks(wc, 1)
    item = wc.checkout(agent="a")["item"]
    clock.advance(500)
    beat = wc.heartbeat(item["id"], agent="a", lease_token=item["lease_token"])
    assert beat == {"item": {"id": item["id"], "state": "leased", "lease_expires_at": after(clock(), 600),
                             "heartbeat_every_seconds": 120}}
    row = item_row(db_path, item["id"])
    assert row["lease_expires_at"] == after(clock(), 600)
    beat_event = events(db_path, "event = 'heartbeat'")[-1]
    assert (beat_event["created_at"], json.loads(beat_event["payload"])) == (
        iso(clock()), {"lease_expires_at": after(clock(), 600)})
    clock.advance(500)  # past the first expiry, inside the extended one
    with pytest.raises(NoWork):
        wc.checkout(agent="b")
    assert wc.heartbeat(item["id"], agent="a", ttl=60, lease_token=item["lease_token"])["item"]["lease_expires_at"] == after(clock(), 60)
    assert wc.submit(item["id"], {"ok": True}, agent="a", lease_token=item["lease_token"])["item"]["state"] == "submitted"
    assert [e["event"] for e in events(db_path, "item_id = ?", (item["id"],))] == [
        "leased", "heartbeat", "heartbeat", "submitted"]


# -- fencing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["heartbeat", "release", "submit"])
def test_another_agent_cannot_touch_a_lease(wc, db_path, action):
    tasks(wc, 1)
    item = wc.checkout(agent="a")["item"]
    before = table_snapshot(db_path)
    call = {"heartbeat": lambda: wc.heartbeat(item["id"], agent="b", lease_token=item["lease_token"]),
            "release": lambda: wc.release(item["id"], agent="b", lease_token=item["lease_token"]),
            "submit": lambda: wc.submit(item["id"], {"ok": True}, agent="b", lease_token=item["lease_token"])}[action]
    with pytest.raises(Conflict) as info:
        call()
    assert (info.value.code, info.value.exit_code) == ("lease_held_by_other", 6)
    assert "'a'" in info.value.message
    assert table_snapshot(db_path) == before


@pytest.mark.parametrize("action", ["heartbeat", "release", "submit"])
def test_an_expired_lease_is_lost_and_nothing_is_written(wc, clock, db_path, action):
    tasks(wc, 1)
    item = wc.checkout(agent="a")["item"]
    clock.advance(600)  # expiry is exclusive: at lease_expires_at the lease is already gone
    before = table_snapshot(db_path)
    call = {"heartbeat": lambda: wc.heartbeat(item["id"], agent="a", lease_token=item["lease_token"]),
            "release": lambda: wc.release(item["id"], agent="a", lease_token=item["lease_token"]),
            "submit": lambda: wc.submit(item["id"], {"ok": True}, agent="a",
                                        lease_token=item["lease_token"])}[action]
    with pytest.raises(LeaseLost) as info:
        call()
    assert (info.value.code, info.value.exit_code) == ("lease_expired", 6)
    assert table_snapshot(db_path) == before


def test_operations_on_items_that_are_not_leased(wc):
    order = tasks(wc, 1)
    item_id = order["items"][0]["id"]
    with pytest.raises(IllegalTransition) as info:
        wc.submit(item_id, {"ok": True}, agent="a", lease_token="0" * 32)
    assert (info.value.code, info.value.exit_code) == ("not_leased", 6)
    with pytest.raises(NotFound):
        wc.heartbeat("no-such-item", agent="a", lease_token="0" * 32)


@pytest.mark.parametrize("action", ["heartbeat", "release", "submit"])
@pytest.mark.parametrize("token", [None, ""])
def test_a_fenced_write_without_a_token_is_refused(wc, db_path, action, token):
    """Invariant 2: no write path accepts a missing token (exit 2, saying how to pass it)."""
    tasks(wc, 1)
    item = wc.checkout(agent="a")["item"]
    before = table_snapshot(db_path)
    call = {"heartbeat": lambda: wc.heartbeat(item["id"], agent="a", lease_token=token),
            "release": lambda: wc.release(item["id"], agent="a", lease_token=token),
            "submit": lambda: wc.submit(item["id"], {"ok": True}, agent="a", lease_token=token)}[action]
    with pytest.raises(Usage) as info:
        call()
    assert (info.value.code, info.value.exit_code) == ("lease_token_required", 2)
    assert "WORKCTL_LEASE_TOKEN" in info.value.message
    assert table_snapshot(db_path) == before


def test_expired_lease_is_reissued_by_checkout_and_the_late_submit_refused(wc, clock, db_path):
    order = tasks(wc, 1)
    first = wc.checkout(agent="a1")["item"]
    clock.advance(601)
    second = wc.checkout(agent="a2")["item"]  # no maintain: the claim reclaims the expired lease itself
    assert second["id"] == first["id"]
    assert second["attempts"] == 2
    assert second["lease_token"] != first["lease_token"]
    expired = events(db_path, "item_id = ? AND event = 'lease_expired'", (first["id"],))
    assert len(expired) == 1
    assert (expired[0]["actor_type"], expired[0]["from_state"], expired[0]["to_state"]) == ("system", "leased", "queued")
    assert '"agent":"a1"' in expired[0]["payload"]

    before = table_snapshot(db_path)
    with pytest.raises(Conflict) as info:  # the first agent comes back late
        wc.submit(first["id"], {"late": True}, agent="a1", lease_token=first["lease_token"])
    assert (info.value.code, info.value.exit_code) == ("lease_held_by_other", 6)
    with pytest.raises(Conflict):
        wc.submit(first["id"], {"late": True}, agent="a1", lease_token=first["lease_token"])
    assert table_snapshot(db_path) == before
    row = item_row(db_path, first["id"])
    assert (row["state"], row["leased_by"], row["result"]) == ("leased", "a2", None)

    assert wc.submit(second["id"], {"ok": True}, agent="a2", lease_token=second["lease_token"])["order"] == {
        "id": order["order"]["id"], "state": "submitted"}
    assert item_row(db_path, first["id"])["result"] == '{"ok":true}'


def test_a_stale_lease_token_is_refused_even_for_the_same_agent(wc, clock, db_path):
    tasks(wc, 1)
    old = wc.checkout(agent="a")["item"]
    clock.advance(601)
    new = wc.checkout(agent="a")["item"]
    assert new["id"] == old["id"] and new["lease_token"] != old["lease_token"]
    before = table_snapshot(db_path)
    for call in (lambda: wc.submit(old["id"], {"v": "old"}, agent="a", lease_token=old["lease_token"]),
                 lambda: wc.heartbeat(old["id"], agent="a", lease_token=old["lease_token"]),
                 lambda: wc.release(old["id"], agent="a", lease_token=old["lease_token"])):
        with pytest.raises(LeaseLost) as info:
            call()
        assert (info.value.code, info.value.exit_code) == ("stale_lease_token", 6)
    assert table_snapshot(db_path) == before
    assert wc.submit(new["id"], {"v": "new"}, agent="a", lease_token=new["lease_token"])["item"]["state"] == "submitted"


# -- attempts -------------------------------------------------------------------------------------
def test_max_attempts_expiries_fail_the_item_then_maintain_dead_letters_and_retry_revives(wc, clock, db_path):
    order = tasks(wc, 1, max_attempts=2)
    order_id, item_id = order["order"]["id"], order["items"][0]["id"]
    for attempt, agent in ((1, "a1"), (2, "a2")):
        item = wc.checkout(agent=agent)["item"]
        assert (item["id"], item["attempts"]) == (item_id, attempt)
        clock.advance(601)
    with pytest.raises(NoWork):  # the third claim finds the exhausted item and fails it instead
        wc.checkout(agent="a3")
    row = item_row(db_path, item_id)
    assert (row["state"], row["attempts"], row["leased_by"], row["lease_token"]) == ("failed", 2, None, None)
    assert '"code":"max_attempts_exceeded"' in row["error"] and '"last_agent":"a2"' in row["error"]
    assert wc.status(order_id)["order"]["state"] == "failed"

    result = wc.maintain()
    assert result["items_dead_lettered"] == 1
    assert item_row(db_path, item_id)["state"] == "dead_lettered"
    assert wc.status(order_id)["order"]["state"] == "dead_lettered"
    with pytest.raises(NoWork):
        wc.checkout(agent="a3")

    retried = wc.retry(item_id)
    assert retried == {"retried": [item_id], "order": {"id": order_id, "state": "in_progress"}}
    row = item_row(db_path, item_id)
    assert (row["state"], row["attempts"], row["error"]) == ("queued", 0, None)
    item = wc.checkout(agent="a4")["item"]
    assert (item["id"], item["attempts"]) == (item_id, 1)
    with pytest.raises(IllegalTransition) as info:
        wc.retry(item_id)
    assert info.value.code == "not_retryable"


def test_maintain_reclaims_expired_leases_in_bulk(wc, clock, db_path):
    spare = tasks(wc, 2, max_attempts=3)
    last = tasks(wc, 1, max_attempts=1)
    a = wc.checkout(agent="a")["item"]
    b = wc.checkout(agent="b")["item"]
    c = wc.checkout(agent="c")["item"]
    assert {a["id"], b["id"]} == {it["id"] for it in spare["items"]} and c["id"] == last["items"][0]["id"]
    clock.advance(599)
    assert wc.maintain()["leases_reclaimed"] == 0
    clock.advance(1)
    assert wc.maintain() == {"leases_reclaimed": 2, "items_failed": 1, "items_dead_lettered": 1,
                             "idempotency_keys_purged": 0, "events_pruned": 0}
    for it in (a, b):
        row = item_row(db_path, it["id"])
        assert (row["state"], row["attempts"], row["leased_by"], row["visible_at"]) == ("queued", 1, None, "")
    assert item_row(db_path, c["id"])["state"] == "dead_lettered"
    assert wc.status(spare["order"]["id"])["order"]["state"] == "in_progress"
    assert wc.checkout(agent="d")["item"]["attempts"] == 2


def test_dead_lettering_waits_for_the_configured_delay(wc, make_wc, clock, db_path):
    delayed = make_wc(config=Config(dead_letter_after_seconds=3600))
    item_id = tasks(wc, 1, max_attempts=1)["items"][0]["id"]
    delayed.checkout(agent="a")
    clock.advance(601)
    assert delayed.maintain()["items_failed"] == 1
    assert item_row(db_path, item_id)["state"] == "failed"
    clock.advance(3599)
    assert delayed.maintain()["items_dead_lettered"] == 0
    clock.advance(1)
    assert delayed.maintain()["items_dead_lettered"] == 1
    assert item_row(db_path, item_id)["state"] == "dead_lettered"


def test_release_without_error_does_not_count_an_attempt(wc, db_path):
    item_id = tasks(wc, 1, max_attempts=1)["items"][0]["id"]
    for _ in range(3):  # more releases than max_attempts: none of them is a failed attempt
        item = wc.checkout(agent="a")["item"]
        assert item["attempts"] == 1
        released = wc.release(item_id, agent="a", lease_token=item["lease_token"])
        assert subset(released["item"], "id", "state", "attempts", "max_attempts") == {
            "id": item_id, "state": "queued", "attempts": 0, "max_attempts": 1}
        assert released["item"].get("retry_at") is None  # claimable again at once (the loop checks it)
    row = item_row(db_path, item_id)
    assert (row["state"], row["attempts"], row["leased_by"], row["lease_token"], row["error"]) == (
        "queued", 0, None, None, None)


def test_release_with_error_counts_and_fails_at_the_last_attempt(wc, clock, db_path):
    order = tasks(wc, 1, max_attempts=2)
    item_id = order["items"][0]["id"]
    token = wc.checkout(agent="a")["item"]["lease_token"]
    first = wc.release(item_id, agent="a", error="upstream 500", lease_token=token)
    assert subset(first["item"], "id", "state", "attempts", "max_attempts") == {
        "id": item_id, "state": "queued", "attempts": 1, "max_attempts": 2}
    assert '"message":"upstream 500"' in item_row(db_path, item_id)["error"]
    wait_for_retry(wc, clock, first)
    again = wc.checkout(agent="a")["item"]
    assert again["attempts"] == 2
    last = wc.release(item_id, agent="a", error="upstream 500 again", lease_token=again["lease_token"])
    assert subset(last["item"], "id", "state", "attempts", "max_attempts") == {
        "id": item_id, "state": "failed", "attempts": 2, "max_attempts": 2}
    assert last["item"].get("retry_at") is None
    assert last["order"] == {"id": order["order"]["id"], "state": "failed"}
    with pytest.raises(NoWork):
        wc.checkout(agent="a")


def test_a_submitted_item_is_never_reclaimed(wc, clock, db_path):
    order = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, 101))})
    item = wc.checkout(agent="a")["item"]
    wc.submit(item["id"], result_for_item(item["input"]), agent="a", lease_token=item["lease_token"])
    row = item_row(db_path, item["id"])
    assert (row["state"], row["leased_by"], row["lease_token"], row["lease_expires_at"]) == (
        "submitted", None, None, None)
    clock.advance(10 * 600)
    other = wc.checkout(agent="b")["item"]
    assert other["id"] == order["items"][1]["id"]
    with pytest.raises(NoWork):
        wc.checkout(agent="c")
    before = rows(db_path, "items")
    assert wc.maintain()["leases_reclaimed"] == 0  # b's lease is fresh; a's item is no lease at all
    assert rows(db_path, "items") == before
    assert item_row(db_path, item["id"])["state"] == "submitted"
    assert events(db_path, "event = 'lease_expired'") == []


# -- the claim's query plan ------------------------------------------------------------------------
@pytest.mark.backends("sqlite")
def test_claim_queries_seek_a_claim_index(wc):
    """With thousands of finished and waiting items, every claim query is one ordered index walk:
    no table scan and no temporary sort of all claimable rows."""
    done = tasks(wc, 2500)
    conn = wc.session.conn
    conn.execute("BEGIN IMMEDIATE")  # test setup: finish the first order in bulk
    conn.execute("UPDATE items SET state = 'completed' WHERE order_id = ?", (done["order"]["id"],))
    conn.execute("COMMIT")
    waiting = tasks(wc, 2000, priority=1)
    wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, 151)), "batch_size": 1})
    for i in range(20):
        wc.checkout(agent=f"a{i}")  # some live leases among the claimable rows
    now = iso(wc.clock())
    statements = {"any": (sqlite_hotpath.CLAIM_ANY, ()), "order": (sqlite_hotpath.CLAIM_ORDER, (waiting["order"]["id"],)),
                  "type": (sqlite_hotpath.CLAIM_TYPE, ("user.data.sync",))}
    for scope, (sql, where) in statements.items():
        params = ("agent", "token", now, now, *where, now)
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        assert any(re.search(r"USING (COVERING )?INDEX items_claim", step) for step in plan), (scope, plan)
        assert not any(re.search(r"SCAN items(?! USING)", step) for step in plan), (scope, plan)
        assert not any("TEMP B-TREE" in step for step in plan), (scope, plan)


@pytest.mark.backends("postgres")
def test_postgres_claims_walk_their_partial_index(wc):
    """The PostgreSQL claim's picks (postgres_schema.CLAIM_PICKS, what wc_claim runs) walk their partial
    claim index in order and stop at the first lockable row: no sequential scan, no sort."""
    from workctl.store.postgres_schema import CLAIM_PICKS

    done = tasks(wc, 2500)
    conn = wc.session.conn
    conn.execute("UPDATE items SET state = 'completed' WHERE order_id = ?", (done["order"]["id"],))
    waiting = tasks(wc, 2000, priority=1)
    wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, 151)), "batch_size": 1})
    for i in range(20):
        wc.checkout(agent=f"a{i}")
    conn.execute("ANALYZE items")
    now = iso(wc.clock())
    scopes = {"any": "items_claim", "order": "items_claim_order", "type": "items_claim_type"}
    for scope, index in scopes.items():
        sql = (CLAIM_PICKS[scope].replace("p_now", "?").replace("p_order", "?").replace("p_type", "?")
               + " LIMIT 1 FOR UPDATE SKIP LOCKED")
        params = {"any": (now,), "order": (waiting["order"]["id"], now), "type": ("user.data.sync", now)}[scope]
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql, params))
        assert f"Index Scan using {index} on items" in plan, (scope, plan)
        assert "Seq Scan" not in plan and "Sort" not in plan, (scope, plan)


# -- a model-checked random walk --------------------------------------------------------------------
AGENTS = ("a", "b", "c")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
DECIDED = ("approved", "applied", "completed", "rejected")


def expected_lease_problem(row, agent, token, now):
    """Why a lease write by this agent (with this token) must be refused, or None if it must succeed."""
    if not token:
        return "lease_token_required"
    if row["state"] != "leased":
        return "not_leased"
    if row["leased_by"] != agent:
        return "lease_held_by_other"
    if row["lease_expires_at"] <= now:
        return "lease_expired"
    if token != row["lease_token"]:
        return "stale_lease_token"
    return None


class LeaseMachine(RuleBasedStateMachine):
    """Random interleavings of propose / checkout / heartbeat / release / submit / time / maintain / retry /
    approve / reject by three agents on a real store. Each operation is checked against the rows as they
    were just before it (a refused one must change nothing), and the invariants after every step."""

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="workctl-walk-")
        self.db = os.path.join(self.dir, "w.db")
        self.clock = ManualClock()
        self.wc = Workctl(self.db, config=Config(), clock=self.clock, create=True)
        self.items: list[str] = []
        self.orders: list[str] = []
        self.tokens: dict[tuple[str, str], str] = {}

    def teardown(self):
        self.wc.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def now(self):
        return iso(self.clock())

    def row(self, item_id):
        return dict(self.wc.session.item_row(item_id))

    @rule(n=st.integers(1, 3), max_attempts=st.integers(1, 3), priority=st.integers(0, 2))
    def propose(self, n, max_attempts, priority):
        made = self.wc.propose("task.batch", {"tasks": list(range(n)), "max_attempts": max_attempts}, priority=priority)
        self.orders.append(made["order"]["id"])
        self.items += [it["id"] for it in made["items"]]

    @rule(agent=st.sampled_from(AGENTS), ttl=st.sampled_from([None, 100]))
    def checkout(self, agent, ttl):
        self._checkout(agent, ttl)

    @rule(agent=st.sampled_from(AGENTS))
    def well_behaved_agent(self, agent):
        """Check out and submit at once (moves orders on to approve/reject)."""
        item = self._checkout(agent, None)
        if item is not None:
            self.wc.submit(item["id"], {"by": agent}, agent=agent, lease_token=item["lease_token"])
            event("submit accepted")

    def _checkout(self, agent, ttl):
        now = self.now()
        rows = list(map(self.row, self.items))
        # The claim first reclaims expired leases (the earliest RECLAIM_BATCH of them): each goes back to
        # the queue, or fails if it has no attempt left. Then it takes the first queued and visible item
        # (no retry backoff pending) in priority-then-age order, failing exhausted ones on the way.
        expired = sorted((r for r in rows if r["state"] == "leased" and r["lease_expires_at"] <= now),
                         key=lambda r: (r["lease_expires_at"], r["n"]))[:sqlite_hotpath.RECLAIM_BATCH]
        failed_expired = [r["id"] for r in expired if r["attempts"] >= r["max_attempts"]]
        requeued = {r["id"] for r in expired if r["attempts"] < r["max_attempts"]}
        claimable = sorted((r for r in rows if (r["state"] == "queued" and r["visible_at"] <= now)
                            or r["id"] in requeued), key=lambda r: (-r["priority"], r["n"]))
        exhausted, expected = list(failed_expired), None
        for r in claimable:
            if r["attempts"] >= r["max_attempts"]:
                exhausted.append(r["id"])
            else:
                expected = r
                break
        try:
            item = self.wc.checkout(agent=agent, ttl=ttl)["item"]
        except NoWork:
            item = None
        reclaim = expected is not None and expected["state"] == "leased"
        event(f"checkout {'reclaimed an expired lease' if reclaim else 'ok' if expected else 'no work'}"
              + (" after failing an exhausted item" if exhausted else ""))
        for item_id in exhausted:  # passed over on the way: failed, not leased
            assert self.row(item_id)["state"] == "failed"
        if item is None:
            assert expected is None
            return None
        assert expected is not None and item["id"] == expected["id"]
        assert item["attempts"] == expected["attempts"] + 1
        assert item["lease_expires_at"] == after(self.clock(), ttl or 600)
        self.tokens[(item["id"], agent)] = item["lease_token"]
        return item

    @rule(holder=st.booleans(), agent=st.sampled_from(AGENTS), pick=st.integers(0, 1000),
          token=st.sampled_from(["none", "mine", "bogus"]),
          action=st.sampled_from(["heartbeat", "release", "release_error", "submit"]))
    def lease_write(self, holder, agent, pick, token, action):
        """Half the time as the holder of some lease (live or expired), else any agent on any item."""
        leased = [r for r in map(self.row, self.items) if r["state"] == "leased"]
        if holder and leased:
            chosen = leased[pick % len(leased)]
            item_id, agent = chosen["id"], chosen["leased_by"]
        elif self.items:
            item_id = self.items[pick % len(self.items)]
        else:
            return
        lease_token = {"none": None, "mine": self.tokens.get((item_id, agent)), "bogus": "0" * 32}[token]
        before_row, before = self.row(item_id), table_snapshot(self.db)
        problem = expected_lease_problem(before_row, agent, lease_token, self.now())
        try:
            if action == "heartbeat":
                self.wc.heartbeat(item_id, agent=agent, lease_token=lease_token)
            elif action == "submit":
                self.wc.submit(item_id, {"by": agent}, agent=agent, lease_token=lease_token)
            else:
                self.wc.release(item_id, agent=agent, lease_token=lease_token,
                                error="boom" if action == "release_error" else None)
        except (Conflict, Usage) as exc:
            assert exc.code == problem, (exc.code, problem)
            assert table_snapshot(self.db) == before
            event(f"{action} refused: {exc.code}")
            return
        event(f"{action} accepted")
        assert problem is None, f"{action} by {agent} should have been refused: {problem}"
        row = self.row(item_id)
        if action == "heartbeat":
            assert row["state"] == "leased" and row["lease_expires_at"] == after(self.clock(), 600)
        elif action == "submit":
            assert (row["state"], row["submitted_by"], row["leased_by"]) == ("submitted", agent, None)
        elif action == "release":
            assert (row["state"], row["attempts"]) == ("queued", before_row["attempts"] - 1)
        else:
            failed = before_row["attempts"] >= before_row["max_attempts"]
            assert (row["state"], row["attempts"]) == ("failed" if failed else "queued", before_row["attempts"])
            assert failed or row["visible_at"] == "" or row["visible_at"] > self.now()

    @rule(seconds=st.sampled_from([1, 99, 100, 300, 599, 600, 601]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @rule()
    def maintain(self):
        now = self.now()
        expired = [r for r in map(self.row, self.items) if r["state"] == "leased" and r["lease_expires_at"] <= now]
        done = self.wc.maintain()
        assert done["leases_reclaimed"] == sum(1 for r in expired if r["attempts"] < r["max_attempts"])
        assert done["items_failed"] == len(expired) - done["leases_reclaimed"]
        assert not any(self.row(i)["state"] == "failed" for i in self.items)  # dead-lettered at once

    @rule(pick=st.integers(0, 1000))
    def retry(self, pick):
        if not self.items:
            return
        item_id = self.items[pick % len(self.items)]
        if self.row(item_id)["state"] in ("failed", "dead_lettered"):
            self.wc.retry(item_id)
            assert (self.row(item_id)["state"], self.row(item_id)["attempts"]) == ("queued", 0)
        else:
            with pytest.raises(IllegalTransition):
                self.wc.retry(item_id)

    @rule(pick=st.integers(0, 1000), decision=st.sampled_from(["approve", "reject", "requeue"]))
    def decide(self, pick, decision):
        if not self.orders:
            return
        order_id = self.orders[pick % len(self.orders)]
        ready = self.wc.status(order_id)["order"]["state"] == "submitted"
        call = {"approve": lambda: self.wc.approve(order_id),
                "reject": lambda: self.wc.reject(order_id, reason="no"),
                "requeue": lambda: self.wc.reject(order_id, reason="again", requeue=True)}[decision]
        event(f"{decision} {'accepted' if ready else 'refused'}")
        if ready:
            call()
        else:
            with pytest.raises(IllegalTransition):
                call()

    @invariant()
    def rows_are_consistent(self):
        conn = self.wc.session.conn
        for r in map(self.row, self.items):
            assert 0 <= r["attempts"] <= r["max_attempts"], r
            if r["state"] == "leased":
                assert r["leased_by"] and r["lease_token"] and r["lease_expires_at"] and r["visible_at"] == "", r
            else:
                assert (r["leased_by"], r["lease_token"], r["lease_expires_at"]) == (None, None, None), r
            if r["state"] == "queued":  # claimable now, or (released with an error) after a backoff
                assert r["visible_at"] == "" or ISO.match(r["visible_at"]), r
        for order_id in self.orders:
            state = conn.execute("SELECT state FROM orders WHERE id = ?", (order_id,)).fetchone()[0]
            present = {s for (s,) in conn.execute("SELECT DISTINCT state FROM items WHERE order_id = ?", (order_id,))}
            if state not in DECIDED:
                assert derived_order_state(state, frozenset(present)) == state, (state, present)
            elif state == "completed":
                assert present == {"completed"}
            elif state == "rejected":
                assert present == {"rejected"}

    @invariant()
    def every_item_transition_is_logged(self):
        trail = self.wc.session.conn.execute(
            "SELECT item_id, from_state, to_state FROM events WHERE entity = 'item' AND to_state IS NOT NULL "
            "ORDER BY id").fetchall()
        state = {item_id: "queued" for item_id in self.items}
        for item_id, src, dst in trail:
            assert state[item_id] == src and dst in ITEM_TRANSITIONS[src], (item_id, src, dst)
            state[item_id] = dst
        assert state == {i: self.row(i)["state"] for i in self.items}


def test_random_walks_keep_leases_fenced_and_the_lifecycle_consistent():
    run_state_machine_as_test(LeaseMachine, settings=settings(
        max_examples=int(os.environ.get("WALK_EXAMPLES", "100")), stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))


def test_an_order_whose_only_failure_was_dead_lettered_ends_dead_lettered(wc, clock, db_path):
    """Regression (found by the random walk): one task expires at its last attempt and maintain
    dead-letters it while the other task is still queued; when the other task is then submitted, the
    order used to move to 'failed' and stay there (no failed item left, so nothing ever moved it on)."""
    order = tasks(wc, 2, max_attempts=1)
    order_id = order["order"]["id"]
    wc.checkout(agent="a", ttl=100)
    clock.advance(100)
    assert wc.maintain()["items_dead_lettered"] == 1
    assert wc.status(order_id)["order"]["state"] == "in_progress"
    item = wc.checkout(agent="b")["item"]
    response = wc.submit(item["id"], {"ok": True}, agent="b", lease_token=item["lease_token"])
    assert response["order"] == {"id": order_id, "state": "dead_lettered"}
    trail = [(e["event"], e["from_state"], e["to_state"])
             for e in events(db_path, "order_id = ? AND entity = 'order'", (order_id,))]
    assert trail[-2:] == [("failed", "in_progress", "failed"), ("dead_lettered", "failed", "dead_lettered")]
    retried = wc.retry(order_id=order_id)
    assert retried["order"] == {"id": order_id, "state": "in_progress"}
