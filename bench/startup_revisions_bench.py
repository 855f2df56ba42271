"""Start-up of the hot agent commands at two git revisions, side by side in one run: did a change (a
package move, a new import) make `workctl checkout --json` or `workctl status --json` slower?

    python bench/startup_revisions_bench.py --before 239cc43 --after HEAD [--items 2000] [--repeat 30]

Each revision is exported with `git archive` into a scratch directory, its .pyc files are written (as an
installed package has them), and it gets its own store, made by its own `propose` (the store schema
differs between revisions). Every run is `python -m workctl --db STORE COMMAND` with PYTHONPATH at that
revision's tree, so both revisions start the same way; the baseline is `python -c "import sqlite3,
json"`, the floor of any stdlib CLI. All variants are interleaved, so the machine's drift hits each alike.
The figure is after / before of the medians, with min, median and max of each variant.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, median, out_path, table, write

COMMANDS = {"checkout --json": ["checkout", "--json", "--agent", "bench"], "status --json": ["status", "--json"]}


def export(revision: str, into: Path) -> str:
    """The tree of ``revision`` under ``into``; returns the full commit id."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit, "workctl"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    compileall.compile_dir(str(into / "workctl"), quiet=1)
    return commit


def make_store(tree: Path, db: Path, items: int, env: dict[str, str]) -> None:
    payload = db.with_suffix(".payload.json")
    payload.write_text(json.dumps({"tasks": list(range(items))}))
    subprocess.run([sys.executable, "-m", "workctl", "--db", str(db), "propose", "task.batch", "--payload",
                    f"@{payload}", "--json"], check=True, capture_output=True, env={**env, "PYTHONPATH": str(tree)})


def time_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one process. The CPU time (user + system of the child) is what the
    process itself costs: on a loaded machine the wall time also holds the waits for a core."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision measured as the baseline of the change")
    parser.add_argument("--after", default="HEAD", help="git revision measured against it (default HEAD)")
    parser.add_argument("--items", type=int, default=2000, help="items in each store (checkout takes one a run)")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.items < args.repeat + 2:
        raise SystemExit(f"--items must be at least {args.repeat + 2} for --repeat {args.repeat}")
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKCTL_") and k != "PYTHONPATH"}
    scratch = Path(tempfile.mkdtemp(prefix="workctl-revs-"))
    try:
        commits: dict[str, str] = {}
        variants: dict[str, tuple[list[str], dict[str, str]]] = {
            'python -c "import sqlite3, json" (baseline)': ([py, "-c", "import sqlite3, json"], env)}
        for label, revision in (("before", args.before), ("after", args.after)):
            tree = scratch / label
            commits[label] = export(revision, tree)
            db = scratch / f"{label}.db"
            make_store(tree, db, args.items, env)
            for name, command in COMMANDS.items():
                variants[f"{label}: {name}"] = ([py, "-m", "workctl", "--db", str(db), *command],
                                                {**env, "PYTHONPATH": str(tree)})
        times: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        for cmd, e in variants.values():  # warm the page cache and the .pyc files
            time_once(cmd, e)
        for _ in range(args.repeat):
            for name, (cmd, e) in variants.items():
                wall, used = time_once(cmd, e)
                times[name].append(wall)
                cpu[name].append(used)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    ms = {name: sorted(t * 1000 for t in values) for name, values in times.items()}
    cpu_ms = {name: sorted(t * 1000 for t in values) for name, values in cpu.items()}
    med = {name: median(values) for name, values in ms.items()}
    cpu_med = {name: median(values) for name, values in cpu_ms.items()}
    base = med['python -c "import sqlite3, json" (baseline)']
    cpu_base = cpu_med['python -c "import sqlite3, json" (baseline)']
    print(f"start-up at two revisions: before {args.before} ({commits['before'][:10]}), after {args.after} "
          f"({commits['after'][:10]}); {args.items:,}-item stores, {args.repeat} interleaved runs each")
    print("wall time:")
    table(["command", "min ms", "median ms", "max ms", "× baseline"],
          [[name, v[0], med[name], v[-1], med[name] / base] for name, v in ms.items()])
    print("CPU time (user + system of the process):")
    table(["command", "min ms", "median ms", "max ms", "× baseline"],
          [[name, v[0], cpu_med[name], v[-1], cpu_med[name] / cpu_base] for name, v in cpu_ms.items()])
    ratios = {name: med[f"after: {name}"] / med[f"before: {name}"] for name in COMMANDS}
    # The fastest run is the least disturbed by other load on a shared machine: shown next to the medians.
    min_ratios = {name: ms[f"after: {name}"][0] / ms[f"before: {name}"][0] for name in COMMANDS}
    cpu_ratios = {name: cpu_med[f"after: {name}"] / cpu_med[f"before: {name}"] for name in COMMANDS}
    for name, ratio in ratios.items():
        print(f"{name}: after / before = {ratio:.3f}× wall (medians), {min_ratios[name]:.3f}× wall (fastest runs), "
              f"{cpu_ratios[name]:.3f}× CPU (medians); ≤ 1.0 is not slower")
    result = {"before": {"revision": args.before, "commit": commits["before"]},
              "after": {"revision": args.after, "commit": commits["after"]},
              "items": args.items, "repeat": args.repeat, "runs_ms": ms, "median_ms": med,
              "ratio_after_before": ratios, "ratio_after_before_fastest": min_ratios,
              "cpu_runs_ms": cpu_ms, "cpu_median_ms": cpu_med, "ratio_after_before_cpu": cpu_ratios,
              "ratio_to_baseline": {n: m / base for n, m in med.items()}}
    write(out_path("startup_revisions", args.out), "P2 before/after", result)
    return result


if __name__ == "__main__":
    main()
