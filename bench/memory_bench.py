"""P7: peak RSS of `propose` with up to 1,000,000 user ids and of a `sync` of 10,000, 100,000 and
1,000,000 users, each in a fresh process, for growing N: is it flat in N (constant bytes per item)?

    python bench/memory_bench.py [--propose-sizes 100000,300000,1000000] [--sync-sizes 10000,100000,1000000]

Every measurement is the peak RSS (ru_maxrss) of its own fresh interpreter, against a baseline
process that does everything but the operation, in the same run:

* propose: the baseline opens the store, imports jsonschema and builds the list of N ids; the
  measured process then also calls `Workctl.propose("user.data.sync", …)` with it (N/50 items).
  propose's own memory = peak - baseline, reported per id;
* sync: a separate process creates N local users and proposes the order (so the propose's high-water
  mark is not in the measured processes); the baseline then opens that store and imports what the sync
  does; the measured process also runs `Workctl.sync` against the sample server (in its own process,
  no latency). sync's own memory = peak - baseline, which should not grow with N at all (batches stream
  through; only the run's report is kept).
"""

from __future__ import annotations

import argparse

from _common import ROOT, out_path, peak_rss_of, table, write

PROPOSE = """
import os, sqlite3, tempfile
from workctl import Workctl
from workctl.config import Config
import jsonschema  # propose imports it; the baseline does too, so the difference is propose's own memory
path = os.path.join(tempfile.mkdtemp(prefix="workctl-p7-"), "s.db")
conn = sqlite3.connect(path)
conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, phone TEXT, company TEXT)")
conn.commit(); conn.close()
wc = Workctl(path, config=Config(), create=True); wc.session
ids = list(range(1, {n} + 1))
if {run}:
    response = wc.propose("user.data.sync", {{"source": "crm", "user_ids": ids, "fields": ["email"]}})
    assert len(response["items"]) == -(-{n} // 50)
    del response
wc.close()
"""

# The store (N local users, the proposed order) is built by a process of its own, so that neither the
# propose's high-water mark nor its freed memory hides in the sync's figure.
BUILD_SYNC = """
from sync_bench import config_for, make_db, FIELDS
from workctl import Workctl
db = make_db({n})
with Workctl(db, config=config_for({url!r}), create=True) as wc:
    wc.propose("user.data.sync", {{"source": "crm", "user_ids": list(range(1, {n} + 1)), "fields": FIELDS}})
print("DB", db)
"""

SYNC = """
from sync_bench import config_for
from workctl import Workctl
from workctl.agents.sync import SyncOptions
import httpx  # the sync imports it; the baseline does too
with Workctl({db!r}, config=config_for({url!r})) as wc:
    wc.session  # open (and check) the store in both processes
    if {run}:
        report = wc.sync(SyncOptions(agent="bench"))
        assert report["users"]["synced"] == {n}, report["users"]
"""


def built_store(n: int, url: str) -> str:
    import subprocess
    import sys

    code = f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); sys.path.insert(0, {str(ROOT)!r})\n"
    proc = subprocess.run([sys.executable, "-c", code + BUILD_SYNC.format(n=n, url=url)], capture_output=True,
                          text=True, check=True)
    return [line for line in proc.stdout.splitlines() if line.startswith("DB ")][-1][3:]


def sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


CODE_ROOT: str | None = None  # --code: measure another checkout's workctl (the bench scripts stay these)


def measure(template: str, n: int, **extra: object) -> dict:
    root = CODE_ROOT or ROOT
    base = peak_rss_of(template.format(n=n, run=False, **extra), root=root)
    peak = peak_rss_of(template.format(n=n, run=True, **extra), root=root)
    return {"n": n, "baseline_rss": base, "peak_rss": peak, "own": peak - base, "own_per_item": (peak - base) / n}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--propose-sizes", default="100000,300000,1000000")
    parser.add_argument("--sync-sizes", default="10000,100000,1000000")
    parser.add_argument("--code", default=None, metavar="DIR",
                        help="import workctl from this checkout instead (e.g. a `git worktree` of main: before)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    global CODE_ROOT
    CODE_ROOT = args.code
    propose = []
    for n in sizes(args.propose_sizes):
        print(f"propose {n:,} ids …", flush=True)
        propose.append(measure(PROPOSE, n))
    sync = []
    if sizes(args.sync_sizes):
        from sync_bench import ServerProcess

        with ServerProcess(0.0) as server:
            for n in sizes(args.sync_sizes):
                print(f"sync {n:,} users …", flush=True)
                sync.append(measure(SYNC, n, url=server.url, db=built_store(n, server.url)))
    mb = 1024 * 1024
    print("\nP7 peak RSS (fresh process each; own = peak - baseline process without the operation)")
    table(["operation", "N", "baseline MiB", "peak MiB", "own MiB", "own bytes/item"],
          [[label, r["n"], r["baseline_rss"] / mb, r["peak_rss"] / mb, r["own"] / mb, r["own_per_item"]]
           for label, rows in (("propose (ids)", propose), ("sync (users)", sync)) for r in rows])

    def slope(rows: list[dict], key: str) -> float | None:
        if len(rows) < 2:
            return None
        return (rows[-1][key] - rows[0][key]) / (rows[-1]["n"] - rows[0]["n"])

    result = {"propose": propose, "sync": sync, "propose_marginal_bytes_per_id": slope(propose, "own"),
              "propose_peak_marginal_bytes_per_id": slope(propose, "peak_rss"),
              "sync_marginal_bytes_per_user": slope(sync, "own"),
              "sync_peak_marginal_bytes_per_user": slope(sync, "peak_rss"),
              "target": "flat in N (constant bytes per item)"}
    for label, rows in (("propose", propose), ("sync", sync)):
        if len(rows) >= 2:
            print(f"{label}, between N={rows[0]['n']:,} and N={rows[-1]['n']:,}: own memory "
                  f"{slope(rows, 'own'):,.0f} bytes per item more; whole process's peak "
                  f"{slope(rows, 'peak_rss'):,.0f} bytes per item more")
    write(out_path("memory", args.out), "P7", result)
    return result


if __name__ == "__main__":
    main()
