"""The transition table, the guarded moves on a real store, order-state derivation, and the audit trail."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest


from workctl.core import lifecycle
from workctl.clock import iso, parse
from workctl.errors import ExitCode, IllegalTransition, NoWork
from workctl.core.lifecycle import (ITEM_STATES, ITEM_TRANSITIONS, ORDER_STATES, ORDER_TRANSITIONS, Actor,
                               derived_order_state, move_item, move_order, refresh_order)
from workctl.store import open_store
from helpers import events, result_for_item

BACKENDS = ("sqlite", "postgres")  # the contract suite: every test that uses the store runs on both

# The contract, written out edge by edge (independently of workctl.core.lifecycle) as (from, to, event).
EXPECTED_ORDER_EDGES = {
    (None, "queued", "proposed"),
    ("queued", "in_progress", "started"),
    ("in_progress", "submitted", "submitted"),
    ("in_progress", "failed", "failed"),
    ("submitted", "approved", "approved"),
    ("submitted", "rejected", "rejected"),
    ("submitted", "queued", "requeued"),
    ("approved", "applied", "applied"),
    ("applied", "completed", "completed"),
    ("failed", "in_progress", "retried"),
    ("failed", "dead_lettered", "dead_lettered"),
    ("dead_lettered", "in_progress", "retried"),
    # workctl cancel: any order that was not applied
    *((state, "cancelled", "cancelled") for state in ("queued", "in_progress", "submitted", "failed", "dead_lettered")),
}
EXPECTED_ITEM_EDGES = {
    (None, "queued", "planned"),
    ("queued", "leased", "leased"),
    ("queued", "failed", "failed"),
    ("leased", "queued", "released"),
    ("leased", "submitted", "submitted"),
    ("leased", "failed", "failed"),
    ("submitted", "accepted", "accepted"),
    ("submitted", "queued", "requeued"),
    ("submitted", "rejected", "rejected"),
    ("accepted", "completed", "completed"),
    ("failed", "queued", "retried"),
    ("failed", "dead_lettered", "dead_lettered"),
    ("dead_lettered", "queued", "retried"),
    # its order was cancelled: every item not finished goes with it
    *((state, "cancelled", "cancelled") for state in ("queued", "leased", "submitted", "failed", "dead_lettered")),
}
# Event names a caller may give instead of the table's default (same from/to, a more precise reason).
ITEM_EVENT_ALIASES = {("leased", "queued"): {"released", "lease_expired"}}

CASES = [("order", ORDER_STATES, ORDER_TRANSITIONS, EXPECTED_ORDER_EDGES),
         ("item", ITEM_STATES, ITEM_TRANSITIONS, EXPECTED_ITEM_EDGES)]


def _edges(table: dict[str | None, dict[str, str]]) -> set[tuple[str | None, str, str]]:
    return {(src, dst, name) for src, targets in table.items() for dst, name in targets.items()}


# -- (1) the table ------------------------------------------------------------------------------
@pytest.mark.parametrize("entity,states,table,expected", CASES, ids=["order", "item"])
def test_transition_table_is_the_contract(entity, states, table, expected):
    assert _edges(table) == expected
    # every state has a row (terminal states an empty one), and nothing outside the state list appears
    assert set(table) == {None, *states}
    assert {dst for _, dst, _ in expected} <= set(states)
    assert {s for s, nxt in table.items() if s and not nxt} == {"completed", "rejected", "cancelled"}


@pytest.mark.parametrize("entity,states,table,expected", CASES, ids=["order", "item"])
def test_check_accepts_exactly_the_table(entity, states, table, expected):
    allowed = {(src, dst): name for src, dst, name in expected}
    accepted = refused = 0
    for current in (None, *states):
        for target in states:
            if (current, target) in allowed:
                assert lifecycle.check(entity, current, target) == allowed[(current, target)]
                accepted += 1
            else:
                with pytest.raises(IllegalTransition) as info:
                    lifecycle.check(entity, current, target)
                assert info.value.exit_code == ExitCode.CONFLICT == 6
                assert info.value.code == "illegal_transition"
                assert info.value.details == [{"entity": entity, "from": current, "to": target}]
                refused += 1
    assert accepted == len(expected)
    assert accepted + refused == (len(states) + 1) * len(states)


def test_check_names_the_allowed_targets_in_its_message():
    with pytest.raises(IllegalTransition, match=r"allowed from 'submitted': approved, cancelled, queued, rejected"):
        lifecycle.check("order", "submitted", "completed")
    with pytest.raises(IllegalTransition, match=r"none \(terminal state\)"):
        lifecycle.check("item", "completed", "queued")


# -- move_item / move_order on a real store -----------------------------------------------------
@pytest.fixture
def store(db_path: Path):
    """A migrated store with one order and one item, inserted directly; returns the connection."""
    conn = open_store(str(db_path), create=True)
    if conn.dialect == "sqlite":
        conn.row_factory = None  # plain tuples, for comparisons
    conn.execute("INSERT INTO orders (id, type, state, payload, requested_by, item_count, created_at, updated_at) "
                  "VALUES ('o1', 'task.batch', 'queued', '{}', 'user:t', 1, 't0', 't0')")
    conn.execute("INSERT INTO items (id, order_id, seq, type, state, max_attempts, updated_at) "
                  "VALUES ('i1', 'o1', 0, 'task.batch', 'queued', 3, 't0')")
    conn.execute("INSERT INTO item_inputs (n, input) SELECT n, '{}' FROM items WHERE id = 'i1'")
    conn.execute("INSERT INTO order_counts (order_id, state, queued) VALUES ('o1', 'queued', 1)")
    yield conn
    conn.close()


def _force(conn: sqlite3.Connection, table: str, row_id: str, state: str) -> None:
    """Test setup only: put a row into a state without going through the lifecycle (and keep the order's
    counters true to it: the one item is in ``state``)."""
    conn.execute(f"UPDATE {table} SET state = ? WHERE id = ?", (state, row_id))
    if table == "items":
        counts = ", ".join(f"{st} = {int(st == state)}" for st in ITEM_STATES)
        conn.execute(f"UPDATE order_counts SET {counts} WHERE order_id = 'o1'")
    else:
        conn.execute("UPDATE order_counts SET state = ? WHERE order_id = ?", (state, row_id))


def _row(conn: sqlite3.Connection, table: str, row_id: str) -> tuple:
    return conn.execute(f"SELECT * FROM {table} WHERE id = ?", (row_id,)).fetchone()


def _state(conn: sqlite3.Connection, table: str, row_id: str) -> str:
    return conn.execute(f"SELECT state FROM {table} WHERE id = ?", (row_id,)).fetchone()[0]


def _event_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM events").fetchone()[0]


def _move(entity: str, conn: sqlite3.Connection, current: str, target: str) -> None:
    # Deliberately in autocommit mode (no surrounding transaction to roll back): a refused move
    # must not have written anything by itself.
    if entity == "item":
        move_item(conn, item_id="i1", order_id="o1", current=current, target=target, now="t1",
                  actor=Actor("agent", "a1"))
    else:
        move_order(conn, order_id="o1", current=current, target=target, now="t1", actor=Actor("user", "u1"))


@pytest.mark.parametrize("entity,states,table,expected", CASES, ids=["order", "item"])
def test_moves_on_a_real_store_follow_the_table(store, entity, states, table, expected):
    sql_table, row_id = ("items", "i1") if entity == "item" else ("orders", "o1")
    allowed = {(src, dst): name for src, dst, name in expected if src is not None}
    for current in states:
        for target in states:
            _force(store, sql_table, row_id, current)
            before_row, before_events = _row(store, sql_table, row_id), _event_count(store)
            if (current, target) in allowed:
                _move(entity, store, current, target)
                assert _state(store, sql_table, row_id) == target
                event = store.execute("SELECT entity, event, from_state, to_state, created_at FROM events "
                                      "ORDER BY id DESC LIMIT 1").fetchone()
                assert event == (entity, allowed[(current, target)], current, target, "t1")
                assert _event_count(store) == before_events + 1
            else:
                with pytest.raises(IllegalTransition) as info:
                    _move(entity, store, current, target)
                assert info.value.exit_code == 6
                assert _row(store, sql_table, row_id) == before_row, f"{current}->{target} wrote the row"
                assert _event_count(store) == before_events, f"{current}->{target} wrote an event"


@pytest.mark.parametrize("entity", ["order", "item"])
def test_move_is_a_compare_and_set_on_the_current_state(store, entity):
    """A legal pair whose 'from' is no longer the row's state (someone moved it first) writes nothing."""
    sql_table, row_id = ("items", "i1") if entity == "item" else ("orders", "o1")
    _force(store, sql_table, row_id, "submitted")
    before_row, before_events = _row(store, sql_table, row_id), _event_count(store)
    current, target = ("queued", "leased") if entity == "item" else ("queued", "in_progress")
    with pytest.raises(IllegalTransition, match="changed concurrently") as info:
        _move(entity, store, current, target)
    assert info.value.exit_code == 6
    assert _row(store, sql_table, row_id) == before_row
    assert _event_count(store) == before_events


def test_guarded_item_move_returns_false_and_writes_nothing(store):
    _force(store, "items", "i1", "leased")
    store.execute("UPDATE items SET leased_by = 'a1' WHERE id = 'i1'")
    before_row, before_events = _row(store, "items", "i1"), _event_count(store)
    moved = move_item(store, item_id="i1", order_id="o1", current="leased", target="submitted", now="t1",
                      actor=Actor("agent", "a2"), guard=" AND leased_by = ?", guard_params=("a2",))
    assert moved is False
    assert _row(store, "items", "i1") == before_row
    assert _event_count(store) == before_events


def test_move_refuses_columns_outside_the_transition_set(store):
    with pytest.raises(ValueError):
        move_item(store, item_id="i1", order_id="o1", current="queued", target="leased", now="t1",
                  actor=Actor("agent", "a1"), sets={"state": "completed"})
    assert _state(store, "items", "i1") == "queued"
    assert _event_count(store) == 0


# -- (2) derived_order_state --------------------------------------------------------------------
@pytest.mark.parametrize("current,present,expected", [
    # nothing to derive from
    ("queued", set(), "queued"),
    ("in_progress", set(), "in_progress"),
    # untouched orders stay queued; any lease or partial progress means in progress
    ("queued", {"queued"}, "queued"),
    ("queued", {"leased"}, "in_progress"),
    ("queued", {"queued", "leased"}, "in_progress"),
    ("queued", {"queued", "submitted"}, "in_progress"),
    ("in_progress", {"queued"}, "in_progress"),
    ("in_progress", {"leased", "submitted"}, "in_progress"),
    # every item done -> submitted (from any pre-approval state)
    ("in_progress", {"submitted"}, "submitted"),
    ("queued", {"submitted"}, "submitted"),
    ("in_progress", {"submitted", "accepted", "completed"}, "submitted"),
    ("failed", {"submitted"}, "submitted"),
    # failures: an item still in play keeps the order in progress; otherwise the order fails
    ("in_progress", {"failed", "leased"}, "in_progress"),
    ("in_progress", {"failed", "queued", "submitted"}, "in_progress"),
    ("in_progress", {"failed", "submitted"}, "failed"),
    ("in_progress", {"failed"}, "failed"),
    ("failed", {"failed", "dead_lettered"}, "failed"),
    # dead letters: a failed order whose failures were dead-lettered is dead-lettered
    ("failed", {"dead_lettered", "submitted"}, "dead_lettered"),
    ("dead_lettered", {"dead_lettered"}, "dead_lettered"),
    # regression: this used to derive 'failed', and a later refresh would have said 'dead_lettered';
    # nothing refreshed it again, so the order stayed 'failed' with no failed item
    ("in_progress", {"dead_lettered", "submitted"}, "dead_lettered"),
    ("queued", {"dead_lettered"}, "dead_lettered"),
    # retried items bring failed / dead-lettered orders back into progress
    ("failed", {"queued", "submitted"}, "in_progress"),
    ("dead_lettered", {"queued"}, "in_progress"),
    ("dead_lettered", {"queued", "dead_lettered"}, "in_progress"),
])
def test_derived_order_state(current, present, expected):
    assert derived_order_state(current, frozenset(present)) == expected


@pytest.mark.parametrize("current", ["submitted", "approved", "applied", "completed", "rejected"])
@pytest.mark.parametrize("present", [set(), {"queued"}, {"failed"}, {"submitted"}, {"leased", "dead_lettered"}])
def test_orders_from_submitted_on_move_only_by_approve_or_reject(current, present):
    assert derived_order_state(current, frozenset(present)) == current


def test_derivation_is_settled_after_one_step():
    """refresh_order derives once; so the derived state must itself be a fixed point of the derivation."""
    import itertools

    for current in ORDER_STATES:
        for size in range(1, len(ITEM_STATES) + 1):
            for present in itertools.combinations(ITEM_STATES, size):
                target = derived_order_state(current, frozenset(present))
                assert derived_order_state(target, frozenset(present)) == target, (current, present, target)


def test_every_derived_target_is_reachable_through_the_table():
    """refresh_order walks the table from the current state to the derived one; that path must exist."""
    import itertools

    for current in ORDER_STATES:
        for size in range(len(ITEM_STATES) + 1):
            for present in itertools.combinations(ITEM_STATES, size):
                target = derived_order_state(current, frozenset(present))
                if target != current:
                    path = lifecycle.path_to(current, target)
                    assert path[-1] == target
                    for src, dst in zip([current, *path], path, strict=False):
                        lifecycle.check("order", src, dst)


def test_refresh_order_takes_two_hops_and_logs_both(store):
    """An order still 'queued' whose items are all submitted goes queued -> in_progress -> submitted."""
    _force(store, "items", "i1", "submitted")
    with store.transaction():
        assert refresh_order(store, "o1", now="t9") == "submitted"
    assert store.execute("SELECT state, submitted_at FROM orders WHERE id = 'o1'").fetchone() == ("submitted", "t9")
    logged = store.execute("SELECT event, from_state, to_state, actor_type, actor_id FROM events "
                           "WHERE entity = 'order' ORDER BY id").fetchall()
    assert logged == [("started", "queued", "in_progress", "system", "workctl"),
                      ("submitted", "in_progress", "submitted", "system", "workctl")]


# -- (3) every transition of a full flow is in the audit trail ----------------------------------
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _chain_problems(entity: str, trail: list[dict], start: str | None, final: str) -> list[str]:
    table = ORDER_TRANSITIONS if entity == "order" else ITEM_TRANSITIONS
    problems, state = [], start
    for ev in trail:
        pair = (ev["from_state"], ev["to_state"])
        if ev["from_state"] != state:
            problems.append(f"event {ev['id']} {ev['event']} starts from {ev['from_state']}, but state was {state}")
        if ev["to_state"] not in table.get(ev["from_state"], {}):
            problems.append(f"event {ev['id']} records an illegal transition {pair}")
        else:
            names = {table[ev["from_state"]][ev["to_state"]]} | ITEM_EVENT_ALIASES.get(pair, set())
            if ev["event"] not in names:
                problems.append(f"event {ev['id']} names {pair} '{ev['event']}', expected one of {names}")
        if ev["actor_type"] not in ("agent", "user", "system") or not ev["actor_id"]:
            problems.append(f"event {ev['id']} has no proper actor: {ev['actor_type']!r}/{ev['actor_id']!r}")
        if not ISO.match(ev["created_at"] or ""):
            problems.append(f"event {ev['id']} created_at {ev['created_at']!r} is not a UTC timestamp")
        state = ev["to_state"]
    if state != final:
        problems.append(f"the trail ends in {state}, but the row is {final}")
    return problems


def test_every_transition_of_a_full_flow_writes_an_event(wc, make_wc, clock, db_path):
    """Propose, lease, heartbeat, release (with and without error), expiry + reclaim, submit, reject and
    requeue, resubmit, approve; a second order that fails, is dead-lettered, retried and rejected.
    Afterwards each order's and item's events, in order, chain from its first state to its current one."""
    times = {}

    def tick(label: str) -> None:
        clock.advance(7)
        times[label] = iso(clock())

    tick("propose")
    order = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, 151))})
    order_id = order["order"]["id"]
    first, second, third = (it["id"] for it in order["items"])

    tick("lease-1")
    item = wc.checkout(agent="a1")["item"]
    assert item["id"] == first
    tick("heartbeat")
    wc.heartbeat(first, agent="a1", lease_token=item["lease_token"])
    tick("release")
    wc.release(first, agent="a1", lease_token=item["lease_token"])
    tick("lease-2")
    token = wc.checkout(agent="a1")["item"]["lease_token"]
    tick("release-error")
    released = wc.release(first, agent="a1", error="source timed out", lease_token=token)
    if released["item"].get("retry_at"):  # a failed attempt may wait out a backoff before its next claim
        clock.now = parse(released["item"]["retry_at"])
    tick("lease-3")
    wc.checkout(agent="a2")
    clock.advance(601)
    tick("reclaim")
    item = wc.checkout(agent="a3")["item"]
    assert (item["id"], item["attempts"]) == (first, 3)
    wc.submit(first, result_for_item(item["input"]), agent="a3", lease_token=item["lease_token"])
    for agent in ("a4", "a5"):
        tick(f"submit-{agent}")
        leased = wc.checkout(agent=agent)["item"]
        wc.submit(leased["id"], result_for_item(leased["input"]), agent=agent, lease_token=leased["lease_token"])
    assert wc.status(order_id)["order"]["state"] == "submitted"

    tick("requeue")
    wc.reject(order_id, reason="wrong source data", requeue=True)
    assert wc.status(order_id)["order"]["state"] == "queued"
    # attempts are kept on requeue: the first item has used 3 of 3, so it fails at its next claim
    for agent in ("b1", "b2"):
        tick(f"rework-{agent}")
        leased = wc.checkout(agent=agent)["item"]
        wc.submit(leased["id"], result_for_item(leased["input"]), agent=agent, lease_token=leased["lease_token"])
    with pytest.raises(NoWork):
        wc.checkout(agent="b3")
    assert wc.show(order_id)["items"][0]["state"] == "failed"
    tick("retry")
    wc.retry(first)
    tick("rework-first")
    leased = wc.checkout(agent="b3")["item"]
    wc.submit(leased["id"], result_for_item(leased["input"]), agent="b3", lease_token=leased["lease_token"])
    tick("approve")
    wc.approve(order_id)

    # A second order: one task with a single attempt that expires, is dead-lettered, retried, rejected.
    tick("propose-2")
    other = wc.propose("task.batch", {"tasks": ["t"], "max_attempts": 1})
    other_id, other_item = other["order"]["id"], other["items"][0]["id"]
    wc.checkout(agent="c1")
    clock.advance(601)
    tick("maintain")
    assert wc.maintain()["items_dead_lettered"] == 1
    tick("retry-2")
    wc.retry(order_id=other_id)
    token = wc.checkout(agent="c2")["item"]["lease_token"]
    wc.submit(other_item, {"done": True}, agent="c2", lease_token=token)
    tick("reject-2")
    wc.reject(other_id, reason="not needed", requeue=False)

    trail = events(db_path)
    transitions = [e for e in trail if e["entity"] in ("order", "item") and e["to_state"] is not None]
    problems = []
    final_orders = {order_id: "completed", other_id: "rejected"}
    for oid, final in final_orders.items():
        assert wc.status(oid)["order"]["state"] == final
        own = [e for e in transitions if e["entity"] == "order" and e["order_id"] == oid]
        problems += _chain_problems("order", own, None, final)
        # items are created in bulk: one 'planned' event per order states how many, all queued
        planned = [e for e in trail if e["order_id"] == oid and e["event"] == "planned"]
        assert len(planned) == 1 and planned[0]["actor_type"] == "system"
        items = wc.show(oid)["items"]
        assert '"item_count":%d' % len(items) in planned[0]["payload"]
        for it in items:
            problems += _chain_problems("item", [e for e in transitions if e["item_id"] == it["id"]],
                                        "queued", it["state"])
    assert problems == []

    def only(**match):
        found = [e for e in trail if all(e[k] == v for k, v in match.items())]
        assert len(found) == 1, (match, found)
        return found[0]

    # who did what, and when (the clock at the moment of the transition)
    assert only(order_id=order_id, event="proposed")["actor_type"] == "user"
    assert only(order_id=order_id, event="proposed")["created_at"] == times["propose"]
    released = only(item_id=first, event="released", created_at=times["release"])
    assert (released["actor_type"], released["actor_id"]) == ("agent", "a1")
    expired = only(item_id=first, event="lease_expired")
    assert (expired["actor_type"], expired["actor_id"], expired["created_at"]) == ("system", "workctl", times["reclaim"])
    assert '"agent":"a2"' in expired["payload"]
    heartbeat = only(item_id=first, event="heartbeat")
    assert (heartbeat["actor_id"], heartbeat["created_at"]) == ("a1", times["heartbeat"])
    approved = only(order_id=order_id, event="approved")
    assert (approved["actor_type"], approved["actor_id"], approved["created_at"]) == ("user", "operator", times["approve"])
    applied = only(order_id=order_id, event="applied")
    assert applied["actor_type"] == "system" and '"diff"' in applied["payload"]
    requeued = [e for e in trail if e["event"] == "requeued"]
    assert {e["entity"] for e in requeued} == {"order", "item"} and len(requeued) == 4
    assert all(e["created_at"] == times["requeue"] and e["actor_type"] == "user" for e in requeued)
    dead = only(item_id=other_item, event="dead_lettered")
    assert (dead["actor_type"], dead["created_at"]) == ("system", times["maintain"])
    retried = [e for e in trail if e["event"] == "retried" and e["order_id"] == other_id]
    assert {e["entity"] for e in retried} == {"order", "item"}
    assert all(e["actor_type"] == "user" and e["created_at"] == times["retry-2"] for e in retried)
    assert [e["event"] for e in transitions if e["item_id"] == first].count("leased") == 5
