"""Read paths at 1,000,000 items and ≥ 4,000,000 events: do `status`, `status ORDER`, `log --nl` of a large
order and `maintain` stay flat in time and memory as the store grows? Each runs as its own process (the
CLI, as an operator or cron runs it) on a small store and on a big one (--scale times the small one),
for the code of this checkout ("after") and, with --before DIR, for another checkout ("before", e.g.
`git worktree add /tmp/before bd3444c`), on copies of the same bytes.

    python bench/read_paths_bench.py [--items 1000000] [--events 4000000] [--scale 100] [--before DIR]
    python bench/read_paths_bench.py --pg postgresql://postgres@127.0.0.1/test    # the same on PostgreSQL

The store (built untimed, by this checkout's library and bulk inserts of event rows):

* order Q: one `task.batch` order of --items items, proposed (all queued);
* order L: 10 items and --events / 2 events of its own (a long-running order's audit trail);
* order P: 10 items, cancelled, and --events / 2 events dated a year back (what `maintain` prunes with
  `[retention] event_days = 30`).

Per operation: wall time and the peak RSS of that process (``wait4``), big / small. `maintain` runs
twice on a copy: the first prunes P's events, with another connection taking the write lock in a loop
meanwhile (its longest wait is how long maintain held the lock at once); the second has nothing left to
prune. Every process runs under an address-space limit (--mem-limit MiB): one that exceeds it is
reported as such, not run to exhaustion on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from _common import ROOT, other_writer, out_path, pg_schema, table, write

NOW = "2026-06-01T00:00:00Z"
BUILT = "2025-05-01T00:00:00Z"
OLD = "2025-06-01T00:00:00.000000Z"
RECENT = "2026-05-31T00:00:00.000000Z"


# -- the store --------------------------------------------------------------------------------------
def _events(order_id: str, item_id: str, count: int, at: str) -> Any:
    payload = json.dumps({"attempt": 1, "lease_expires_at": "2026-05-31T00:10:00.000000Z"})
    for n in range(count):
        event = ("leased", "queued", "leased") if n % 2 == 0 else ("submitted", "leased", "submitted")
        yield (order_id, item_id, "item", *event, "agent", f"bench-{n % 8}", payload, at)


def build(target: str, items: int, events: int, pg: bool) -> dict[str, str]:
    from workctl import Workctl
    from workctl.clock import fixed_clock, parse
    from workctl.config import Config

    # The orders' own events are dated before the bulk ones (an audit trail only grows in time).
    with Workctl(target, config=Config(), create=True, clock=fixed_clock(parse(BUILT))) as wc:
        q = wc.propose("task.batch", {"tasks": [f"t{i}" for i in range(items)]})["order"]["id"]
        big_log = wc.propose("task.batch", {"tasks": [f"t{i}" for i in range(10)]})
        pruned = wc.propose("task.batch", {"tasks": [f"t{i}" for i in range(10)]})
        wc.cancel(pruned["order"]["id"], reason="bench")
        conn = wc.session.conn
        sql = ("INSERT INTO events (order_id, item_id, entity, event, from_state, to_state, actor_type, actor_id, "
               "payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        for order, at in ((big_log, RECENT), (pruned, OLD)):
            item = order["items"][0]["id"]
            rows = _events(order["order"]["id"], item, events // 2, at)
            while True:
                chunk = [row for _, row in zip(range(50_000), rows, strict=False)]
                if not chunk:
                    break
                with conn.transaction():
                    conn.executemany(sql, chunk)
        if not pg:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return {"Q": q, "L": big_log["order"]["id"], "P": pruned["order"]["id"]}


# -- one measured process -----------------------------------------------------------------------------
# maintain, in its own process, with its write transactions timed from inside (BEGIN IMMEDIATE returned
# to COMMIT done): how long it held the lock at once, and in how many transactions.
MAINTAIN_PROBE = """
import json, sys, time
from contextlib import contextmanager
import workctl.core.maintain as m
from workctl import Workctl
from workctl.config import load_config
held, original = [], m.write_tx
@contextmanager
def timed(conn):
    with original(conn) as inside:
        started = time.perf_counter()
        yield inside
    held.append(time.perf_counter() - started)
m.write_tx = timed
with Workctl(sys.argv[1], config=load_config(sys.argv[2])) as wc:
    done = wc.maintain()
print(json.dumps({"events_pruned": done["events_pruned"], "transactions": len(held), "lock_max_s": max(held),
                  "lock_total_s": sum(held)}))
"""


def run(code_root: str, store: str, args: list[str], config: str, mem_limit: int,
        probe: bool = False) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": code_root, "WORKCTL_NOW": NOW, "WORKCTL_CONFIG": config,
           "WORKCTL_LOAD_PLUGINS": "0"}

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem_limit << 20, mem_limit << 20))

    started = time.perf_counter()
    argv = ["-c", MAINTAIN_PROBE, store, config] if probe else ["-m", "workctl", "--db", store, *args]
    proc = subprocess.Popen([sys.executable, *argv], env=env, cwd=code_root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit)
    lines, tail = 0, b""
    assert proc.stdout is not None
    for line in proc.stdout:  # read as it comes: the output is as long as the listing
        lines += 1
        tail = (tail + line)[-2000:]
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    over = code != 0 and ("MemoryError" in stderr or "Cannot allocate" in stderr or code < 0)
    return {"s": elapsed, "rss_mib": usage.ru_maxrss / 1024, "exit": code, "lines": lines, "tail": tail.decode()[-300:],
            "over_limit": over, "stderr": stderr[-400:] if code else ""}


def with_lock_prober(path: str | None, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn`` while another connection takes the SQLite write lock in a loop; add its longest wait."""
    if path is None:
        return fn()
    with other_writer(path) as waits:
        result = fn()
    return {**result, "other_writer_max_wait_s": max(waits)}


# -- the run ------------------------------------------------------------------------------------------
OPERATIONS = [
    ("status --json", lambda ids: ["status", "--json"], False),
    ("status Q --json (1 order of all the items)", lambda ids: ["status", ids["Q"], "--json"], False),
    ("log L --nl (all its events)", lambda ids: ["log", ids["L"], "--nl"], False),
    ("log L --nl --limit 1000", lambda ids: ["log", ids["L"], "--nl", "--limit", "1000"], True),
    ("show Q (human table)", lambda ids: ["show", ids["Q"]], True),
    ("show Q --nl (every item)", lambda ids: ["show", ids["Q"], "--nl"], True),
]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=4_000_000)
    parser.add_argument("--scale", type=int, default=100, help="the small store is this many times smaller")
    parser.add_argument("--before", default=None, metavar="DIR", help="a checkout of the code to compare")
    parser.add_argument("--mem-limit", type=int, default=2048, metavar="MIB")
    parser.add_argument("--pg", default=None, metavar="URL")
    parser.add_argument("--only-maintain", action="store_true", help="skip the read operations")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="workctl-read-")
    config = os.path.join(scratch, "workctl.toml")
    with open(config, "w") as f:
        f.write("[retention]\nevent_days = 30\n")
    codes = {"after": str(ROOT), **({"before": os.path.abspath(args.before)} if args.before else {})}
    sizes = {"small": (max(args.items // args.scale, 1), max(args.events // args.scale, 2)),
             "big": (args.items, args.events)}
    results: dict[str, Any] = {"sizes": sizes, "operations": {}, "maintain": {}}
    try:
        templates, ids = {}, {}
        for size, (items, events) in sizes.items():
            print(f"building the {size} store: {items:,} items, {events:,} events", flush=True)
            started = time.perf_counter()
            templates[size] = pg_schema(args.pg, f"bench_read_{size}") if args.pg else os.path.join(scratch, f"{size}.db")
            ids[size] = build(templates[size], items, events, bool(args.pg))
            print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
        for name, argv_of, after_only in [] if args.only_maintain else OPERATIONS:
            for variant, code_root in codes.items():
                if after_only and variant == "before":
                    continue
                row = results["operations"].setdefault(name, {}).setdefault(variant, {})
                for size in sizes:
                    row[size] = run(code_root, templates[size], argv_of(ids[size]), config, args.mem_limit)
                    print(f"{name:<45} {variant:<6} {size:<5} {row[size]['s']:8.3f} s {row[size]['rss_mib']:8.1f} MiB"
                          f"{'  exit ' + str(row[size]['exit']) if row[size]['exit'] else ''}", flush=True)
        for variant, code_root in codes.items():
            for size in sizes:
                label = f"{size}_{variant}"
                if args.pg:  # a store of its own, built the same way (a SQLite store is a copy of the bytes)
                    store = pg_schema(args.pg, f"bench_read_{label}")
                    build(store, *sizes[size], True)
                else:
                    store = shutil.copy(templates[size], os.path.join(scratch, f"{label}.db"))
                first = with_lock_prober(None if args.pg else store,
                                         lambda s=store, r=code_root: run(r, s, [], config, args.mem_limit,
                                                                          probe=True))
                first.update(json.loads(first["tail"]))
                repeat = run(code_root, store, ["maintain", "--json"], config, args.mem_limit)
                results["maintain"].setdefault(variant, {})[size] = {"first": first, "repeat": repeat}
                print(f"maintain {variant:<6} {size:<5} first {first['s']:.3f} s, {first['transactions']} write "
                      f"transactions, the longest {first['lock_max_s']:.3f} s "
                      f"(another writer waited ≤ {first.get('other_writer_max_wait_s', float('nan')):.3f} s), "
                      f"repeat {repeat['s']:.3f} s; pruned {_pruned(first)} then {_pruned(repeat)}", flush=True)
                if not args.pg:
                    os.remove(store)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(results)
    write(out_path("read_paths_pg" if args.pg else "read_paths", args.out), "read paths", results)
    return results


def _pruned(m: dict[str, Any]) -> Any:
    try:
        return json.loads(m["tail"][m["tail"].index("{"):])["events_pruned"]
    except (ValueError, KeyError):
        return "?"


def _cell(m: dict[str, Any]) -> str:
    if m["over_limit"]:
        return f"> limit ({m['s']:.1f} s)"
    return f"{m['s']:.3f} s / {m['rss_mib']:.0f} MiB" + (f" (exit {m['exit']})" if m["exit"] else "")


def report(results: dict[str, Any]) -> None:
    rows = []
    for name, variants in results["operations"].items():
        for variant, m in variants.items():
            small, big = m["small"], m["big"]
            rows.append([name, variant, _cell(small), _cell(big), f"{big['s'] / small['s']:.2f}×",
                         f"{big['rss_mib'] / small['rss_mib']:.2f}×"])
    for variant, sizes in results["maintain"].items():
        for which in ("first", "repeat"):
            small, big = sizes["small"][which], sizes["big"][which]
            rows.append([f"maintain ({which})", variant, _cell(small), _cell(big), f"{big['s'] / small['s']:.2f}×",
                         f"{big['rss_mib'] / small['rss_mib']:.2f}×"])
        holds = [sizes[s]["first"] for s in ("small", "big")]
        rows.append(["maintain (first): its longest write transaction (of n)", variant,
                     *(f"{h['lock_max_s']:.3f} s (of {h['transactions']:,})" for h in holds), "", ""])
        waits = [sizes[s]["first"].get("other_writer_max_wait_s") for s in ("small", "big")]
        if waits[0] is not None:
            rows.append(["maintain (first): another writer's longest wait", variant, f"{waits[0]:.3f} s",
                         f"{waits[1]:.3f} s", "", ""])
    small, big = results["sizes"]["small"], results["sizes"]["big"]
    print(f"\nsmall: {small[0]:,} items / {small[1]:,} events; big: {big[0]:,} items / {big[1]:,} events")
    table(["operation", "code", "small: time / peak RSS", "big: time / peak RSS", "time big/small",
           "RSS big/small"], rows)


if __name__ == "__main__":
    main()
