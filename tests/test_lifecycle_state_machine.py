"""R7 — lifecycle properties: a hypothesis state machine over the whole lifecycle, on a real store file.

Alongside tests/test_leases.py's LeaseMachine (which checks every lease write against a model of the
fence, on task.batch orders), this machine drives both order types, including ``user.data.sync``
orders that really write the users table, through random sequences of propose / checkout (any order,
by type, by order) / heartbeat / submit (valid, invalid, stale or foreign token, idempotency keys) /
release (with and without error) / clock jumps / maintain / retry (item, order) / reject (final,
requeue) / approve (dry run, idempotency key, replay) by four agents.

Every refused operation must leave the store exactly as it was. After every step:

* at most one live lease per item, replayed from the events (no second 'leased' while a lease is open,
  no reclaim before the lease's expiry, no fenced write by anyone but the holder);
* items and orders only in legal states, never in the transient 'approved'/'applied', lease columns set
  exactly when leased;
* each order's state is the one its items derive (lifecycle.derived_order_state), or decided
  (completed: every item completed; rejected: every item rejected);
* 0 <= attempts <= max_attempts;
* every transition has its event, chaining from the first state to the current one;
* every completed order was applied exactly once: one 'applied' event, one marker row, one provenance
  row per change of its diff, and the users table equals a model that applies each approved order's
  results once, in approval order (refused, dry-run and replayed approvals write nothing).

CI runs 50 examples; ``-m slow`` runs 600 (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test


from workctl import Workctl
from workctl.clock import ManualClock
from workctl.config import Config
from workctl.errors import NoWork, WorkctlError
from workctl.core.lifecycle import ITEM_STATES, ORDER_STATES, derived_order_state
from workctl.core.session import ITEM_SELECT
from workctl.store.target import APPLIED_MARKER as MARKER_TABLE
from workctl.types import OrderType, get_type
from helpers import chain_problems, events, lease_violations, make_users

AGENTS = ("a", "b", "c", "d")
FIELDS = ("email", "phone", "company")
USERS = 12
DECIDED = ("completed", "rejected")


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="workctl-r7-")
        self.db = os.path.join(self.dir, "w.db")
        make_users(self.db, USERS, filled=True)
        self.clock = ManualClock()
        self.wc = Workctl(self.db, config=Config(), clock=self.clock)
        self.conn = self.wc.session.conn
        self.orders: list[str] = []
        self.items: list[str] = []
        self.tokens: dict[str, list[str]] = {}  # item -> every token handed out for it, oldest first
        self.submits = 0
        self.model = {uid: dict(zip(FIELDS, row, strict=True)) for uid, row in self._users().items()}
        self.approved_order: list[str] = []

    def teardown(self):
        self.wc.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------------------
    def _users(self) -> dict[int, tuple]:
        return {r[0]: tuple(r[1:]) for r in self.conn.execute(
            f"SELECT id, {', '.join(FIELDS)} FROM users ORDER BY id")}

    def _state(self):
        """Everything a refused operation must leave alone."""
        q = self.conn.execute
        markers = q(f"SELECT * FROM {MARKER_TABLE}").fetchall() if self._has_marker_table() else []
        return (q("SELECT * FROM orders ORDER BY id").fetchall(), q(ITEM_SELECT + " ORDER BY i.n").fetchall(),
                q("SELECT * FROM order_counts ORDER BY order_id").fetchall(),
                q("SELECT count(*), max(id) FROM events").fetchone(), q("SELECT * FROM idempotency_keys").fetchall(),
                self._users(), markers)

    def _has_marker_table(self) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (MARKER_TABLE,)).fetchone() is not None

    def _refused(self, label: str, call) -> object | None:
        """Run an operation; a WorkctlError must have changed nothing. Returns the result or None."""
        before = self._state()
        try:
            result = call()
        except NoWork:
            event(f"{label}: no work")
            return None
        except WorkctlError as exc:
            assert self._state() == before, f"{label} refused ({exc.code}) but changed the store"
            event(f"{label}: refused {exc.code}")
            return None
        event(f"{label}: ok")
        return result

    def _row(self, item_id: str) -> sqlite3.Row:
        return self.wc.session.item_row(item_id)

    def _pick(self, seq, n):
        return seq[n % len(seq)] if seq else None

    def _pick_order(self, pick: int, ready: bool) -> str | None:
        """Any order, or (ready) preferably one that is submitted, so approve/reject get to act."""
        if ready:
            submitted = [o for o in self.orders
                         if self.conn.execute("SELECT state FROM orders WHERE id = ?", (o,)).fetchone()[0] == "submitted"]
            if submitted:
                return self._pick(submitted, pick)
        return self._pick(self.orders, pick)

    def _work_one(self, agent: str, kind: str, order_id: str | None = None) -> bool:
        """A well-behaved agent: check out and submit at once with the current token."""
        try:
            item = self.wc.checkout(order_id, agent=agent)["item"]
        except NoWork:
            return False
        self.tokens.setdefault(item["id"], []).append(item["lease_token"])
        self.submits += 1
        result = self._result(self._row(item["id"]), kind)
        self._refused("well-behaved submit", lambda: self.wc.submit(item["id"], result, agent=agent,
                                                                    lease_token=item["lease_token"]))
        return True

    # -- rules -----------------------------------------------------------------------------------------
    @rule(ids=st.lists(st.integers(1, USERS), min_size=1, max_size=6, unique=True), batch=st.integers(1, 3),
          max_attempts=st.integers(1, 3), fields=st.sets(st.sampled_from(FIELDS), min_size=1),
          ratio=st.sampled_from([0.0, 0.5, 1.0]), priority=st.integers(0, 1))
    def propose_sync(self, ids, batch, max_attempts, fields, ratio, priority):
        made = self.wc.propose("user.data.sync", {"source": "crm", "user_ids": ids, "fields": sorted(fields),
                                                  "batch_size": batch, "max_attempts": max_attempts,
                                                  "min_success_ratio": ratio}, priority=priority)
        self.orders.append(made["order"]["id"])
        self.items += [it["id"] for it in made["items"]]

    @initialize(ids=st.lists(st.integers(1, USERS), min_size=1, max_size=6, unique=True), batch=st.integers(1, 3))
    def first_order(self, ids, batch):
        self.propose_sync(ids, batch, 2, set(FIELDS[:2]), 1.0, 0)

    @rule(agent=st.sampled_from(AGENTS), kind=st.sampled_from(["valid", "valid", "one_failed"]))
    def well_behaved_agent(self, agent, kind):
        self._work_one(agent, kind)

    @rule(pick=st.integers(0, 99))
    def work_an_order_to_the_end(self, pick):
        order_id = self._pick(self.orders, pick)
        if order_id:
            for n in range(10):
                if not self._work_one(AGENTS[n % len(AGENTS)], "valid", order_id):
                    break

    @rule(n=st.integers(1, 3), max_attempts=st.integers(1, 3))
    def propose_tasks(self, n, max_attempts):
        made = self.wc.propose("task.batch", {"tasks": list(range(n)), "max_attempts": max_attempts})
        self.orders.append(made["order"]["id"])
        self.items += [it["id"] for it in made["items"]]

    @rule(agent=st.sampled_from(AGENTS), scope=st.sampled_from(["any", "type", "order"]), pick=st.integers(0, 99),
          ttl=st.sampled_from([None, 100]))
    def checkout(self, agent, scope, pick, ttl):
        kwargs = {}
        if scope == "type":
            kwargs["type_name"] = "user.data.sync" if pick % 2 else "task.batch"
        elif scope == "order" and self.orders:
            kwargs["order_id"] = self._pick(self.orders, pick)
        try:
            item = self.wc.checkout(kwargs.get("order_id"), agent=agent, type_name=kwargs.get("type_name"),
                                    ttl=ttl)["item"]
        except NoWork:
            event(f"checkout by {scope}: no work")
            return
        event(f"checkout by {scope}: ok")
        row = self._row(item["id"])
        assert (row["state"], row["leased_by"], row["lease_token"]) == ("leased", agent, item["lease_token"])
        self.tokens.setdefault(item["id"], []).append(item["lease_token"])

    def _lease_target(self, holder: bool, agent: str, pick: int, token: str):
        leased = [i for i in self.items if self._row(i)["state"] == "leased"]
        if holder and leased:
            item_id = self._pick(leased, pick)
            agent = self._row(item_id)["leased_by"]
        elif self.items:
            item_id = self._pick(self.items, pick)
        else:
            return None
        handed = self.tokens.get(item_id, [])
        lease_token = {"none": None, "current": handed[-1] if handed else None,
                       "stale": handed[0] if len(handed) > 1 else "f" * 32, "bogus": "0" * 32}[token]
        return item_id, agent, lease_token

    @rule(holder=st.booleans(), agent=st.sampled_from(AGENTS), pick=st.integers(0, 99),
          token=st.sampled_from(["none", "current", "stale", "bogus"]),
          kind=st.sampled_from(["valid", "valid", "one_failed", "outside_batch", "key", "key_replay"]))
    def submit(self, holder, agent, pick, token, kind):
        target = self._lease_target(holder, agent, pick, token)
        if target is None:
            return
        item_id, agent, lease_token = target
        row = self._row(item_id)
        self.submits += 1
        result = self._result(row, kind)
        key = f"key-{item_id}" if kind in ("key", "key_replay") else None
        done = self._refused("submit", lambda: self.wc.submit(item_id, result, agent=agent, lease_token=lease_token,
                                                              idempotency_key=key))
        if done is not None:
            assert self._row(item_id)["state"] == "submitted" or kind == "key_replay"
            if kind == "key_replay":  # the same key and request again: the stored response, nothing written
                before = self._state()
                assert self.wc.submit(item_id, result, agent=agent, lease_token=lease_token,
                                      idempotency_key=key) == done
                assert self._state() == before

    def _result(self, row: sqlite3.Row, kind: str) -> dict:
        if row["type"] == "task.batch":
            return {"by": "agent", "n": self.submits} if kind != "outside_batch" else ["not", "an", "object"]
        spec = json.loads(row["input"])
        synced = [{"user_id": uid, "data": {f: f"{f}-{uid}-s{self.submits}" for f in spec["fields"]},
                   "verified": True} for uid in spec["user_ids"]]
        failed = []
        if kind == "one_failed":
            failed = [{"user_id": synced.pop()["user_id"], "error": "not_found: 404"}]
        if kind == "outside_batch":
            synced[0] = {**synced[0], "user_id": USERS + 100}
        return {"success": not failed, "synced_users": synced, "failed_users": failed, "errors": []}

    @rule(holder=st.booleans(), agent=st.sampled_from(AGENTS), pick=st.integers(0, 99),
          token=st.sampled_from(["none", "current", "stale", "bogus"]))
    def heartbeat(self, holder, agent, pick, token):
        target = self._lease_target(holder, agent, pick, token)
        if target is not None:
            item_id, agent, lease_token = target
            self._refused("heartbeat", lambda: self.wc.heartbeat(item_id, agent=agent, lease_token=lease_token))

    @rule(holder=st.booleans(), agent=st.sampled_from(AGENTS), pick=st.integers(0, 99),
          token=st.sampled_from(["none", "current", "stale"]), error=st.sampled_from([None, "source down"]))
    def release(self, holder, agent, pick, token, error):
        target = self._lease_target(holder, agent, pick, token)
        if target is not None:
            item_id, agent, lease_token = target
            self._refused("release", lambda: self.wc.release(item_id, agent=agent, lease_token=lease_token,
                                                             error=error))

    @rule(seconds=st.sampled_from([1, 10, 99, 101, 599, 601, 3600]))
    def clock_jump(self, seconds):
        self.clock.advance(seconds)

    @rule()
    def maintain(self):
        self.wc.maintain()

    @rule(pick=st.integers(0, 99), whole_order=st.booleans())
    def retry(self, pick, whole_order):
        if whole_order and self.orders:
            order_id = self._pick(self.orders, pick)
            self._refused("retry order", lambda: self.wc.retry(order_id=order_id))
        elif self.items:
            item_id = self._pick(self.items, pick)
            self._refused("retry item", lambda: self.wc.retry(item_id))

    @rule(pick=st.integers(0, 99), requeue=st.booleans(), ready=st.booleans())
    def reject(self, pick, requeue, ready):
        if self.orders:
            order_id = self._pick_order(pick, ready)
            self._refused("reject", lambda: self.wc.reject(order_id, reason="not good enough", requeue=requeue))

    @rule(pick=st.integers(0, 99), mode=st.sampled_from(["plain", "dry_run", "key"]), ready=st.booleans())
    def approve(self, pick, mode, ready):
        if not self.orders:
            return
        order_id = self._pick_order(pick, ready)
        shown = self.wc.show(order_id)
        if mode == "dry_run":
            before = self._state()
            self._refused("approve --dry-run", lambda: self.wc.approve(order_id, dry_run=True))
            assert self._state() == before  # a dry run never writes, accepted or not
            return
        key = f"approve-{order_id}" if mode == "key" else None
        before = self._state()
        done = self._refused("approve", lambda: self.wc.approve(order_id, idempotency_key=key))
        if done is None:
            return
        assert done["order"] == {"id": order_id, "state": "completed"}
        if shown["order"]["state"] == "completed":  # a key used by an earlier approve: replayed, not applied
            assert key and order_id in self.approved_order and self._state() == before
            event("approve: replayed by its key")
            return
        self.approved_order.append(order_id)
        if shown["order"]["type"] == "user.data.sync":
            for item in shown["items"]:  # what the model expects: every synced user's data, once
                for entry in item["result"]["synced_users"]:
                    self.model[entry["user_id"]].update(entry["data"])
        if key:
            before = self._state()
            assert self.wc.approve(order_id, idempotency_key=key) == done  # replayed, not applied again
            assert self._state() == before

    # -- invariants --------------------------------------------------------------------------------------
    @invariant()
    def rows_are_legal_and_consistent(self):
        for r in self.conn.execute(ITEM_SELECT):
            assert r["state"] in ITEM_STATES, r["state"]
            assert 0 <= r["attempts"] <= r["max_attempts"], dict(r)
            leased = (r["leased_by"], r["lease_token"], r["lease_expires_at"])
            if r["state"] == "leased":
                assert all(leased) and r["visible_at"] == "", dict(r)
            else:
                assert leased == (None, None, None), dict(r)
            if r["state"] in ("submitted", "accepted", "completed"):
                assert r["result"] is not None and r["submitted_by"], dict(r)
        for order_id, state in self.conn.execute("SELECT id, state FROM orders").fetchall():
            assert state in ORDER_STATES and state not in ("approved", "applied"), state
            present = frozenset(s for (s,) in self.conn.execute(
                "SELECT DISTINCT state FROM items WHERE order_id = ?", (order_id,)))
            if state in DECIDED:
                assert present == {state}, (state, present)
            else:
                assert derived_order_state(state, present) == state, (state, present)
        # The counters the order states are derived from are exactly the items' states.
        for row in self.conn.execute("SELECT * FROM order_counts").fetchall():
            actual = dict(self.conn.execute("SELECT state, count(*) FROM items WHERE order_id = ? GROUP BY state",
                                            (row["order_id"],)).fetchall())
            assert {s: row[s] for s in ITEM_STATES if row[s]} == actual, row["order_id"]
            assert row["state"] == self.conn.execute("SELECT state FROM orders WHERE id = ?",
                                                     (row["order_id"],)).fetchone()[0]

    @invariant()
    def leases_are_never_doubled_and_every_transition_is_logged(self):
        assert lease_violations(events(self.db)) == []
        assert chain_problems(self.db) == []

    @invariant()
    def approved_orders_are_applied_exactly_once(self):
        completed = [r[0] for r in self.conn.execute("SELECT id FROM orders WHERE state = 'completed'")]
        assert sorted(completed) == sorted(self.approved_order)
        applied = [r[0] for r in self.conn.execute("SELECT order_id FROM events WHERE event = 'applied'")]
        assert sorted(applied) == sorted(completed)  # once each, and only the completed ones
        markers = ([r[0] for r in self.conn.execute(f"SELECT order_id FROM {MARKER_TABLE}")]
                   if self._has_marker_table() else [])
        assert sorted(markers) == sorted(completed)
        assert self._users() == {uid: tuple(self.model[uid][f] for f in FIELDS) for uid in self.model}
        if type(get_type("user.data.sync")).record_applied is not OrderType.record_applied:
            for order_id, diff in self.conn.execute(
                    "SELECT id, diff FROM orders WHERE state = 'completed' AND type = 'user.data.sync'"):
                rows = self.conn.execute("SELECT count(*) FROM provenance WHERE order_id = ?", (order_id,)).fetchone()
                assert rows[0] == len(json.loads(diff)["changes"]), order_id


def run_machine(examples: int) -> None:
    run_state_machine_as_test(LifecycleMachine, settings=settings(
        max_examples=examples, stateful_step_count=int(os.environ.get("WORKCTL_R7_STEPS", "35")), deadline=None, derandomize=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))


def test_lifecycle_state_machine():
    run_machine(int(os.environ.get("WORKCTL_R7_EXAMPLES", "50")))


@pytest.mark.slow
def test_lifecycle_state_machine_full():
    run_machine(int(os.environ.get("WORKCTL_R7_EXAMPLES", "600")))


# -- regressions found while building this suite (deterministic interleavings of two actors) --------------
def _sync_order(wc, users=4):
    order_id = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, users + 1)),
                                             "fields": ["email"], "batch_size": 2})["order"]["id"]
    return order_id


def _submit_all(wc, order_id, tag):
    while True:
        try:
            item = wc.checkout(order_id, agent=f"agent-{tag}")["item"]
        except NoWork:
            return
        result = {"success": True, "synced_users": [{"user_id": u, "data": {"email": f"{tag}-{u}"}, "verified": True}
                                                    for u in item["input"]["user_ids"]]}
        wc.submit(item["id"], result, agent=f"agent-{tag}", lease_token=item["lease_token"])


def _emails(path):
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT id, email FROM users WHERE id <= 4"))
    finally:
        conn.close()


@pytest.mark.parametrize("separate", [False, True], ids=["same-file", "separate-target"])
def test_approve_never_applies_results_rejected_while_it_was_reading_them(tmp_path, monkeypatch, separate):
    """Regression. approve reads the order's results, then opens its write transaction and re-checks
    only that the order is 'submitted'. If, in between, the operator rejects with --requeue and agents
    resubmit every item, the order is 'submitted' again and approve used to apply the results it had
    read: the rejected ones (stored next to the new results, which were never applied). The
    interleaving is forced by running the requeue and resubmission from the type's can_approve hook,
    which approve calls between its read and its transaction."""
    db = tmp_path / "w.db"
    target = tmp_path / "app.db" if separate else db
    make_users(target, 4, filled=True)
    config = Config(target_db=str(target) if separate else None)
    clock = ManualClock()
    with Workctl(db, config=config, clock=clock) as wc, Workctl(db, config=config, clock=clock) as other:
        order_id = _sync_order(wc)
        _submit_all(wc, order_id, "rejected")
        sync_type = type(get_type("user.data.sync"))
        original = sync_type.can_approve
        interleaved = []

        def requeue_and_resubmit(self, payload, results):
            if not interleaved:
                interleaved.append(True)
                other.reject(order_id, reason="wrong data", requeue=True)
                _submit_all(other, order_id, "fixed")
            return original(self, payload, results)

        monkeypatch.setattr(sync_type, "can_approve", requeue_and_resubmit)
        before = _emails(target)
        with pytest.raises(WorkctlError) as info:
            wc.approve(order_id)
        assert (info.value.code, info.value.exit_code) == ("order_changed", 6)
        assert "approve again" in info.value.message
        assert _emails(target) == before  # nothing applied, the rejected results least of all
        assert wc.status(order_id)["order"]["state"] == "submitted"
        assert wc.approve(order_id)["order"]["state"] == "completed"
    assert _emails(target) == {u: f"fixed-{u}" for u in range(1, 5)}


def test_reject_cannot_slip_between_a_separate_targets_apply_and_its_commit(tmp_path, monkeypatch):
    """Regression. With a separate target, approve commits the apply (and its marker) there before the
    store; reject refuses an order whose marker exists, but looked for it without a lock. A reject
    --requeue that ran while approve's target transaction was open saw no marker, requeued the order,
    and approve's store commit then failed: the target held the old results and their marker, so the
    rework would never be applied (the marker short-circuits the next apply) and reject refused the
    order from then on. Now reject waits for the target's write lock: it sees the marker and refuses,
    and approve completes."""
    import threading

    db, target = tmp_path / "w.db", tmp_path / "app.db"
    make_users(target, 4, filled=True)
    config = Config(target_db=str(target))
    clock = ManualClock()
    with Workctl(db, config=config, clock=clock) as wc, Workctl(db, config=config, clock=clock) as other:
        order_id = _sync_order(wc)
        _submit_all(wc, order_id, "first")
        sync_type = type(get_type("user.data.sync"))
        original = sync_type.apply
        outcome: dict = {}

        def reject_meanwhile():
            try:
                outcome["reject"] = other.reject(order_id, reason="changed my mind", requeue=True)
            except WorkctlError as exc:
                outcome["reject"] = exc.code

        def apply_while_rejecting(self, ctx, order, items):
            if ctx.dry_run or "thread" in outcome:
                return original(self, ctx, order, items)
            outcome["thread"] = threading.Thread(target=reject_meanwhile)
            outcome["thread"].start()
            outcome["thread"].join(timeout=0.5)  # the reject either finishes now or is held by the target's lock
            return original(self, ctx, order, items)

        monkeypatch.setattr(sync_type, "apply", apply_while_rejecting)
        try:
            approved = wc.approve(order_id)["order"]["state"]
        except WorkctlError as exc:
            approved = exc.code
        outcome["thread"].join(timeout=60)
        state = wc.status(order_id)["order"]["state"]
    # either the approve won (reject refused) or the reject won (nothing applied): never half of each
    assert (approved, outcome["reject"], state) == ("completed", "already_applied", "completed"), \
        (approved, outcome["reject"], state)
    assert _emails(target) == {u: f"first-{u}" for u in range(1, 5)}


def test_a_stale_release_cannot_undo_an_attempt_counted_since_it_read_the_item(tmp_path, monkeypatch):
    """Regression. release computed the attempt count from the row it read before its transaction and
    fenced only on the agent id and an unexpired lease. Two agents sharing an id (the default agent id
    is $USER@host): if the first one's lease expired and the second one reclaimed the item (attempt 2)
    between the first one's read and write, the stale release went through: it ended the second agent's
    live lease and wrote attempts back to 1, so the item could be tried more often than max_attempts.
    Every fenced write now carries the token of the lease it holds, which the reclaim replaced."""
    import workctl.core.leases as leases

    db = tmp_path / "w.db"
    start = ManualClock()
    later = ManualClock(start.now)
    later.advance(601)
    with Workctl(db, config=Config(), clock=start) as first, Workctl(db, config=Config(), clock=later) as second:
        order = first.propose("task.batch", {"tasks": ["t"], "max_attempts": 3})
        item_id = order["items"][0]["id"]
        token = first.checkout(agent="me@host")["item"]["lease_token"]
        original = leases.check_lease
        reclaimed = {}

        def read_then_reclaim(s, *args, **kwargs):
            row = original(s, *args, **kwargs)
            if not reclaimed:  # the lease expires and the other process with the same id reclaims the item
                reclaimed.update(second.checkout(agent="me@host")["item"])
            return row

        monkeypatch.setattr(leases, "check_lease", read_then_reclaim)
        with pytest.raises(WorkctlError) as info:
            first.release(item_id, agent="me@host", error="source down", lease_token=token)
        assert info.value.code == "stale_lease_token" and info.value.exit_code == 6
        row = second.status(order["order"]["id"])["items"][0]
    assert (row["state"], row["attempts"], row["leased_by"]) == ("leased", 2, "me@host")
    assert reclaimed["attempts"] == 2
