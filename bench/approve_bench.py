"""P3: `approve` of a user.data.sync order that updates N users (diff, changes and provenance recorded),
against a raw `executemany` UPDATE of the same rows with the same values in one transaction.

    python bench/approve_bench.py [--users 100000] [--runs 3]

Set-up (untimed): a store whose own file holds a `users` table of N users; one order syncing email,
phone and company of all of them (default batch size 50, so N/50 items), every item checked out and
submitted through the library API with a new value for every field. That file is then copied once per
run and per variant, so every timed operation starts from the same bytes:

* workctl: `Workctl.approve(order_id)`: everything approve does, in its transaction
  (synchronous=FULL for that commit, as approve sets it);
* baseline: one connection, `PRAGMA synchronous=FULL`, `BEGIN IMMEDIATE`, one `executemany`
  `UPDATE users SET email=?, phone=?, company=? WHERE id=?` of the N rows, `COMMIT`.

The figure is baseline time / approve time (higher is better; 1.0 would be "as fast as the raw write").

Lock time (issue 12): one more approve, timed from inside: how long it holds the store's write lock
(``BEGIN IMMEDIATE`` to ``COMMIT``, every write transaction of the approve), how long its preparation
before the lock takes, and the longest wait of a second process-like connection that takes the write
lock in a loop meanwhile (what a concurrent ``checkout`` waits).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Iterator

from _common import median, other_writer, out_path, table, verdict, write

TARGET = 0.5
EQUAL_TARGET = 0.8  # against the equal-work baseline (issue 15)
FIELDS = ["email", "phone", "company"]


def value(field: str, user_id: int) -> str:
    return f"{field}-{user_id}-new"


def build(path: str, users: int) -> str:
    from workctl import Workctl
    from workctl.config import Config

    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT, phone TEXT, company TEXT)")
    conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                     ((i, f"User {i}", f"user{i}@old.example", f"+1-555-{i:07d}", "Old Co")
                      for i in range(1, users + 1)))
    conn.commit()
    conn.close()
    with Workctl(path, config=Config(), create=True) as wc:
        order = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, users + 1)),
                                              "fields": FIELDS})["order"]["id"]
        while True:
            try:
                item = wc.checkout(order, agent="bench")["item"]
            except Exception:  # NoWork: all submitted
                break
            result = {"success": True, "errors": [], "synced_users": [
                {"user_id": u, "data": {f: value(f, u) for f in FIELDS}, "verified": True}
                for u in item["input"]["user_ids"]]}
            wc.submit(item["id"], result, agent="bench", lease_token=item["lease_token"])
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return order


def copy(src: str, dst: str) -> str:
    shutil.copyfile(src, dst)
    return dst


def time_approve(path: str, order: str) -> tuple[float, dict]:
    from workctl import Workctl
    from workctl.config import Config

    with Workctl(path, config=Config(), create=True) as wc:
        _ = wc.session  # open and check the store before the clock starts, as for the baseline's connect
        started = time.perf_counter()
        response = wc.approve(order)
        elapsed = time.perf_counter() - started
    return elapsed, response


def breakdown(path: str, order: str) -> dict[str, float]:
    """One more approve (untimed in the figure) with timers around its phases: where the time goes."""
    from workctl import jsonio
    from workctl.core import approve as orders
    from workctl.types.user_data_sync import UserDataSync

    spent: dict[str, float] = {}
    originals: list[tuple[object, str, object]] = []

    def timer(owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)
        originals.append((owner, name, original))

        def timed(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - started

        setattr(owner, name, timed)

    timer(orders, "_prepare", "prepare (no lock): read users + provenance, parse, normalise, diff, encode")
    timer(UserDataSync, "stage_applied", "stage (no long lock): provenance rows, 5,000 per transaction")
    timer(orders, "_commit", "the write transaction, all of it (the lock)")
    timer(UserDataSync, "apply", "  in it: the guarded executemany UPDATE of the users")
    timer(orders, "_finish", "  in it: order/item transitions + events, orders.diff")
    timer(UserDataSync, "record_applied", "  in it: record_applied (commit the staged provenance)")
    try:
        elapsed, response = time_approve(path, order)
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    inside = sum(t for name, t in spent.items() if name.startswith("  in it"))
    spent["  in it: the rest (checks, marker, COMMIT)"] = spent["the write transaction, all of it (the lock)"] - inside
    spent["the rest: read items and results, checks"] = elapsed - sum(
        t for name, t in spent.items() if not name.startswith("  in it"))
    started = time.perf_counter()
    text = jsonio.dumps(response["diff"])
    spent[f"(encoding the diff once: {len(text) / 1e6:.1f} MB of JSON; prepare does it, outside the lock)"] = (
        time.perf_counter() - started)
    spent["total approve"] = elapsed
    return spent


def lock_time(path: str, order: str) -> dict[str, float]:
    """Approve once while another connection takes the write lock in a loop: approve's lock hold, its
    preparation before the lock, and the longest wait of the other connection."""
    from workctl.core import approve as approving

    held: list[float] = []
    prepared: list[float] = []
    original_tx, original_prepare = approving.write_tx, approving._prepare

    @contextmanager
    def timed_tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        with original_tx(conn) as inside:
            started = time.perf_counter()  # BEGIN IMMEDIATE has returned: the lock is ours
            yield inside
        held.append(time.perf_counter() - started)  # the with's exit ran COMMIT

    def timed_prepare(*args: Any) -> Any:
        started = time.perf_counter()
        try:
            return original_prepare(*args)
        finally:
            prepared.append(time.perf_counter() - started)

    approving.write_tx, approving._prepare = timed_tx, timed_prepare  # type: ignore[assignment]
    try:
        with other_writer(path) as waits:
            elapsed, _ = time_approve(path, order)
    finally:
        approving.write_tx, approving._prepare = original_tx, original_prepare  # type: ignore[assignment]
    return {"approve_s": elapsed, "prepare_s": sum(prepared), "lock_held_s": sum(held),
            "lock_held_max_s": max(held), "other_writer_max_wait_s": max(waits)}


def time_equal_work(path: str, order: str, *, wal: bool = False) -> dict[str, float]:
    """The equal-work baseline (issue 15), built in steps on one stdlib connection: read and parse the
    order's results; read the current users and diff them; then, in one write transaction, the UPDATE of
    the changed rows, the diff stored once (``orders.diff``) and one provenance row per change. Reads
    happen before the lock, as approve's preparation does. ``wal``: checkpoints off, to count WAL bytes."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {0 if wal else 10000}")
    started = time.perf_counter()
    new: dict[int, tuple[dict[str, str], str]] = {}
    for item_id, result in conn.execute("SELECT i.id, r.result FROM items i JOIN item_results r ON r.n = i.n "
                                        "WHERE i.order_id = ? ORDER BY i.seq", (order,)):
        for user in json.loads(result)["synced_users"]:
            new[user["user_id"]] = (user["data"], item_id)
    changes, updates = [], []
    for row in conn.execute(f"SELECT id, {', '.join(FIELDS)} FROM users WHERE id IN (SELECT value FROM json_each(?))",
                            (json.dumps(list(new)),)):
        data, item_id = new[row[0]]
        for field, old in zip(FIELDS, row[1:], strict=True):
            if data[field] != old:
                changes.append({"user_id": row[0], "field": field, "old": old, "new": data[field], "item_id": item_id})
        updates.append((*(data[f] for f in FIELDS), row[0]))
    diff_json = json.dumps({"summary": f"{len(changes)} changes", "changes": changes}, separators=(",", ":"))
    now = "2026-01-01T00:00:00.000000Z"
    lock_started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(f"UPDATE users SET {', '.join(f'{f} = ?' for f in FIELDS)} WHERE id = ?", updates)
    conn.execute("UPDATE orders SET diff = ? WHERE id = ?", (diff_json, order))
    conn.executemany("INSERT INTO provenance (user_id, field, old, new, source, order_id, item_id, agent, applied_at) "
                     "VALUES (?, ?, ?, ?, 'crm', ?, ?, 'bench', ?)",
                     ((c["user_id"], c["field"], c["old"], c["new"], order, c["item_id"], now) for c in changes))
    conn.execute("COMMIT")
    done = time.perf_counter()
    wal_bytes = _wal_bytes(path)  # before the close, which checkpoints and removes the WAL
    conn.close()
    return {"s": done - started, "lock_s": done - lock_started, "wal_bytes": wal_bytes}


def _wal_bytes(path: str) -> int:
    return os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0


def approve_wal(path: str, order: str) -> int:
    """WAL bytes one approve appends, with checkpoints off (the template has no WAL: it starts at 0)."""
    from workctl import Workctl
    from workctl.config import Config

    with Workctl(path, config=Config(), create=True) as wc:
        wc.session.conn.execute("PRAGMA wal_autocheckpoint = 0")
        wc.approve(order)
        size = _wal_bytes(path)
    return size


def time_raw(path: str, users: int) -> float:
    rows = [(value("email", u), value("phone", u), value("company", u), u) for u in range(1, users + 1)]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = FULL")
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("UPDATE users SET email = ?, phone = ?, company = ? WHERE id = ?", rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="workctl-p3-")
    template = os.path.join(scratch, "template.db")
    t0 = time.perf_counter()
    order = build(template, args.users)
    print(f"set-up (propose, {args.users // 50:,} checkouts and submits): {time.perf_counter() - t0:.1f} s", flush=True)
    approve_s, raw_s, equal, stats = [], [], [], {}
    for run in range(args.runs):  # interleaved
        raw_s.append(time_raw(copy(template, os.path.join(scratch, f"raw{run}.db")), args.users))
        equal.append(time_equal_work(copy(template, os.path.join(scratch, f"equal{run}.db")), order))
        elapsed, response = time_approve(copy(template, os.path.join(scratch, f"approve{run}.db")), order)
        approve_s.append(elapsed)
        stats = response["diff"]["stats"]
        changes = len(response["diff"]["changes"])
        for name in os.listdir(scratch):
            if name.startswith(("raw", "approve", "equal")):
                os.remove(os.path.join(scratch, name))
    equal_wal = time_equal_work(copy(template, os.path.join(scratch, "equal-wal.db")), order, wal=True)["wal_bytes"]
    wal = approve_wal(copy(template, os.path.join(scratch, "approve-wal.db")), order)
    phases = breakdown(copy(template, os.path.join(scratch, "breakdown.db")), order)
    lock = lock_time(copy(template, os.path.join(scratch, "lock.db")), order)
    shutil.rmtree(scratch, ignore_errors=True)
    a, r = median(approve_s), median(raw_s)
    ratio = r / a
    e = median(x["s"] for x in equal)
    per_run = sorted(x["s"] / y for x, y in zip(equal, approve_s, strict=True))  # same run, side by side
    equal_ratio = {"median": median(per_run), "min": per_run[0], "max": per_run[-1]}
    print(f"P3 approve: {args.users:,} users × {len(FIELDS)} fields, median of {args.runs}")
    table(["variant", "median s", "users/s", "runs s"],
          [["raw executemany UPDATE (no diff, no provenance)", r, args.users / r, " ".join(f"{x:.3f}" for x in raw_s)],
           ["equal work: parse, diff, UPDATE, diff once, provenance (baseline)", e, args.users / e,
            " ".join(f"{x['s']:.3f}" for x in equal)],
           ["workctl approve", a, args.users / a, " ".join(f"{x:.3f}" for x in approve_s)]])
    print(f"diff: {stats}, {changes:,} changes")
    print(f"raw UPDATE / approve: {ratio:.2f}× (the old P3 figure)")
    print(f"equal work / approve, per run: median {verdict(equal_ratio['median'], EQUAL_TARGET, True)}, "
          f"min {equal_ratio['min']:.2f}×, max {equal_ratio['max']:.2f}×")
    print(f"write lock: equal work {median(x['lock_s'] for x in equal):.3f} s in one transaction; "
          f"WAL appended: approve {wal / 1e6:.1f} MB, equal work {equal_wal / 1e6:.1f} MB "
          f"({wal / max(equal_wal, 1):.2f}×)")
    print("\nwhere approve's time goes (one more run, with timers around its phases):")
    table(["phase", "s", "share"], [[name, t, f"{t / phases['total approve']:.0%}"] for name, t in phases.items()])
    print("\nthe write lock (one more approve, with another connection taking the lock in a loop):")
    per = 100_000 / args.users
    table(["", "s", "per 100k users"], [[name, t, t * per] for name, t in lock.items()])
    result = {"users": args.users, "fields": FIELDS, "runs": args.runs, "approve_s": approve_s, "raw_s": raw_s,
              "median_approve_s": a, "median_raw_s": r, "ratio": ratio, "target": f">= {TARGET}",
              "met": ratio >= TARGET, "equal_work": equal, "median_equal_work_s": e, "equal_work_ratio": equal_ratio,
              "equal_work_target": f">= {EQUAL_TARGET}", "equal_work_met": equal_ratio["median"] >= EQUAL_TARGET,
              "wal_bytes": {"approve": wal, "equal_work": equal_wal}, "diff_stats": stats, "changes": changes, "breakdown_s": phases,
              "lock_s": lock}
    write(out_path("approve", args.out), "P3", result)
    return result


if __name__ == "__main__":
    main()
