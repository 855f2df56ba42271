"""P2: wall time of one `workctl checkout --json` process on a 10,000-item store, against
`python -c "import sqlite3, json"` (the floor of any stdlib CLI), median of interleaved runs; plus
what that process imports, with `python -X importtime` costs.

    python bench/startup_bench.py [--items 10000] [--repeat 20]

Also timed, for context (not the figure): the same command with the fast path disabled
(WORKCTL_NO_FASTPATH=1: the Typer app) and `python -c pass`. The console script next to this
interpreter is used (else `python -m workctl`). workctl's .pyc files are written first, as an
installed package has them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _common import compile_workctl, median, out_path, table, verdict, workctl_command, write

TARGET = 4.0


def make_store(path: str, items: int) -> None:
    from workctl import Workctl
    from workctl.config import Config

    with Workctl(path, config=Config(), create=True) as wc:
        wc.propose("task.batch", {"tasks": [{"n": i} for i in range(items)]})


def time_once(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return elapsed


def importtime(argv: list[str], env: dict[str, str], runs: int = 5) -> list[dict]:
    """Every module the command imports: self and cumulative microseconds (median of runs), in import order."""
    seen: dict[str, dict[str, list[int]]] = {}
    order: list[str] = []
    depth: dict[str, int] = {}
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, env=env)
        for line in proc.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if not m:
                continue
            name = m.group(4)
            if name not in seen:
                seen[name] = {"self": [], "cumulative": []}
                order.append(name)
                depth[name] = (len(m.group(3)) - 1) // 2
            seen[name]["self"].append(int(m.group(1)))
            seen[name]["cumulative"].append(int(m.group(2)))
    return [{"module": n, "depth": depth[n], "self_us": statistics.median(seen[n]["self"]),
             "cumulative_us": statistics.median(seen[n]["cumulative"])} for n in order]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    compile_workctl()
    scratch = tempfile.mkdtemp(prefix="workctl-p2-")
    db = os.path.join(scratch, "store.db")
    make_store(db, args.items)
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKCTL_")}
    command = [*workctl_command(), "--db", db, "checkout", "--json", "--agent", "bench"]
    variants = {
        "python -c \"import sqlite3, json\" (baseline)": ([py, "-c", "import sqlite3, json"], env),
        "workctl checkout --json": (command, env),
        "workctl checkout --json, fast path off (Typer)": (command, {**env, "WORKCTL_NO_FASTPATH": "1"}),
        "python -c pass": ([py, "-c", "pass"], env),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for cmd, e in variants.values():  # warm caches
        time_once(cmd, e)
    needed = (args.repeat + 1) * 2 + 5
    if needed > args.items:
        raise SystemExit(f"--items must be at least {needed} for --repeat {args.repeat}")
    for _ in range(args.repeat):  # interleaved, so drift hits every variant alike
        for name, (cmd, e) in variants.items():
            times[name].append(time_once(cmd, e))
    med = {name: median(v) * 1000 for name, v in times.items()}
    base = med["python -c \"import sqlite3, json\" (baseline)"]
    ratio = med["workctl checkout --json"] / base
    modules = importtime(command[1:] if command[0] == py else ["-m", "workctl", *command[1:]], env)
    baseline_modules = {m["module"] for m in importtime(["-c", "import sqlite3, json"], env)}
    shutil.rmtree(scratch, ignore_errors=True)

    print(f"P2 start-up: one process per call, {args.items:,}-item store, median of {args.repeat} interleaved runs")
    table(["command", "median ms", "min ms", "× baseline"],
          [[name, med[name], min(times[name]) * 1000, med[name] / base] for name in variants])
    print(f"workctl checkout --json / baseline: {verdict(ratio, TARGET, False)}")
    print("\nwhat `workctl checkout --json` imports beyond `import sqlite3, json` (python -X importtime, "
          "median of 5; µs; post-order: a module follows what it imported):")
    extra = [m for m in modules if m["module"] not in baseline_modules]
    table(["module", "self µs", "cumulative µs"],
          [["  " * m["depth"] + m["module"], int(m["self_us"]), int(m["cumulative_us"])] for m in extra])
    heavy = sorted({m["module"].split(".")[0] for m in modules} & {"typer", "click", "pydantic", "rich", "httpx",
                                                                   "jsonschema", "sqlite_utils"})
    print(f"heavy packages imported: {heavy or 'none'}")
    result = {"items": args.items, "repeat": args.repeat, "median_ms": med,
              "runs_ms": {k: [t * 1000 for t in v] for k, v in times.items()}, "ratio": ratio,
              "target": f"<= {TARGET}", "met": ratio <= TARGET, "command": command,
              "imports_beyond_baseline": extra, "heavy_imported": heavy}
    write(out_path("startup", args.out), "P2", result)
    return result


if __name__ == "__main__":
    main()
