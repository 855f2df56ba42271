"""Per-user delta watermarks at scale (issue 11): what a delta order's apply pays to move N users'
watermarks, and what a delta propose pays to look them up, against raw sqlite3 doing the same rows.

    python bench/watermarks_bench.py [--users 1000000] [--runs 3]

Timed, each in a fresh store (a file in a scratch directory, WAL, as workctl opens it):

* advance, first: ``delta.advance`` inside one write transaction, committed — N new watermark rows (the
  first delta of a scope). Baseline: the same INSERT … ON CONFLICT over the same N rows with
  ``executemany`` on a plain sqlite3 connection to an identical table, one transaction, committed.
* advance, again: the same for a later order (every row updated).
* lookup: ``delta.watermarks`` for all N users (what propose reads). Baseline: one SELECT of the scope's
  rows into a dict.

Both sides run alternately in the same process; the figure is workctl / baseline of the medians, with
min / median / max of each. The table's size on disk is the growth of the store file (after a checkpoint).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from typing import Any

from _common import median, out_path, table, write

SOURCE, FIELDS, ORDER_ID = "crm", ["email"], "00000000-0000-4000-8000-00000000beef"
UPSERT = ("INSERT INTO sync_watermarks (scope_id, user_id, synced_through) VALUES (?, ?, ?) "
          "ON CONFLICT (scope_id, user_id) DO UPDATE SET synced_through = excluded.synced_through "
          "WHERE excluded.synced_through > sync_watermarks.synced_through")


def delta_order(users: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A delta order over users 1..N whose one item reports every user unchanged (all covered)."""
    order = {"id": ORDER_ID, "payload": {"source": SOURCE, "fields": FIELDS, "sync_mode": "delta",
                                         "user_ids": range(1, users + 1)}}
    items = [{"result": {"unchanged_users": [{"user_id": u} for u in range(1, users + 1)]}}]
    return order, items


def workctl_store(path: str) -> Any:
    from workctl import Workctl
    from workctl.config import Config

    wc = Workctl(path, config=Config(), create=True)
    wc.status()  # create and migrate before any clock starts
    return wc


def time_workctl(path: str, users: int, moments: list[str]) -> tuple[list[float], float, int]:
    """(advance seconds per moment, lookup seconds, bytes the watermarks added to the file)."""
    from workctl.store import write_tx
    from workctl.types.user_data_sync import delta

    wc = workctl_store(path)
    conn = wc.session.conn
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    empty = os.path.getsize(path)
    order, items = delta_order(users)
    spent = []
    for now in moments:
        started = time.perf_counter()
        with write_tx(conn):
            outcome = delta.advance(conn, order, items, {}, now)
        spent.append(time.perf_counter() - started)
        assert outcome and outcome["users"] == users, outcome
    started = time.perf_counter()
    marks = delta.watermarks(conn, SOURCE, FIELDS, list(range(1, users + 1)))
    lookup = time.perf_counter() - started
    assert len(marks) == users
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    grown = os.path.getsize(path) - empty
    wc.close()
    return spent, lookup, grown


def time_raw(path: str, users: int, values: list[int]) -> tuple[list[float], float]:
    """The same rows on a plain connection: the table as workctl's migration makes it, nothing else."""
    conn = sqlite3.connect(path, isolation_level=None)
    # The pragmas workctl's store connection runs with (store/sqlite.py), so both sides commit alike.
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 10000")
    conn.execute("CREATE TABLE sync_watermarks (scope_id INTEGER NOT NULL, user_id INTEGER NOT NULL, "
                 "synced_through INTEGER NOT NULL, PRIMARY KEY (scope_id, user_id)) WITHOUT ROWID")
    spent = []
    for value in values:
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(UPSERT, ((1, u, value) for u in range(1, users + 1)))
        conn.execute("COMMIT")
        spent.append(time.perf_counter() - started)
    started = time.perf_counter()
    marks = dict(conn.execute("SELECT user_id, synced_through FROM sync_watermarks WHERE scope_id = ?", (1,)))
    lookup = time.perf_counter() - started
    assert len(marks) == users
    conn.close()
    return spent, lookup


def schema_matches(scratch: str) -> None:
    """The baseline's table must be workctl's: same columns, key and storage (else it does other work)."""
    path = os.path.join(scratch, "schema.db")
    workctl_store(path).close()
    conn = sqlite3.connect(path)
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'sync_watermarks'").fetchone()[0]
    conn.close()
    for part in ("PRIMARY KEY (scope_id, user_id)", "WITHOUT ROWID", "synced_through INTEGER NOT NULL"):
        if part not in sql:
            raise SystemExit(f"the baseline's table no longer matches workctl's: {sql}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from workctl.clock import parse
    from workctl.types.user_data_sync.delta import micros

    moments = ["2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z"]
    values = [micros(parse(m)) for m in moments]
    scratch = tempfile.mkdtemp(prefix="workctl-wm-")
    runs: dict[str, list[float]] = {k: [] for k in ("advance_first", "advance_again", "lookup",
                                                     "raw_first", "raw_again", "raw_lookup")}
    grown: list[int] = []
    try:
        schema_matches(scratch)
        for n in range(args.runs):  # alternate the two sides, so drift hits both alike
            advance, lookup, size = time_workctl(os.path.join(scratch, f"w{n}.db"), args.users, moments)
            raw, raw_lookup = time_raw(os.path.join(scratch, f"r{n}.db"), args.users, values)
            runs["advance_first"].append(advance[0])
            runs["advance_again"].append(advance[1])
            runs["lookup"].append(lookup)
            runs["raw_first"].append(raw[0])
            runs["raw_again"].append(raw[1])
            runs["raw_lookup"].append(raw_lookup)
            grown.append(size)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    med = {k: median(v) for k, v in runs.items()}
    ratios = {"advance_first": med["advance_first"] / med["raw_first"],
              "advance_again": med["advance_again"] / med["raw_again"], "lookup": med["lookup"] / med["raw_lookup"]}
    print(f"watermarks: {args.users:,} users in one scope, {args.runs} runs (seconds: min / median / max)")
    rows = []
    for key, base, label in (("advance_first", "raw_first", "apply: N new watermarks"),
                             ("advance_again", "raw_again", "apply: N watermarks moved"),
                             ("lookup", "raw_lookup", "propose: look up N watermarks")):
        w, r = sorted(runs[key]), sorted(runs[base])
        rows.append([label, f"{w[0]:.3f} / {med[key]:.3f} / {w[-1]:.3f}",
                     f"{r[0]:.3f} / {med[base]:.3f} / {r[-1]:.3f}", ratios[key]])
    table(["what", "workctl s", "raw sqlite3 s", "× raw"], rows)
    print(f"store file growth for N watermarks (after a checkpoint): {median(grown) / 1e6:.1f} MB "
          f"({median(grown) / args.users:.1f} bytes per user)")
    result = {"users": args.users, "runs": args.runs, "runs_s": runs, "median_s": med, "ratio": ratios,
              "bytes": grown, "bytes_per_user": median(grown) / args.users}
    write(out_path("watermarks", args.out), "watermarks at scale", result)
    return result


if __name__ == "__main__":
    main()
