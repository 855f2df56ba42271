"""serve (issue 14): checkout+submit cycles/s over HTTP with 4 concurrent clients, beside the same work
through the library and through the CLI (a process per call), on SQLite and (with --pg) PostgreSQL.

    python bench/serve_bench.py [--items 400] [--cli-items 80] [--clients 4] [--runs 3] [--pg URL]

Every variant does the same work on a fresh store holding one `task.batch` order: `clients` workers
each loop "check out the next item, submit `{}` with its lease token" until there is no work, all at
once. One cycle = one checkout + one submit.

* http: a real `workctl serve` process; each worker is a thread with its own keep-alive httpx client
  (`POST /checkout`, `POST /items/{id}/submit` with X-Lease-Token and X-Idempotency-Key);
* library: each worker is a thread with its own `Workctl` handle in this process (the floor: no HTTP,
  no process start);
* cli: each worker is a thread running `workctl checkout --json` and `workctl submit` processes (the
  fast path), as 4 shell agents would.

cycles/s = items / wall time of the whole drain. Printed as min/median/max over the runs, and the
medians' ratios http/cli and http/library.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from _common import ROOT, compile_workctl, median, out_path, table, workctl_command, write

sys.path.insert(0, str(ROOT))


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WORKCTL_")} | {"WORKCTL_LOAD_PLUGINS": "0"}


@contextmanager
def store(backend: str, scratch: str, pg: str | None) -> Iterator[str]:
    """A fresh store: a SQLite file, or a PostgreSQL schema of its own (dropped afterwards)."""
    if backend == "sqlite":
        yield os.path.join(scratch, f"{uuid.uuid4().hex[:8]}.db")
        return
    import psycopg

    from scale_bench import pg_store

    assert pg is not None
    label = f"serve_{uuid.uuid4().hex[:10]}"
    try:
        yield pg_store(pg, label)
    finally:
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA bench_p5_{label} CASCADE")


def fill(path: str, items: int) -> None:
    from workctl import Workctl
    from workctl.config import Config

    with Workctl(path, config=Config(), create=True) as wc:
        wc.propose("task.batch", {"tasks": [{"n": i} for i in range(items)]})


def drain(clients: int, worker: Callable[[int], int]) -> tuple[float, int]:
    """Run ``clients`` workers at once; (wall seconds, cycles done)."""
    done = [0] * clients
    errors: list[BaseException] = []

    def body(n: int) -> None:
        try:
            done[n] = worker(n)
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed, sum(done)


def library(path: str, items: int, clients: int) -> float:
    from workctl import Workctl
    from workctl.config import Config
    from workctl.errors import NoWork

    fill(path, items)
    handles = [Workctl(path, config=Config()) for _ in range(clients)]

    def worker(n: int) -> int:
        wc, cycles = handles[n], 0
        while True:
            try:
                item = wc.checkout(agent=f"lib-{n}")["item"]
            except NoWork:
                return cycles
            wc.submit(item["id"], {}, agent=f"lib-{n}", lease_token=item["lease_token"])
            cycles += 1

    try:
        elapsed, cycles = drain(clients, worker)
    finally:
        for wc in handles:
            wc.close()
    assert cycles == items, (cycles, items)
    return items / elapsed


def cli(path: str, items: int, clients: int) -> float:
    fill(path, items)
    wc, e = workctl_command(), env()

    def worker(n: int) -> int:
        cycles = 0
        while True:
            out = subprocess.run([*wc, "--db", path, "checkout", "--json", "--agent", f"cli-{n}"],
                                 capture_output=True, text=True, env=e)
            if out.returncode == 3:  # no work
                return cycles
            item = json.loads(out.stdout)["item"]
            subprocess.run([*wc, "--db", path, "submit", item["id"], "--result", "{}", "--agent", f"cli-{n}",
                            "--lease-token", item["lease_token"], "--json"], capture_output=True, env=e, check=True)
            cycles += 1

    elapsed, cycles = drain(clients, worker)
    assert cycles == items, (cycles, items)
    return items / elapsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(path: str, items: int, clients: int) -> float:
    import httpx

    fill(path, items)
    made = subprocess.run([*workctl_command(), "--db", path, "tokens", "create", "--scope", "agent", "--name", "bench",
                           "--json"], capture_output=True, text=True, env=env(), check=True)
    secret = json.loads(made.stdout)["token"]["value"]
    port = free_port()
    server = subprocess.Popen([*workctl_command(), "--db", path, "serve", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # until it listens
            try:
                httpx.get(base + "/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("workctl serve did not start") from None
                time.sleep(0.05)
        api = base + "/api/agent/work"

        def worker(n: int) -> int:
            cycles = 0
            headers = {"Authorization": f"Bearer {secret}", "X-Agent-ID": f"http-{n}"}
            with httpx.Client(timeout=60, headers=headers) as client:
                while True:
                    r = client.post(api + "/checkout")
                    if r.status_code == 409 and r.json()["error"]["code"] == "no_items_available":
                        return cycles
                    r.raise_for_status()
                    item = r.json()["item"]
                    s = client.post(f"{api}/items/{item['id']}/submit", json={"result": {}},
                                    headers={"X-Lease-Token": item["lease_token"], "X-Idempotency-Key": item["id"]})
                    s.raise_for_status()
                    cycles += 1

        elapsed, cycles = drain(clients, worker)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert cycles == items, (cycles, items)
    return items / elapsed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=400, help="items per http and library run")
    parser.add_argument("--cli-items", type=int, default=80, help="items per cli run (a process per call)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pg", default=None, metavar="URL", help="also on PostgreSQL (a schema per store)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    compile_workctl()
    backends = ["sqlite", *(["postgres"] if args.pg else [])]
    variants: dict[str, tuple[Callable[[str, int, int], float], int]] = {
        "http": (http, args.items), "library": (library, args.items), "cli": (cli, args.cli_items)}
    rates: dict[str, dict[str, list[float]]] = {b: {v: [] for v in variants} for b in backends}
    scratch = tempfile.mkdtemp(prefix="workctl-serve-bench-")
    try:
        for _ in range(args.runs):  # interleaved, so drift on a shared machine hits every variant alike
            for backend in backends:
                for name, (fn, items) in variants.items():
                    with store(backend, scratch, args.pg) as path:
                        rates[backend][name].append(fn(path, items, args.clients))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary: dict[str, Any] = {}
    rows = []
    for backend in backends:
        med = {name: median(values) for name, values in rates[backend].items()}
        summary[backend] = {"median": med, "http_vs_cli": med["http"] / med["cli"],
                            "http_vs_library": med["http"] / med["library"]}
        for name, values in rates[backend].items():
            rows.append([backend, name, min(values), med[name], max(values), med[name] / med["cli"],
                         med[name] / med["library"]])
    print(f"serve: checkout+submit cycles/s, {args.clients} concurrent clients, {args.runs} runs "
          f"({args.items} items per http/library run, {args.cli_items} per cli run)")
    table(["backend", "variant", "min", "median", "max", "× cli", "× library"], rows)
    result = {"items": args.items, "cli_items": args.cli_items, "clients": args.clients, "runs": args.runs,
              "cycles_per_s": rates, "summary": summary}
    write(out_path("serve", args.out), "serve (issue 14)", result)
    return result


if __name__ == "__main__":
    main()
