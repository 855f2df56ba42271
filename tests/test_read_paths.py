"""The read paths at any size: ``log``/``show`` stream and page (``--limit``, ``--since``, ``--nl``, "… N more"),
``status ORDER`` pages its items with counters and an ETA, global ``status`` reads the per-order counters
(equal to a GROUP BY over the items after random operations), and ``maintain`` prunes events in short
transactions that never rescan what they pruned. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random

import pytest

from workctl.config import Config
from workctl.core.maintain import prune_events
from workctl.states import ITEM_STATES
from helpers import query, run

BACKENDS = ("sqlite", "postgres")


def tasks(wc, n, **extra):
    return wc.propose("task.batch", {"tasks": [f"t{i}" for i in range(n)], **extra})["order"]["id"]


def work(wc, clock, order_id, n):
    """Check out and submit n items of the order, one second apart (distinct event times)."""
    for _ in range(n):
        clock.advance(1)
        item = wc.checkout(order_id, agent="a")["item"]
        wc.submit(item["id"], {"ok": True}, agent="a", lease_token=item["lease_token"])


def nl(text):
    return [json.loads(line) for line in text.splitlines()]


def test_log_pages_with_limit_and_since_and_says_how_many_more(wc, clock, db_path):
    order_id = tasks(wc, 4)
    work(wc, clock, order_id, 3)
    everything = wc.log(order_id)
    assert len(everything) > 6

    first = run(db_path, "log", order_id, "--nl", "--limit", "3")
    assert first.exit_code == 0
    assert [e["id"] for e in nl(first.stdout)] == [e["id"] for e in everything[:3]]
    assert f"… {len(everything) - 3} more" in first.stderr  # stdout holds JSON lines only

    as_json = run(db_path, "log", order_id, "--json", "--limit", "3").json
    assert as_json == {"events": everything[:3], "more": len(everything) - 3}
    assert run(db_path, "log", order_id, "--json").json == {"events": everything}  # whole, streamed

    since = everything[5]["created_at"]
    later = run(db_path, "log", order_id, "--nl", "--since", since)
    assert nl(later.stdout) == [e for e in everything if e["created_at"] >= since]
    assert "more" not in later.stderr

    human = run(db_path, "log", order_id, "--limit", "2")
    lines = human.stdout.splitlines()
    assert len(lines) == 3 and lines[-1].startswith(f"… {len(everything) - 2} more")

    bad = run(db_path, "log", order_id, "--since", "yesterday")
    assert bad.exit_code == 2 and "ISO-8601" in bad.stderr


def test_show_cuts_the_table_and_streams_every_item_with_nl_or_json(wc, db_path):
    order_id = tasks(wc, 130)
    full = wc.show(order_id)

    human = run(db_path, "show", order_id)
    assert human.exit_code == 0
    assert "… 30 more" in human.stdout and '"task": "t99"' in human.stdout  # the 100th row
    assert '"task": "t100"' not in human.stdout

    lines = run(db_path, "show", order_id, "--nl")
    assert nl(lines.stdout) == full["items"] and lines.stderr == ""

    assert run(db_path, "show", order_id, "--json").json == full
    page = run(db_path, "show", order_id, "--json", "--limit", "10").json
    assert page == {"order": full["order"], "items": full["items"][:10], "items_more": 120}


def test_status_of_an_order_pages_its_items_and_estimates_the_finish(wc, clock, db_path):
    order_id = tasks(wc, 12)
    assert wc.status(order_id)["eta"] is None  # nothing done yet: no rate to go by
    work(wc, clock, order_id, 4)  # started at the first checkout (+1 s), 4 done 4 s later... 1/s
    status = wc.status(order_id, limit=5)
    assert [it["seq"] for it in status["items"]] == [0, 1, 2, 3, 4] and status["items_more"] == 7
    assert status["counts"] == {**dict.fromkeys(ITEM_STATES, 0), "queued": 8, "submitted": 4}
    assert status["progress"] == {"done": 4, "total": 12}
    # started at t+1 (the first lease), now t+4: 4 items in 3 s, 8 left → 6 s
    assert status["eta"] == {"remaining": 8, "items_per_second": 1.333, "seconds": 6.0,
                             "finishes_at": "2026-01-01T00:00:10.000000Z"}

    human = run(db_path, "status", order_id, "--limit", "3", env={"WORKCTL_NOW": "2026-01-01T00:00:04Z"})
    text = " ".join(human.stdout.split())  # rich wraps at the terminal's width
    assert human.exit_code == 0 and "… 9 more items" in text and "4/12 items done" in text
    assert "about 6 s left at 1.333 items/s" in text


def _group_by(db_path, order_id=None):
    where, params = ("WHERE order_id = ?", (order_id,)) if order_id else ("", ())
    counted = dict(query(db_path, f"SELECT state, count(*) FROM items {where} GROUP BY state", params))
    return {state: counted.get(state, 0) for state in ITEM_STATES}


def test_status_counters_equal_a_group_by_over_items_after_random_operations(wc, clock, db_path):
    rng = random.Random(15)
    orders, leased = [], []
    for step in range(120):
        move = rng.choice(["propose", "checkout", "checkout", "submit", "release", "cancel", "expire", "retry"])
        if move == "propose" or not orders:
            orders.append(tasks(wc, rng.randint(1, 6), max_attempts=2))
        elif move == "checkout":
            try:
                leased.append(wc.checkout(agent=f"a{step}", ttl=30)["item"])
            except Exception:  # noqa: BLE001 — nothing to lease, or its order was cancelled meanwhile
                pass
        elif move in ("submit", "release") and leased:
            item = leased.pop(rng.randrange(len(leased)))
            try:
                if move == "submit":
                    wc.submit(item["id"], {"ok": step}, agent=item["leased_by"], lease_token=item["lease_token"])
                else:
                    wc.release(item["id"], agent=item["leased_by"], error="boom", lease_token=item["lease_token"])
            except Exception:  # noqa: BLE001 — the lease expired or the order was cancelled: refused, as it should
                pass
        elif move == "cancel":
            try:
                wc.cancel(rng.choice(orders), reason="random")
            except Exception:  # noqa: BLE001 — not cancellable in its state
                pass
        elif move == "expire":
            clock.advance(31)
            wc.maintain()
        elif move == "retry":
            try:
                wc.retry(order_id=rng.choice(orders))
            except Exception:  # noqa: BLE001 — nothing to retry
                pass
        if step % 20 == 19:
            assert wc.status()["items"] == _group_by(db_path)
    assert wc.status()["items"] == _group_by(db_path)
    for order_id in orders:
        assert wc.status(order_id)["counts"] == _group_by(db_path, order_id), order_id


def _finished_orders_with_events(wc, clock, count):
    made = []
    for _ in range(count):
        order_id = tasks(wc, 3)
        clock.advance(1)
        wc.cancel(order_id, reason="done with it")
        made.append(order_id)
    return made


def test_maintain_prunes_in_short_transactions_of_at_most_a_batch_and_never_rescans(wc, make_wc, clock, db_path):
    old = _finished_orders_with_events(wc, clock, 6)
    old_events = query(db_path, "SELECT count(*) FROM events WHERE order_id IS NOT NULL")[0][0]
    clock.advance(3 * 86400)
    young = _finished_orders_with_events(wc, clock, 2)
    kept = query(db_path, "SELECT id FROM events WHERE order_id IN (?, ?) ORDER BY id", tuple(young))
    clock.advance(86400 + 1)  # the old ones are 4 days old, the young ones 1 day: event_days = 2
    cutoff = "2026-01-03T00:00:30.000000Z"

    session = make_wc(config=Config(event_days=2)).session
    batches = []
    for pruned in prune_events(session, cutoff, batch=7):
        assert not session.conn.in_transaction  # each batch committed: no write lock held between them
        batches.append(pruned)
    assert sum(batches) == old_events and all(0 < b <= 7 for b in batches)
    assert len(batches) == -(-old_events // 7)  # as few transactions as the batch size allows
    assert query(db_path, "SELECT id FROM events WHERE order_id IN (?, ?) ORDER BY id", tuple(young)) == kept
    assert query(db_path, f"SELECT count(*) FROM events WHERE order_id IN ({', '.join('?' * 6)})", tuple(old)) == [(0,)]
    assert list(prune_events(session, cutoff, batch=7)) == []  # nothing pruned twice

    # the command does the same, and its dry run counts without deleting
    again = _finished_orders_with_events(wc, clock, 1)
    clock.advance(3 * 86400)
    pruner = make_wc(config=Config(event_days=2))
    expected = query(db_path, "SELECT count(*) FROM events WHERE order_id = ?", (again[0],))[0][0]
    assert pruner.maintain(dry_run=True)["events_pruned"] == expected + len(kept)  # the young ones are old now
    assert query(db_path, "SELECT count(*) FROM events WHERE order_id = ?", (again[0],)) == [(expected,)]
    assert pruner.maintain()["events_pruned"] == expected + len(kept)


@pytest.mark.parametrize("limit", [1, 2])
def test_failures_listing_cut_by_limit_says_how_many_more(wc, db_path, limit):
    order_id = tasks(wc, 1)
    conn = wc.session.conn
    with conn.transaction():
        for n in range(3):
            conn.execute("INSERT INTO sync_failures (order_id, item_id, user_id, source, error_class, message, "
                         "attempt, created_at) VALUES (?, ?, ?, 'crm', 'not_found', 'gone', 1, ?)",
                         (order_id, "i", n, f"2026-01-01T00:00:0{n}.000000Z"))
    page = run(db_path, "failures", order_id, "--json", "--limit", str(limit)).json
    assert [f["user_id"] for f in page["failures"]] == list(range(3 - limit, 3)) and page["more"] == 3 - limit
    assert f"… {3 - limit} more" in run(db_path, "failures", order_id, "--limit", str(limit)).stdout
    since = run(db_path, "failures", order_id, "--json", "--since", "2026-01-01T00:00:01Z").json
    assert [f["user_id"] for f in since["failures"]] == [1, 2] and since["more"] == 0


def test_status_and_show_leave_a_large_payload_to_show_json(wc, db_path):
    order_id = tasks(wc, 12_000)  # a payload of about 100 KB: status and the table do not read it whole
    status = wc.status(order_id, limit=1)
    assert status["order"]["payload"] is None and status["order"]["payload_omitted"] is True
    assert status["order"]["payload_head"].startswith('{"tasks":') and len(status["order"]["payload_head"]) == 200
    assert status["items_more"] == 11_999
    human = run(db_path, "show", order_id, "--limit", "1")
    assert "(large: --json shows it all)" in human.stdout and "… 11999 more" in human.stdout
    whole = run(db_path, "show", order_id, "--json", "--limit", "1").json
    assert len(whole["order"]["payload"]["tasks"]) == 12_000
