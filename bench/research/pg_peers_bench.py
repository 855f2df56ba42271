#!/usr/bin/env python3
"""P8: checkout + submit cycles per second on PostgreSQL, 4 processes, 20k items, beside a raw psycopg
SKIP LOCKED claim + ack loop and the PostgreSQL queue peers (procrastinate, pgqueuer) in the same run,
interleaved, with duplicate and lost counts.

    /work/benchvenv/bin/python bench/pg_peers_bench.py [--n 20000] [--procs 4] [--rounds 5]
        [--dsn 'host=127.0.0.1 user=postgres dbname=postgres'] [--contenders raw,lean,procrastinate,...]

Contenders (--contenders):
  raw              psycopg, UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING, then a
                   fenced ack; each its own autocommit transaction (peers-pg.md's baseline: 1.00)
  lean             the recommended lean schema (bench/research/hotpath_proto.py, pg-f): submit --next as one plpgsql
                   function call, one round trip and one transaction per cycle, every invariant of
                   docs/hotpath-notes.md kept
  lean-2tx         the same, checkout and submit as two calls, two transactions (pg-f2)
  lean-cte         the same schema with the cycle as CTE statements in one pipeline (pg-e)
  procrastinate    a no-op async task, 4 worker processes × concurrency 1, wait=False (drains, then exits)
  pgqueuer-1       a no-op entrypoint, 4 processes, batch_size=1, mode=drain (asyncpg driver)
  pgqueuer-10      the same with its default batch_size=10
  workctl          workctl's library API on PostgreSQL (Workctl.checkout, then Workctl.submit with the lease
                   token) — skipped, and said so, while ``import workctl.store.postgres`` fails

Adapter interface: a contender is a function ``contender(dsn) -> (setup, worker)``:
  setup(n)          on the empty database at ``dsn``, create what the contender needs and enqueue n jobs whose
                    payloads are the integers 0..n-1 (untimed)
  worker(idx)       in a forked process: open connections, then return ``run``; ``run()`` is called when all
                    processes are ready, drains the queue and returns the list of payloads it completed.
Every contender gets its own fresh database per run (created and dropped here); the harness runs
CHECKPOINT before the timed part, times from the barrier to the last process done, and counts
duplicates (completions - unique) and lost (n - unique). ``workctl_contender`` below is the
placeholder to fill in when the PostgreSQL store exists.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))                   # hotpath_proto
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repo

Setup = Callable[[int], None]
Run = Callable[[], list]
Worker = Callable[[int], Run]


# ------------------------------------------------------------------------------------------------
# contenders
# ------------------------------------------------------------------------------------------------

def raw_contender(dsn: str) -> tuple[Setup, Worker]:
    import hotpath_proto as hp

    v = hp.PG_VARIANTS["pg-raw"]

    def setup(n: int) -> None:
        v.setup(dsn, n)

    def worker(idx: int) -> Run:
        w = v.worker(dsn, f"raw-{os.getpid()}")
        return lambda: _drain(w)
    return setup, worker


def _lean(key: str) -> Callable[[str], tuple[Setup, Worker]]:
    def contender(dsn: str) -> tuple[Setup, Worker]:
        import hotpath_proto as hp

        v = hp.PG_VARIANTS[key]

        def setup(n: int) -> None:
            v.setup(dsn, n)

        def worker(idx: int) -> Run:
            w = v.worker(dsn, f"bench-{os.getpid()}")
            return lambda: _drain(w)
        return setup, worker
    return contender


def _drain(w) -> list:
    """The claim/ack protocol of bench/research/hotpath_proto.py workers: claim() -> (handle, payload) | None."""
    done, empty = [], 0
    while True:
        got = w.claim()
        if got is None:
            empty += 1
            if empty >= 2:
                break
            continue
        empty = 0
        w.ack(got[0])
        done.append(got[1])
    w.close()
    return done


def procrastinate_contender(dsn: str) -> tuple[Setup, Worker]:
    import logging

    import procrastinate

    logging.getLogger("procrastinate").setLevel(logging.ERROR)

    def make_app(done: list | None):
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

        @app.task(name="noop")
        async def noop(i: int) -> None:
            if done is not None:
                done.append(i)
        return app, noop

    def setup(n: int) -> None:
        app, noop = make_app(None)
        with app.open():
            app.schema_manager.apply_schema()
            for start in range(0, n, 1000):
                noop.batch_defer(*({"i": i} for i in range(start, min(n, start + 1000))))

    def worker(idx: int) -> Run:
        done: list = []
        app, _ = make_app(done)

        def run() -> list:
            app.run_worker(wait=False, concurrency=1, install_signal_handlers=False, name=f"w{idx}")
            return done
        return run
    return setup, worker


def _pgqueuer(batch_size: int) -> Callable[[str], tuple[Setup, Worker]]:
    def contender(dsn: str) -> tuple[Setup, Worker]:
        import asyncpg
        from pgqueuer import AsyncpgDriver, QueueManager
        from pgqueuer.domain.types import QueueExecutionMode
        from pgqueuer.queries import Queries

        url = _url(dsn)

        async def _setup(n: int) -> None:
            conn = await asyncpg.connect(url)
            q = Queries(AsyncpgDriver(conn))
            await q.install()
            for start in range(0, n, 1000):
                rng = range(start, min(n, start + 1000))
                await q.enqueue(["noop"] * len(rng), [str(i).encode() for i in rng], [0] * len(rng))
            await conn.close()

        def setup(n: int) -> None:
            asyncio.run(_setup(n))

        def worker(idx: int) -> Run:
            done: list = []

            async def _run() -> list:
                conn = await asyncpg.connect(url)
                qm = QueueManager(Queries(AsyncpgDriver(conn)))

                @qm.entrypoint("noop")
                async def noop(job) -> None:
                    done.append(int(job.payload))
                from datetime import timedelta
                await qm.run(batch_size=batch_size, mode=QueueExecutionMode.drain,
                             dequeue_timeout=timedelta(seconds=1))
                return done
            return lambda: asyncio.run(_run())
        return setup, worker
    return contender


def _workctl(next_: bool) -> Callable[[str], tuple[Setup, Worker]]:
    """workctl's library API on PostgreSQL. setup(n): propose one ``task.batch`` order of n tasks (item
    i's input is {"task": i}). worker(idx): a Workctl on the same URL; run() loops ``checkout`` then
    ``submit`` with the lease token — or, with ``next_``, ``submit(next=True)``, which submits and leases
    the next item in one call (one transaction per cycle) — until there is no work, returning the tasks
    it submitted."""
    def contender(dsn: str) -> tuple[Setup, Worker]:
        import workctl.store.postgres  # noqa: F401  (ImportError without psycopg: skipped)
        from workctl import Workctl
        from workctl.config import Config
        from workctl.errors import NoWork

        url = _url(dsn)

        def setup(n: int) -> None:
            with Workctl(url, config=Config(), create=True) as wc:
                wc.propose("task.batch", {"tasks": list(range(n))})

        def worker(idx: int) -> Run:
            wc = Workctl(url, config=Config())
            _ = wc.session  # connected before the start signal
            agent = f"bench-{os.getpid()}"

            def run() -> list:
                done = []
                try:
                    item = wc.checkout(agent=agent)["item"]
                except NoWork:
                    return done
                while item is not None:
                    if next_:
                        response = wc.submit(item["id"], {"ok": True}, agent=agent, lease_token=item["lease_token"],
                                             next=True)
                        done.append(item["input"]["task"])
                        item = response["next"]
                        continue
                    wc.submit(item["id"], {"ok": True}, agent=agent, lease_token=item["lease_token"])
                    done.append(item["input"]["task"])
                    try:
                        item = wc.checkout(agent=agent)["item"]
                    except NoWork:
                        item = None
                wc.close()
                return done
            return run
        return setup, worker
    return contender


CONTENDERS: dict[str, tuple[str, Callable[[str], tuple[Setup, Worker]]]] = {
    "raw": ("raw psycopg SKIP LOCKED claim + ack (2 txns, no audit)", raw_contender),
    "lean": ("lean prototype: submit --next, 1 plpgsql call = 1 txn per cycle, audit + fencing + counters",
             _lean("pg-f")),
    "lean-2tx": ("lean prototype: checkout + submit, 2 plpgsql calls = 2 txns per cycle", _lean("pg-f2")),
    "lean-cte": ("lean prototype: submit --next as CTE statements in 1 pipeline round trip", _lean("pg-e")),
    "procrastinate": ("procrastinate, no-op task, 4 procs × concurrency 1", procrastinate_contender),
    "pgqueuer-1": ("pgqueuer, no-op, batch_size=1", _pgqueuer(1)),
    "pgqueuer-10": ("pgqueuer, no-op, batch_size=10 (its default)", _pgqueuer(10)),
    "workctl": ("workctl library: checkout + submit (2 transactions per cycle)", _workctl(False)),
    "workctl-next": ("workctl library: submit --next (1 transaction per cycle)", _workctl(True)),
}


# ------------------------------------------------------------------------------------------------
# harness
# ------------------------------------------------------------------------------------------------

def _url(dsn: str) -> str:
    """libpq key=value DSN -> postgresql:// URL (asyncpg and workctl want URLs)."""
    if dsn.startswith("postgres"):
        return dsn
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(dsn)
    auth = d.get("user", "postgres") + (f":{d['password']}" if d.get("password") else "")
    return f"postgresql://{auth}@{d.get('host', 'localhost')}:{d.get('port', 5432)}/{d.get('dbname', 'postgres')}"


def _with_db(dsn: str, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, dbname=dbname)


def _admin(dsn: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


def fresh_db(admin_dsn: str, name: str) -> str:
    _admin(admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    _admin(admin_dsn, f"CREATE DATABASE {name}")
    return _with_db(admin_dsn, name)


def available(key: str, dsn: str) -> str | None:
    """None when the contender can run; else why not."""
    try:
        CONTENDERS[key][1](dsn)
    except ImportError as exc:
        return f"not importable ({exc})"
    return None


def _proc(key: str, dsn: str, idx: int, start, out) -> None:
    try:
        _setup, worker = CONTENDERS[key][1](dsn)
        run = worker(idx)
        start.wait()
        done = run()
        out.put({"idx": idx, "done": list(done), "error": None})
    except BaseException:  # noqa: BLE001
        out.put({"idx": idx, "done": [], "error": traceback.format_exc()})


def run_once(key: str, admin_dsn: str, n: int, procs: int) -> dict[str, Any]:
    dbname = f"bench_p8_{key.replace('-', '_')}"
    dsn = fresh_db(admin_dsn, dbname)
    try:
        setup, _worker = CONTENDERS[key][1](dsn)
        setup(n)
        _admin(dsn, "VACUUM ANALYZE")
        _admin(dsn, "CHECKPOINT")
        ctx = mp.get_context("fork")
        start, out = ctx.Event(), ctx.Queue()
        ps = [ctx.Process(target=_proc, args=(key, dsn, i, start, out)) for i in range(procs)]
        for p in ps:
            p.start()
        time.sleep(0.5)  # every process has connected
        t0 = time.perf_counter()
        start.set()
        results = [out.get() for _ in ps]
        wall = time.perf_counter() - t0
        for p in ps:
            p.join()
    finally:
        _admin(admin_dsn, f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
    done = [x for r in results for x in r["done"]]
    unique = set(done)
    errors = [r["error"] for r in results if r["error"]]
    for e in errors:
        print(f"ERROR in a {key} process:\n{e}", file=sys.stderr)
    return {"cycles_per_s": len(unique) / wall, "wall_s": wall, "duplicates": len(done) - len(unique),
            "lost": n - len(unique & set(range(n))), "errors": len(errors),
            "split": [len(r["done"]) for r in sorted(results, key=lambda r: r["idx"])]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dsn", default="host=127.0.0.1 user=postgres dbname=postgres",
                    help="an admin connection: each contender gets its own fresh database per run")
    ap.add_argument("--contenders", default="raw,lean,lean-2tx,procrastinate,pgqueuer-1,pgqueuer-10,workctl,workctl-next")  # + lean-cte
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    keys = [k.strip() for k in args.contenders.split(",") if k.strip()]
    keys = ["raw"] + [k for k in keys if k != "raw"]
    skipped = {}
    for k in list(keys):
        why = available(k, _with_db(args.dsn, "postgres"))
        if why:
            skipped[k] = why
            keys.remove(k)
            print(f"skipping {k}: {why}")
    import psycopg
    meta = {"n": args.n, "procs": args.procs, "rounds": args.rounds, "python": sys.version.split()[0],
            "psycopg": psycopg.__version__, "cpus": os.cpu_count()}
    with psycopg.connect(args.dsn) as c:
        meta["server"] = c.execute("SHOW server_version").fetchone()[0]
        meta["synchronous_commit"] = c.execute("SHOW synchronous_commit").fetchone()[0]
    for dist in ("procrastinate", "pgqueuer", "asyncpg"):
        try:
            import importlib.metadata as md
            meta[dist] = md.version(dist)
        except Exception:  # noqa: BLE001
            meta[dist] = None
    print(json.dumps(meta), flush=True)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    for r in range(args.rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        line = []
        for k in order:
            res = run_once(k, args.dsn, args.n, args.procs)
            res["round"] = r
            runs[k].append(res)
            line.append(f"{k} {res['cycles_per_s']:,.0f}/s" + (f" DUP {res['duplicates']}" if res["duplicates"] else "")
                        + (f" LOST {res['lost']}" if res["lost"] else ""))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(line), flush=True)
    base = {x["round"]: x["cycles_per_s"] for x in runs["raw"]}
    rows = []
    print(f"\nP8: {args.n:,} items, {args.procs} processes, {args.rounds} interleaved rounds, "
          f"synchronous_commit={meta['synchronous_commit']}")
    print("| contender | cycles/s median [min–max] | × raw median [min–max] | dup | lost | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in keys:
        xs = runs[k]
        rates = [x["cycles_per_s"] for x in xs]
        ratios = [x["cycles_per_s"] / base[x["round"]] for x in xs]
        row = {"key": k, "name": CONTENDERS[k][0], "rates": rates, "ratios": ratios,
               "duplicates": sum(x["duplicates"] for x in xs), "lost": sum(x["lost"] for x in xs),
               "errors": sum(x["errors"] for x in xs)}
        rows.append(row)
        print(f"| {row['name']} | {statistics.median(rates):,.0f} [{min(rates):,.0f}–{max(rates):,.0f}] | "
              f"{statistics.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}] | {row['duplicates']} | "
              f"{row['lost']} | {row['errors']} |")
    for k, why in skipped.items():
        print(f"| {CONTENDERS[k][0]} | skipped: {why} | | | | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows, "runs": runs, "skipped": skipped}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
