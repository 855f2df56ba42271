"""P4: `workctl sync` users/s against the sample server, beside (a) the seed's agent loop (one
sequential GET per user, one submit per batch) and (b) a bare httpx loop with the same concurrency
and the bulk endpoint (no store at all) — all in one run, on one machine, as ratios.

    python bench/sync_bench.py [--users 5000] [--latency 0.002] [--runs 3] [--out bench/results/sync.json]

Peak memory: run with --rss to measure `workctl sync` peak RSS for growing user counts in fresh
processes (flat in N is the target).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from workctl import Workctl
from workctl.config import Config
from workctl.agents.sync import SyncOptions

FIELDS = ["email", "phone", "company"]


def make_db(users: int) -> str:
    path = os.path.join(tempfile.mkdtemp(prefix="workctl-bench-"), "bench.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT, phone TEXT, company TEXT)")
    conn.executemany("INSERT INTO users (id) VALUES (?)", ((i,) for i in range(1, users + 1)))
    conn.commit()
    conn.close()
    return path


def config_for(url: str) -> Config:
    return Config(raw={"sources": {"crm": {"base_url": f"{url}/crm", "concurrency": 8}}})


def run_workctl_sync(url: str, users: int) -> float:
    db = make_db(users)
    with Workctl(db, config=config_for(url), create=True) as wc:
        wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, users + 1)), "fields": FIELDS})
        started = time.perf_counter()
        report = wc.sync(SyncOptions(agent="bench"))
        elapsed = time.perf_counter() - started
    assert report["users"]["synced"] == users, report["users"]
    return users / elapsed


def run_seed_loop(url: str, users: int) -> float:
    """The seed's agent: for each batch, GET every user in turn, then submit."""
    db = make_db(users)
    with Workctl(db, config=config_for(url), create=True) as wc, httpx.Client(base_url=f"{url}/crm") as http:
        wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, users + 1)), "fields": FIELDS})
        started = time.perf_counter()
        while True:
            try:
                item = wc.checkout(agent="seed")["item"]
            except Exception:
                break
            synced = []
            for user_id in item["input"]["user_ids"]:
                record = http.get(f"/users/{user_id}").json()["data"]
                data = {f: record.get(f) for f in item["input"]["fields"]}
                synced.append({"user_id": user_id, "data": data, "verified": any(data.values())})
            wc.submit(item["id"], {"success": True, "synced_users": synced, "errors": []}, agent="seed", lease_token=item["lease_token"])
        elapsed = time.perf_counter() - started
    return users / elapsed


def run_bare_loop(url: str, users: int, concurrency: int = 8) -> float:
    """The ceiling: bulk GETs of 50 ids with the same concurrency, results thrown away."""
    ids = list(range(1, users + 1))
    batches = [ids[i:i + 50] for i in range(0, len(ids), 50)]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=f"{url}/crm", limits=limits) as http:
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            got = sum(pool.map(lambda b: len(http.get("/users", params={"ids": ",".join(map(str, b))})
                                            .json()["data"]), batches))
        elapsed = time.perf_counter() - started
    assert got == users
    return users / elapsed


class ServerProcess:
    """The sample server in its own process, as a real source would be: it must not share our GIL."""

    def __init__(self, latency: float):
        self.proc = subprocess.Popen([sys.executable, "-m", "workctl", "sources", "serve-sample", "--port", "0",
                                      "--latency", str(latency)], stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()  # "Serving sample sources on http://127.0.0.1:PORT: …"
        self.url = first.split(" on ", 1)[1].split(": ", 1)[0].strip()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def peak_rss(users: int, url: str) -> int:
    """Peak RSS (bytes) of a fresh process that proposes and syncs `users` users."""
    code = (
        "import resource, sys; sys.path.insert(0, %r); from bench.sync_bench import run_workctl_sync; "
        "run_workctl_sync(%r, %d); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
    ) % (str(Path(__file__).resolve().parent.parent), url, users)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.002, help="server-side seconds per request")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed-users", type=int, default=None, help="users for the (slow) seed loop")
    parser.add_argument("--rss", type=str, default="", help="comma-separated user counts for peak RSS")
    parser.add_argument("--out", type=str, default="bench/results/sync.json")
    args = parser.parse_args(argv)
    seed_users = args.seed_users or min(args.users, 1000)
    figures: dict[str, list[float]] = {"workctl sync": [], "seed loop": [], "bare httpx loop": []}
    with ServerProcess(args.latency) as server:
        for _ in range(args.runs):  # interleaved, so drift hits every variant alike
            figures["bare httpx loop"].append(run_bare_loop(server.url, args.users))
            figures["workctl sync"].append(run_workctl_sync(server.url, args.users))
            figures["seed loop"].append(run_seed_loop(server.url, seed_users))
        rss = {int(n): peak_rss(int(n), server.url) for n in args.rss.split(",") if n.strip()}
    median = {name: statistics.median(values) for name, values in figures.items()}
    # Side by side: each run's sync against the bare loop of the same run (min / median / max over runs).
    per_run = sorted(w / b for w, b in zip(figures["workctl sync"], figures["bare httpx loop"], strict=True))
    spread = {"min": per_run[0], "median": statistics.median(per_run), "max": per_run[-1]}
    result = {
        "users": args.users, "seed_users": seed_users, "latency_s": args.latency, "runs": args.runs,
        "users_per_second": median,
        "ratio_vs_seed_loop": median["workctl sync"] / median["seed loop"],
        "ratio_vs_bare_loop": median["workctl sync"] / median["bare httpx loop"],
        "ratio_vs_bare_loop_per_run": spread, "runs_users_per_second": figures,
        "targets": {"vs_seed_loop": ">= 10", "vs_bare_loop": ">= 0.7"},
        "peak_rss_bytes": rss,
    }
    print(f"P4 sync throughput: {args.users} users (seed loop: {seed_users}), server latency {args.latency * 1000:.1f} ms, "
          f"median of {args.runs}")
    print(f"{'variant':<18} {'users/s':>10}")
    for name, value in median.items():
        print(f"{name:<18} {value:>10.0f}")
    print(f"workctl sync / seed loop  = {result['ratio_vs_seed_loop']:.1f}x (target >= 10x)")
    print(f"workctl sync / bare loop  = {result['ratio_vs_bare_loop']:.2f}x (target >= 0.7x); per run: "
          f"min {spread['min']:.2f}x, median {spread['median']:.2f}x, max {spread['max']:.2f}x")
    for n, size in rss.items():
        print(f"peak RSS, sync of {n} users: {size / 1e6:.1f} MB")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
