"""P1: checkout + submit cycles per second through the library API, several OS processes sharing one
SQLite file, beside a raw stdlib-sqlite3 claim+ack and the SQLite queue peers (huey, litequeue,
persist-queue) run in the same run, with duplicate and lost counts.

    python bench/peers_bench.py [--n 20000] [--consumers 4] [--rounds 3]
        [--peers workctl,workctl-next,raw,huey,litequeue,persist-queue]

Each variant: a fresh file, N items enqueued (untimed; workctl with one ``propose`` of a ``task.batch``
order, the peers with their own put), then --consumers forked processes that start together and
claim + ack until the queue is empty. The payload is the item's index, so duplicates (acks - unique)
and lost (N - unique) are counted. The peers keep their library defaults (see ../shared/research/
peers-queues.md, whose bench_peers.py these adapters follow). A peer that is not importable is skipped
and reported as such: they are not dependencies of workctl (``pip install litequeue persist-queue huey``
in the venv you run this from).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback

from _common import median, out_path, table, verdict, write

LOCKED_SLEEP = 0.001


class WorkctlAdapter:
    """The library API: Workctl.checkout, then Workctl.submit fenced with the lease token."""

    name = "workctl (library API)"

    def __init__(self, path: str, role: str):
        from workctl import Workctl
        from workctl.config import Config

        self.wc = Workctl(path, config=Config(), create=True)
        self.agent = f"bench-{os.getpid()}"

    def enqueue_many(self, n: int) -> None:
        self.wc.propose("task.batch", {"tasks": list(range(n))})

    def claim(self):
        from workctl.errors import NoWork

        try:
            item = self.wc.checkout(agent=self.agent)["item"]
        except NoWork:
            return None
        return (item["id"], item["lease_token"]), item["input"]["task"]

    def ack(self, handle) -> None:
        self.wc.submit(handle[0], {"ok": True}, agent=self.agent, lease_token=handle[1])

    def close(self) -> None:
        self.wc.close()


class WorkctlNextAdapter(WorkctlAdapter):
    """The library API with ``submit --next``: each submit leases the next item in the same transaction
    (one commit per item), the way ``sync``, ``run --exec`` and shell agents work a queue."""

    name = "workctl (library API, submit --next)"

    def __init__(self, path: str, role: str):
        super().__init__(path, role)
        self.pending: dict | None = None

    def claim(self):
        if self.pending is not None:
            item, self.pending = self.pending, None
            return (item["id"], item["lease_token"]), item["input"]["task"]
        return super().claim()

    def ack(self, handle) -> None:
        done = self.wc.submit(handle[0], {"ok": True}, agent=self.agent, lease_token=handle[1], next=True)
        self.pending = done["next"]


RAW_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY, payload TEXT NOT NULL, state INTEGER NOT NULL DEFAULT 0,
  visible_at REAL NOT NULL, lease_token INTEGER, attempts INTEGER NOT NULL DEFAULT 0, result TEXT);
CREATE INDEX IF NOT EXISTS jobs_claimable ON jobs(visible_at) WHERE state = 0;
"""


class RawAdapter:
    """The physical limit: stdlib sqlite3, WAL, synchronous=NORMAL (as workctl), BEGIN IMMEDIATE;
    UPDATE … WHERE id = (SELECT … ORDER BY visible_at LIMIT 1) RETURNING; ack fenced by lease token."""

    name = "raw sqlite3 claim+ack"
    TTL = 300.0

    def __init__(self, path: str, role: str):
        self.c = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self.c.execute("PRAGMA journal_mode=WAL")
        self.c.execute("PRAGMA synchronous=NORMAL")
        if role == "producer":
            self.c.executescript(RAW_SCHEMA)
        self.token = os.getpid() << 20

    def enqueue_many(self, n: int) -> None:
        now = time.time()
        for i in range(n):
            self.c.execute("INSERT INTO jobs(payload, visible_at) VALUES (?, ?)", (str(i), now))

    def claim(self):
        self.token += 1
        now = time.time()
        self.c.execute("BEGIN IMMEDIATE")
        try:
            row = self.c.execute(
                "UPDATE jobs SET visible_at = ?, lease_token = ?, attempts = attempts + 1 WHERE id = "
                "(SELECT id FROM jobs WHERE state = 0 AND visible_at <= ? ORDER BY visible_at LIMIT 1) "
                "RETURNING id, payload", (now + self.TTL, self.token, now)).fetchone()
            self.c.execute("COMMIT")
        except BaseException:
            if self.c.in_transaction:
                self.c.execute("ROLLBACK")
            raise
        return None if row is None else ((row[0], self.token), int(row[1]))

    def ack(self, handle) -> None:
        cur = self.c.execute("UPDATE jobs SET state = 1, result = 'ok' WHERE id = ? AND lease_token = ? "
                             "AND state = 0", handle)
        if cur.rowcount != 1:
            raise RuntimeError(f"lease lost for job {handle[0]}")

    def close(self) -> None:
        self.c.close()


class HueyAdapter:
    """huey.storage.SqliteStorage: dequeue = BEGIN EXCLUSIVE; SELECT; DELETE (at-most-once, no ack)."""

    name = "huey SqliteStorage"
    module = "huey"

    def __init__(self, path: str, role: str):
        from huey.storage import SqliteStorage

        self.s = SqliteStorage(name="q", filename=path)

    def enqueue_many(self, n: int) -> None:
        for i in range(n):
            self.s.enqueue(str(i).encode())

    def claim(self):
        data = self.s.dequeue()
        return None if data is None else (None, int(bytes(data)))

    def ack(self, handle) -> None:
        pass

    def close(self) -> None:
        self.s.close()


class LiteQueueAdapter:
    name = "litequeue"
    module = "litequeue"

    def __init__(self, path: str, role: str):
        import litequeue

        self.q = litequeue.LiteQueue(path, queue_name="q")

    def enqueue_many(self, n: int) -> None:
        for i in range(n):
            self.q.put(str(i))

    def claim(self):
        m = self.q.pop()
        return None if m is None else (m.message_id, int(m.data))

    def ack(self, handle) -> None:
        self.q.done(handle)

    def close(self) -> None:
        self.q.close()


class PersistQueueAdapter:
    name = "persist-queue SQLiteAckQueue"
    module = "persistqueue"

    def __init__(self, path: str, role: str):
        from persistqueue import SQLiteAckQueue

        self.q = SQLiteAckQueue(os.path.dirname(path), db_file_name=os.path.basename(path), auto_resume=False,
                                multithreading=False)

    def enqueue_many(self, n: int) -> None:
        for i in range(n):
            self.q.put(i)

    def claim(self):
        from persistqueue.exceptions import Empty

        try:
            item = self.q.get(block=False, raw=True)
        except Empty:
            return None
        return item["pqid"], int(item["data"])

    def ack(self, handle) -> None:
        self.q.ack(id=handle)

    def close(self) -> None:
        self.q.close()


ADAPTERS = {"workctl": WorkctlAdapter, "workctl-next": WorkctlNextAdapter, "raw": RawAdapter, "huey": HueyAdapter, "litequeue": LiteQueueAdapter,
            "persist-queue": PersistQueueAdapter}


def _locked(exc: Exception) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def consumer(key: str, path: str, start, out, idx: int) -> None:
    acked, locked = [], 0
    try:
        adapter = ADAPTERS[key](path, "consumer")
        start.wait()
        empty = 0
        while True:
            try:
                got = adapter.claim()
            except Exception as exc:  # noqa: BLE001
                if _locked(exc):
                    locked += 1
                    time.sleep(LOCKED_SLEEP)
                    continue
                raise
            if got is None:
                empty += 1
                if empty >= 2:
                    break
                continue
            empty = 0
            handle, payload = got
            while True:
                try:
                    adapter.ack(handle)
                    break
                except Exception as exc:  # noqa: BLE001
                    if _locked(exc):
                        locked += 1
                        time.sleep(LOCKED_SLEEP)
                        continue
                    raise
            acked.append(payload)
        adapter.close()
        out.put({"idx": idx, "acked": acked, "locked": locked, "error": None})
    except Exception:  # noqa: BLE001
        out.put({"idx": idx, "acked": acked, "locked": locked, "error": traceback.format_exc()})


def run_variant(key: str, base: str, n: int, k: int) -> dict:
    ctx = mp.get_context("fork")
    path = os.path.join(base, key, "q.db")
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    os.makedirs(os.path.dirname(path))
    producer = ADAPTERS[key](path, "producer")
    producer.enqueue_many(n)
    producer.close()
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=consumer, args=(key, path, start, out, i)) for i in range(k)]
    for p in procs:
        p.start()
    time.sleep(0.3)  # every consumer has opened its connection
    t0 = time.perf_counter()
    start.set()
    results = [out.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    acked = [x for r in results for x in r["acked"]]
    unique = set(acked)
    errors = [r["error"] for r in results if r["error"]]
    for error in errors:
        print(f"ERROR in a {key} consumer:\n{error}", file=sys.stderr)
    return {"peer": ADAPTERS[key].name, "key": key, "n": n, "consumers": k, "wall_s": wall,
            "cycles_per_s": len(unique) / wall, "acks": len(acked), "duplicates": len(acked) - len(unique),
            "lost": n - len(unique & set(range(n))), "locked_errors": sum(r["locked"] for r in results),
            "per_consumer": [len(r["acked"]) for r in sorted(results, key=lambda r: r["idx"])],
            "errors": errors}


def statement_breakdown(base: str, cycles: int) -> dict:
    """Where one checkout + submit cycle of workctl goes, in one process: time per SQL statement
    (execute, including COMMIT) per cycle, and the rest (Python outside SQLite)."""
    import workctl.store.sqlite as store
    from workctl import Workctl
    from workctl.config import Config

    spent: dict[str, list[float]] = {}

    class Timed(store.Connection):
        def execute(self, sql, *args):  # type: ignore[override]
            started = time.perf_counter()
            try:
                return super().execute(sql, *args)
            finally:
                entry = spent.setdefault(" ".join(sql.split())[:70], [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - started

    original, store.Connection = store.Connection, Timed
    try:
        path = os.path.join(base, "breakdown", "q.db")
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        os.makedirs(os.path.dirname(path))
        wc = Workctl(path, config=Config(), create=True)
        wc.propose("task.batch", {"tasks": list(range(cycles))})
        spent.clear()
        started = time.perf_counter()
        for _ in range(cycles):
            item = wc.checkout(agent="bench")["item"]
            wc.submit(item["id"], {"ok": True}, agent="bench", lease_token=item["lease_token"])
        total = time.perf_counter() - started
        wc.close()
    finally:
        store.Connection = original
    rows = sorted(((sql, n / cycles, t / cycles * 1e6) for sql, (n, t) in spent.items()), key=lambda r: -r[2])
    sql_us = sum(r[2] for r in rows)
    return {"cycles": cycles, "us_per_cycle": total / cycles * 1e6, "sql_us_per_cycle": sql_us,
            "statements": [{"sql": sql, "per_cycle": n, "us_per_cycle": us} for sql, n, us in rows],
            "wal_bytes_per_cycle": {key: wal_bytes_per_cycle(key, base, min(cycles, 500))
                                    for key in ("workctl", "raw")}}


def wal_bytes_per_cycle(key: str, base: str, cycles: int) -> float:
    """Bytes appended to the WAL per claim + ack, with checkpoints off (what each commit writes)."""
    path = os.path.join(base, "wal", key, "q.db")
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    os.makedirs(os.path.dirname(path))
    adapter = ADAPTERS[key](path, "producer")
    adapter.enqueue_many(cycles)
    conn = adapter.wc.session.conn if key == "workctl" else adapter.c
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    before = os.path.getsize(path + "-wal")
    for _ in range(cycles):
        handle, _payload = adapter.claim()
        adapter.ack(handle)
    grown = os.path.getsize(path + "-wal") - before
    adapter.close()
    return grown / cycles


def importable(key: str) -> str | None:
    module = getattr(ADAPTERS[key], "module", None)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError as exc:
        return f"{exc}"
    return None


OURS = ("workctl", "workctl-next")
TARGETS = {"raw": 0.5, "huey": 1.5}  # issue 13: P1 ≥ 0.5× raw and ≥ 1.5× huey, 0 duplicates, 0 lost


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every variant this many times, interleaved; ratios are taken per round")
    parser.add_argument("--peers", default="workctl,workctl-next,raw,huey,litequeue,persist-queue")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a new temp dir)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    base = args.dir or tempfile.mkdtemp(prefix="workctl-p1-")
    keys, skipped = [], {}
    for key in [p.strip() for p in args.peers.split(",") if p.strip()]:
        why = importable(key)
        if why:
            skipped[key] = why
            print(f"skipping {key}: not importable ({why}); pip install it to include it")
        else:
            keys.append(key)
    rounds: list[dict[str, dict]] = []
    for number in range(1, args.rounds + 1):
        this: dict[str, dict] = {}
        for key in keys:  # interleaved: a slow moment of the machine hits every variant alike
            print(f"round {number}/{args.rounds}: {key} …", flush=True)
            this[key] = run_variant(key, base, args.n, args.consumers)
        rounds.append(this)
    breakdown = statement_breakdown(base, min(args.n, 2000)) if "workctl" in keys else None
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    results = {key: dict(rounds[-1][key], rounds_cycles_per_s=[r[key]["cycles_per_s"] for r in rounds],
                         duplicates=sum(r[key]["duplicates"] for r in rounds),
                         lost=sum(r[key]["lost"] for r in rounds))
               for key in keys}
    print(f"\nP1: checkout + submit (claim + ack) cycles/s, {args.n:,} items, {args.consumers} processes, "
          f"{args.rounds} round(s); dup and lost summed over the rounds")
    table(["variant", "min", "median", "max", "dup", "lost", "locked errs"],
          [[r["peer"], min(r["rounds_cycles_per_s"]), median(r["rounds_cycles_per_s"]),
            max(r["rounds_cycles_per_s"]), r["duplicates"], r["lost"], r["locked_errors"]]
           for r in results.values()])
    ratios: dict[str, dict[str, list[float]]] = {}
    for ours in (k for k in OURS if k in results):
        for key in (k for k in ("raw", "huey", "litequeue", "persist-queue") if k in results):
            per_round = [r[ours]["cycles_per_s"] / r[key]["cycles_per_s"] for r in rounds]
            ratios.setdefault(ours, {})[key] = per_round
            target = TARGETS.get(key)
            shown = verdict(median(per_round), target, True) if target else f"{median(per_round):.2f}×"
            print(f"{results[ours]['peer']} / {results[key]['peer']}: median {shown}  "
                  f"(min {min(per_round):.2f}×, max {max(per_round):.2f}×)")
        print(f"{results[ours]['peer']}: duplicates {results[ours]['duplicates']}, lost {results[ours]['lost']} "
              "(target 0, 0)")
    if breakdown:
        print(f"\none workctl checkout + submit cycle, one process, {breakdown['cycles']:,} cycles: "
              f"{breakdown['us_per_cycle']:.0f} µs, of which SQLite {breakdown['sql_us_per_cycle']:.0f} µs")
        table(["statement", "per cycle", "µs per cycle"],
              [[r["sql"], r["per_cycle"], r["us_per_cycle"]] for r in breakdown["statements"]])
        wal = breakdown["wal_bytes_per_cycle"]
        print(f"WAL bytes appended per cycle (checkpoints off): workctl {wal['workctl']:,.0f}, "
              f"raw {wal['raw']:,.0f}")
    write(out_path("peers", args.out), "P1", {"n": args.n, "consumers": args.consumers, "rounds": args.rounds,
                                              "results": results, "skipped": skipped, "ratios": ratios,
                                              "breakdown": breakdown,
                                              "targets": {"raw": ">= 0.5", "huey": ">= 1.5",
                                                          "duplicates": 0, "lost": 0}})
    return {"results": results, "skipped": skipped, "ratios": ratios}


if __name__ == "__main__":
    main()
