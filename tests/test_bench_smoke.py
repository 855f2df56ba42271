"""Every benchmark script still runs: each one at a tiny size, as `python bench/NAME.py`, writing its JSON.

These are not timed tests (the figures at tiny sizes mean nothing); the real runs and their figures are
in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPTS = {
    "peers_bench.py": ["--n", "150", "--consumers", "2"],
    "startup_bench.py": ["--items", "40", "--repeat", "2"],
    "startup_revisions_bench.py": ["--before", "HEAD", "--after", "HEAD", "--items", "6", "--repeat", "2"],
    "approve_bench.py": ["--users", "300", "--runs", "1"],
    "sync_bench.py": ["--users", "100", "--seed-users", "50", "--runs", "1", "--latency", "0"],
    "scale_bench.py": ["--big", "2000", "--small", "100", "--checkouts", "40", "--ids", "3000", "--runs", "1"],
    "run_exec_bench.py": ["--items", "4", "--baseline-items", "2", "--runs", "1"],
    "memory_bench.py": ["--propose-sizes", "1000,2000", "--sync-sizes", "100"],
    "watermarks_bench.py": ["--users", "300", "--runs", "1"],
    "read_paths_bench.py": ["--items", "200", "--events", "400", "--scale", "4"],
    "serve_bench.py": ["--items", "6", "--cli-items", "4", "--runs", "1"],
}
# What each script's JSON must carry (its figure, against its baseline).
KEYS = {
    "peers_bench.py": ("results", "ratios", "skipped"),
    "startup_bench.py": ("ratio", "median_ms", "imports_beyond_baseline"),
    "startup_revisions_bench.py": ("ratio_after_before", "median_ms", "runs_ms"),
    "approve_bench.py": ("ratio", "median_raw_s", "median_approve_s", "equal_work_ratio", "wal_bytes"),
    "sync_bench.py": ("ratio_vs_seed_loop", "ratio_vs_bare_loop"),
    "scale_bench.py": ("checkout_latency", "propose"),
    "run_exec_bench.py": ("ratio", "median_items_per_s"),
    "memory_bench.py": ("propose", "sync", "propose_marginal_bytes_per_id"),
    "watermarks_bench.py": ("ratio", "median_s", "bytes_per_user"),
    "read_paths_bench.py": ("sizes", "operations", "maintain"),
    "serve_bench.py": ("cycles_per_s", "summary"),
}


def test_every_script_is_smoke_tested():
    assert {p.name for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_")} == set(SCRIPTS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_runs_at_a_tiny_size(script, tmp_path):
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKCTL_")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *SCRIPTS[script], "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    document = json.loads(out.read_text())
    for key in KEYS[script]:
        assert key in document, (key, sorted(document))
    if script == "peers_bench.py":
        # workctl and the raw baseline always run; a peer that is not installed is skipped, and says so
        assert {"workctl", "raw"} <= set(document["results"])
        for key in ("workctl", "raw"):  # (persist-queue duplicates under several processes: that is a finding)
            result = document["results"][key]
            assert result["duplicates"] == 0 and result["lost"] == 0 and not result["errors"], result
        for peer in document["skipped"]:
            assert f"skipping {peer}: not importable" in proc.stdout
