"""P2: whole-process start-up of EVERY command, against `python -c "import sqlite3, json"` (the floor of
any stdlib CLI): each command's wall time, interleaved with the baseline, as a ratio to the baseline of
the same round (min/median/max over the rounds); plus what `workctl checkout --json` imports, with
`python -X importtime` costs, and which heavy packages each command imports.

    python bench/startup_bench.py [--items 10000] [--repeat 20]

Targets (issue 16): the agent commands (checkout, heartbeat, release, submit) <= 2.0x; status, orders,
show, log, propose, approve --dry-run and --help <= 3.0x. Every command runs against a real store: a
10,000-item order (what checkout leases from) and a small submitted order (what show, log, status
ORDER and approve --dry-run read); release and submit each get their own leased item per run, leased
beforehand through the library. Output goes to /dev/null (a pipe's view: plain tables, compact JSON).

Also timed, for context (not a figure): checkout with the fast path disabled (WORKCTL_NO_FASTPATH=1:
the Typer app) and `python -c pass`. The console script next to this interpreter is used (else
`python -m workctl`). workctl's .pyc files are written first, as an installed package has them.
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
from typing import Callable

from _common import compile_workctl, median, out_path, table, workctl_command, write

AGENT_TARGET = 2.0  # checkout, heartbeat, release, submit: one process per call of a shell agent
TARGET = 3.0        # every other command an operator or a cron line runs


def make_store(path: str, items: int, leases: int) -> dict:
    """The store every command runs against; returns the ids and leases the command lines need."""
    from workctl import Workctl
    from workctl.config import Config

    with Workctl(path, config=Config(), create=True) as wc:
        small = wc.propose("task.batch", {"tasks": [{"n": i} for i in range(3)]}, priority=9)["order"]["id"]
        for _ in range(3):  # the small order first (priority 9): submitted, so approve --dry-run has a diff
            item = wc.checkout(small, agent="bench")["item"]
            wc.submit(item["id"], {"ok": True}, agent="bench", lease_token=item["lease_token"])
        wc.propose("task.batch", {"tasks": [{"n": i} for i in range(items)]})
        held = [wc.checkout(agent="bench")["item"] for _ in range(leases)]
    return {"small": small, "leases": [(item["id"], item["lease_token"]) for item in held]}


HEAVY = {"typer", "click", "pydantic", "rich", "httpx", "jsonschema", "sqlite_utils"}


def time_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one process, CPU being the child's user + sys from wait4: on a machine
    shared with other work, CPU time is the steadier of the two (waiting for a core is not counted)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {err.decode()[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime


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


def commands(workctl: list[str], db: str, store: dict, repeat: int) -> dict[str, tuple[bool, Callable[[int], list[str]]]]:
    """name -> (agent command?, argv of run i). Release and submit use lease i of their own share."""
    base = [*workctl, "--db", db]
    small, leases = store["small"], store["leases"]
    heartbeat_id, heartbeat_token = leases[0]
    release, submit = leases[1:repeat + 2], leases[repeat + 2:]
    return {
        "checkout --json": (True, lambda i: [*base, "checkout", "--json", "--agent", "bench"]),
        "heartbeat --json": (True, lambda i: [*base, "heartbeat", heartbeat_id, "--agent", "bench", "--lease-token",
                                              heartbeat_token, "--json"]),
        "release --json": (True, lambda i: [*base, "release", release[i][0], "--agent", "bench", "--lease-token",
                                            release[i][1], "--json"]),
        "submit --json": (True, lambda i: [*base, "submit", submit[i][0], "--agent", "bench", "--lease-token",
                                           submit[i][1], "--result", '{"ok": true}', "--json"]),
        "status": (False, lambda i: [*base, "status"]),
        "status ORDER": (False, lambda i: [*base, "status", small]),
        "orders": (False, lambda i: [*base, "orders"]),
        "show ORDER": (False, lambda i: [*base, "show", small]),
        "log ORDER": (False, lambda i: [*base, "log", small]),
        "propose": (False, lambda i: [*base, "propose", "task.batch", "--payload", '{"tasks": [{"n": 1}]}']),
        "approve ORDER --dry-run": (False, lambda i: [*base, "approve", small, "--dry-run"]),
        "--help": (False, lambda i: [*workctl, "--help"]),
        "config": (False, lambda i: [*base, "config"]),
        "checkout --json, fast path off (Typer; context)": (True, lambda i: [*base, "checkout", "--json", "--agent",
                                                                             "bench"]),
    }


BEFORE = ("status", "orders", "show ORDER", "propose", "approve ORDER --dry-run", "--help")
BASELINE = "python -c \"import sqlite3, json\" (baseline)"
CONTEXT = "checkout --json, fast path off (Typer; context)"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", default=None)
    parser.add_argument("--before", default=None, metavar="DIR",
                        help="also time the operator commands from another checkout's workctl/ (e.g. an "
                        "export of the commit before this change), interleaved in the same rounds")
    args = parser.parse_args(argv)
    needed = (args.repeat + 1) * 2 + 5
    if needed > args.items:
        raise SystemExit(f"--items must be at least {needed} for --repeat {args.repeat}")
    compile_workctl()
    scratch = tempfile.mkdtemp(prefix="workctl-p2-")
    db = os.path.join(scratch, "store.db")
    store = make_store(db, args.items, leases=1 + 2 * (args.repeat + 1))
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKCTL_")}
    workctl = workctl_command()
    table_of = commands(workctl, db, store, args.repeat)
    variants: dict[str, tuple[Callable[[int], list[str]], dict[str, str]]] = {
        BASELINE: (lambda i: [py, "-c", "import sqlite3, json"], env)}
    for name, (_, argv_of) in table_of.items():
        variants[name] = (argv_of, {**env, "WORKCTL_NO_FASTPATH": "1"} if name == CONTEXT else env)
    if args.before:
        import compileall

        compileall.compile_dir(os.path.join(args.before, "workctl"), quiet=1)
        # That checkout's own entry point, ahead of the installed (editable) workctl on sys.path.
        entry = f"import sys; sys.path.insert(0, {args.before!r}); from workctl.cli.fastpath import run; run()"
        for name in BEFORE:
            argv_of = table_of[name][1]
            variants[f"{name} (before)"] = (lambda i, argv_of=argv_of: [py, "-c", entry,
                                                                        *argv_of(i)[len(workctl):]], env)
    variants["python -c pass"] = (lambda i: [py, "-c", "pass"], env)
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for argv_of, e in variants.values():  # warm caches (and use run index `repeat` of each share)
        time_once(argv_of(args.repeat), e)
    for i in range(args.repeat):  # interleaved, so drift hits every variant alike
        for name, (argv_of, e) in variants.items():
            wall, used = time_once(argv_of(i), e)
            times[name].append(wall)
            cpu[name].append(used)
    med = {name: median(v) * 1000 for name, v in times.items()}
    ratios = {name: [t / b for t, b in zip(times[name], times[BASELINE], strict=True)] for name in variants}
    cpu_ratio = {name: statistics.median(cpu[name]) / statistics.median(cpu[BASELINE]) for name in variants}
    checkout = table_of["checkout --json"][1](0)
    modules = importtime(checkout[1:] if checkout[0] == py else ["-m", "workctl", *checkout[1:]], env)
    baseline_modules = {m["module"] for m in importtime(["-c", "import sqlite3, json"], env)}
    heavy_by_command = {}
    for name, (argv_of, e) in variants.items():
        if name in (BASELINE, "python -c pass"):
            continue
        cmd = argv_of(args.repeat)
        seen = importtime(cmd[1:] if cmd[0] == py else ["-m", "workctl", *cmd[1:]], e, runs=1)
        heavy_by_command[name] = sorted({m["module"].split(".")[0] for m in seen} & HEAVY)
    shutil.rmtree(scratch, ignore_errors=True)

    print(f"P2 start-up: one process per call, {args.items:,}-item store, {args.repeat} interleaved rounds; "
          "ratio = the command's time / the baseline's time in the same round")
    rows, verdicts = [], {}
    for name in variants:
        agent = table_of.get(name, (False, None))[0]
        context = name in (BASELINE, CONTEXT, "python -c pass") or name.endswith("(before)")
        target = None if context else (AGENT_TARGET if agent else TARGET)
        r = ratios[name]
        ratio = statistics.median(r)
        if target is not None:
            verdicts[name] = {"ratio_median": ratio, "ratio_min": min(r), "ratio_max": max(r), "target": target,
                              "met": ratio <= target, "cpu_ratio": cpu_ratio[name]}
        rows.append([name, min(times[name]) * 1000, med[name], max(times[name]) * 1000, min(r), ratio, max(r),
                     cpu_ratio[name], "" if target is None else f"<= {target}: {'met' if ratio <= target else 'MISSED'}",
                     ",".join(heavy_by_command.get(name, [])) or "-"])
    table(["command", "min ms", "median ms", "max ms", "min ×", "median ×", "max ×", "CPU ×", "target",
           "heavy imports"], rows)
    print("× = wall time / the baseline's in the same round (min, median, max over rounds); CPU × = median "
          "user+sys CPU time / the baseline's (not counting time spent waiting for a core)")
    missed = [name for name, v in verdicts.items() if not v["met"]]
    print(f"targets met: {len(verdicts) - len(missed)}/{len(verdicts)}" + (f"; missed: {missed}" if missed else ""))
    ratio = verdicts["checkout --json"]["ratio_median"]
    print("\nwhat `workctl checkout --json` imports beyond `import sqlite3, json` (python -X importtime, "
          "median of 5; µs; post-order: a module follows what it imported):")
    extra = [m for m in modules if m["module"] not in baseline_modules]
    table(["module", "self µs", "cumulative µs"],
          [["  " * m["depth"] + m["module"], int(m["self_us"]), int(m["cumulative_us"])] for m in extra])
    heavy = heavy_by_command["checkout --json"]
    print(f"heavy packages imported by checkout: {heavy or 'none'}")
    result = {"items": args.items, "repeat": args.repeat, "median_ms": med, "cpu_ratio": cpu_ratio,
              "runs_ms": {k: [t * 1000 for t in v] for k, v in times.items()}, "ratio": ratio,
              "ratios": verdicts, "target": f"agent commands <= {AGENT_TARGET}, others <= {TARGET}",
              "met": not missed, "missed": missed, "command": checkout,
              "imports_beyond_baseline": extra, "heavy_imported": heavy, "heavy_by_command": heavy_by_command}
    write(out_path("startup", args.out), "P2", result)
    return result


if __name__ == "__main__":
    main()
