"""P5: does the store's size show? (a) checkout latency through the library API with 1,000,000 items
in the store against 1,000; (b) `propose` of 1,000,000 user ids against a raw bulk insert of the same
item rows.

    python bench/scale_bench.py [--big 1000000] [--small 1000] [--checkouts 400] [--ids 1000000] [--runs 3]
    python bench/scale_bench.py --pg postgresql://postgres@127.0.0.1/test     # (a) on PostgreSQL

(a) Two stores, each one `task.batch` order of --small / --big items (built untimed, by `propose`).
    One open Workctl per store; --checkouts checkouts each, alternating blocks of 20 between the stores;
    the figure is median latency (big) / median latency (small). Target ≤ 1.5×.
(b) A fresh store (with an empty `users` table to sync into) per run. workctl: `Workctl.propose(
    "user.data.sync", {"source": "crm", "user_ids": [1..N], "fields": ["email"]})` with the id list
    built beforehand: JSON-schema validation, planning N/50 items, the order row (with its payload),
    the item rows and the events, in one transaction. Baseline: the same N/50 item rows (a uuid4 id,
    the input JSON of the same batch) by one `executemany` INSERT in one transaction on the same schema.
    The figure is propose time / baseline time. Target ≤ 2.0×.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import tempfile
import time
import uuid

from _common import median, out_path, pg_schema, table, verdict, write

LATENCY_TARGET = 1.5
PROPOSE_TARGET = 2.0
BLOCK = 20


def open_store(path: str):
    from workctl import Workctl
    from workctl.config import Config

    wc = Workctl(path, config=Config(), create=True)
    _ = wc.session  # open (create and migrate) before anything is timed
    return wc


def pg_store(admin_url: str, label: str) -> str:
    """A fresh schema on the PostgreSQL server, as a store URL (dropped first if a run left it)."""
    return pg_schema(admin_url, f"bench_p5_{label}")


def checkout_latency(scratch: str, small: int, big: int, checkouts: int, pg: str | None = None) -> dict:
    stores = {}
    for label, n in (("small", small), ("big", big)):
        path = pg_store(pg, label) if pg else os.path.join(scratch, f"{label}.db")
        wc = open_store(path)
        started = time.perf_counter()
        wc.propose("task.batch", {"tasks": list(range(n))})
        print(f"  built the {n:,}-item store in {time.perf_counter() - started:.1f} s", flush=True)
        stores[label] = wc
    samples: dict[str, list[float]] = {"small": [], "big": []}
    checkouts = min(checkouts, small)
    for block in range(0, checkouts, BLOCK):
        for label, wc in stores.items():
            for _ in range(min(BLOCK, checkouts - block)):
                started = time.perf_counter()
                wc.checkout(agent="bench")
                samples[label].append(time.perf_counter() - started)
    for wc in stores.values():
        wc.close()
    med = {label: median(v) * 1e6 for label, v in samples.items()}
    return {"sizes": {"small": small, "big": big}, "checkouts": checkouts, "median_us": med,
            "p90_us": {k: sorted(v)[int(0.9 * (len(v) - 1))] * 1e6 for k, v in samples.items()},
            "ratio": med["big"] / med["small"]}


def users_store(path: str):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, phone TEXT, company TEXT)")
    conn.commit()
    conn.close()
    return open_store(path)


def time_propose(path: str, ids: list[int]) -> tuple[float, int]:
    with users_store(path) as wc:
        started = time.perf_counter()
        response = wc.propose("user.data.sync", {"source": "crm", "user_ids": ids, "fields": ["email"]})
        return time.perf_counter() - started, len(response["items"])


def time_raw_insert(path: str, ids: list[int], batch: int = 50) -> float:
    wc = users_store(path)
    conn = wc.session.conn
    now = "2026-01-01T00:00:00.000000Z"
    conn.execute("INSERT INTO orders (id, type, state, priority, payload, requested_by, item_count, created_at, "
                 "updated_at) VALUES ('o', 'user.data.sync', 'queued', 0, '{}', 'bench', 0, ?, ?)", (now, now))
    started = time.perf_counter()
    # The same rows propose writes: the narrow item rows, then each item's input by its number.
    rows = [(str(uuid.uuid4()), "o", seq, "user.data.sync", 0, 3, now,
             json.dumps({"source": "crm", "user_ids": ids[start:start + batch], "fields": ["email"],
                         "min_success_ratio": 1.0}, separators=(",", ":")))
            for seq, start in enumerate(range(0, len(ids), batch))]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO items (id, order_id, seq, type, state, priority, max_attempts, updated_at) "
                     "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)", (r[:7] for r in rows))
    conn.executemany("INSERT INTO item_inputs (n, input) SELECT n, ? FROM items WHERE id = ?",
                     ((r[7], r[0]) for r in rows))
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    wc.close()
    return elapsed


def propose_vs_raw(scratch: str, n: int, runs: int) -> dict:
    ids = list(range(1, n + 1))
    propose_s, raw_s, items = [], [], 0
    for run in range(runs):  # interleaved, fresh files each time
        raw_s.append(time_raw_insert(os.path.join(scratch, f"raw{run}.db"), ids))
        elapsed, items = time_propose(os.path.join(scratch, f"propose{run}.db"), ids)
        propose_s.append(elapsed)
        for name in os.listdir(scratch):
            if name.startswith(("raw", "propose")):
                os.remove(os.path.join(scratch, name))
    p, r = median(propose_s), median(raw_s)
    return {"ids": n, "items": items, "propose_s": propose_s, "raw_s": raw_s, "median_propose_s": p,
            "median_raw_s": r, "ratio": p / r}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--checkouts", type=int, default=400)
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--pg", default=None, metavar="URL",
                        help="(a) on PostgreSQL: a server URL, each store in a schema of its own; skips (b)")
    args = parser.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="workctl-p5-")
    try:
        print("(a) checkout latency", flush=True)
        latency = checkout_latency(scratch, args.small, args.big, args.checkouts, args.pg)
        if args.pg:
            print(f"\nP5 (a) on PostgreSQL, median of {latency['checkouts']} each: "
                  f"{latency['median_us']['small']:.0f} µs small, {latency['median_us']['big']:.0f} µs big, "
                  f"big / small {verdict(latency['ratio'], LATENCY_TARGET, False)}")
            write(out_path("scale_pg", args.out), "P5 PostgreSQL", {"checkout_latency": latency})
            return {"checkout_latency": latency}
        print("(b) propose vs raw bulk insert", flush=True)
        propose = propose_vs_raw(scratch, args.ids, args.runs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nP5 (a) checkout latency, library API, median of {latency['checkouts']} each")
    table(["store", "items", "median µs", "p90 µs"],
          [[label, latency["sizes"][label], latency["median_us"][label], latency["p90_us"][label]]
           for label in ("small", "big")])
    print(f"big / small: {verdict(latency['ratio'], LATENCY_TARGET, False)}")
    print(f"\nP5 (b) propose of {args.ids:,} user ids ({propose['items']:,} items), median of {args.runs}")
    table(["variant", "median s", "runs s"],
          [["raw bulk insert of the item rows (baseline)", propose["median_raw_s"],
            " ".join(f"{x:.3f}" for x in propose["raw_s"])],
           ["workctl propose", propose["median_propose_s"], " ".join(f"{x:.3f}" for x in propose["propose_s"])]])
    print(f"propose / baseline: {verdict(propose['ratio'], PROPOSE_TARGET, False)}")
    result = {"checkout_latency": {**latency, "target": f"<= {LATENCY_TARGET}",
                                   "met": latency["ratio"] <= LATENCY_TARGET},
              "propose": {**propose, "target": f"<= {PROPOSE_TARGET}", "met": propose["ratio"] <= PROPOSE_TARGET}}
    write(out_path("scale", args.out), "P5", result)
    return result


if __name__ == "__main__":
    main()
