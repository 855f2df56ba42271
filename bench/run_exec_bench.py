"""P6: `workctl run --exec CMD` items/s against a shell agent that starts one `workctl checkout --json`
process and one `workctl submit` process per item (both on the fast path), in the same run.

    python bench/run_exec_bench.py [--items 300] [--baseline-items 60] [--runs 3]

Each variant gets a fresh store with one `task.batch` order and is timed as whole processes, start-up
included:

* `workctl run --exec true`: the figure's command. `true` prints nothing, which is not a JSON result,
  so every item is released with that error (a counted attempt) and, backing off, is not retried
  within the run: one checkout, one command, one release per item;
* `workctl run --exec "echo {}"`: the same loop with a result that is submitted;
* baseline: per item, `workctl checkout --json` then `workctl submit ID --result '{}'
  --lease-token T`, each its own process, as a shell agent would.

items/s = items handled / wall time. The figure is run --exec true / baseline. Target ≥ 5×.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

from _common import compile_workctl, median, out_path, table, verdict, workctl_command, write

TARGET = 5.0


def make_store(path: str, items: int) -> None:
    from workctl import Workctl
    from workctl.config import Config

    with Workctl(path, config=Config(), create=True) as wc:
        wc.propose("task.batch", {"tasks": [{"n": i} for i in range(items)]})


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WORKCTL_")}


def run_exec(path: str, items: int, command: str) -> tuple[float, dict]:
    make_store(path, items)
    started = time.perf_counter()
    proc = subprocess.run([*workctl_command(), "--db", path, "run", "--exec", command, "--agent", "bench", "--json"],
                          capture_output=True, text=True, env=env())
    elapsed = time.perf_counter() - started
    # `true` prints no result: every item is released with an error, which run reports with exit 7.
    if proc.returncode not in (0, 7):
        raise RuntimeError(f"run exited {proc.returncode}: {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    handled = sum(report["items"][key] for key in ("submitted", "released", "lost"))
    if handled != items:
        raise RuntimeError(f"run handled {handled} of {items} items: {report}")
    return items / elapsed, report["items"]


def process_per_call(path: str, items: int) -> float:
    make_store(path, items)
    wc = workctl_command()
    e = env()
    started = time.perf_counter()
    for _ in range(items):
        out = subprocess.run([*wc, "--db", path, "checkout", "--json", "--agent", "bench"], capture_output=True,
                             text=True, env=e, check=True).stdout
        item = json.loads(out)["item"]
        subprocess.run([*wc, "--db", path, "submit", item["id"], "--result", "{}", "--agent", "bench",
                        "--lease-token", item["lease_token"], "--json"], capture_output=True, text=True, env=e,
                       check=True)
    return items / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--baseline-items", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    compile_workctl()
    scratch = tempfile.mkdtemp(prefix="workctl-p6-")
    rates: dict[str, list[float]] = {"run --exec true": [], "run --exec 'echo {}'": [],
                                     "checkout + submit process per item (baseline)": []}
    outcomes = {}
    try:
        for run in range(args.runs):  # interleaved
            rate, outcomes["true"] = run_exec(os.path.join(scratch, f"t{run}.db"), args.items, "true")
            rates["run --exec true"].append(rate)
            rate, outcomes["echo"] = run_exec(os.path.join(scratch, f"e{run}.db"), args.items, "echo {}")
            rates["run --exec 'echo {}'"].append(rate)
            rates["checkout + submit process per item (baseline)"].append(
                process_per_call(os.path.join(scratch, f"b{run}.db"), args.baseline_items))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    med = {name: median(v) for name, v in rates.items()}
    base = med["checkout + submit process per item (baseline)"]
    ratio = med["run --exec true"] / base
    print(f"P6 run --exec: {args.items} items per run (baseline {args.baseline_items}), median of {args.runs}")
    table(["variant", "items/s", "× baseline", "runs items/s"],
          [[name, med[name], med[name] / base, " ".join(f"{x:.0f}" for x in rates[name])] for name in rates])
    print(f"outcomes: --exec true {outcomes['true']}, --exec 'echo {{}}' {outcomes['echo']}")
    print(f"run --exec true / baseline: {verdict(ratio, TARGET, True)}")
    result = {"items": args.items, "baseline_items": args.baseline_items, "runs": args.runs,
              "items_per_s": rates, "median_items_per_s": med, "ratio": ratio,
              "ratio_echo": med["run --exec 'echo {}'"] / base, "outcomes": outcomes,
              "target": f">= {TARGET}", "met": ratio >= TARGET}
    write(out_path("run_exec", args.out), "P6", result)
    return result


if __name__ == "__main__":
    main()
