"""run --exec and the processes it starts: its own process group, killed as a whole at --timeout, when the
lease is lost, and when run itself is killed with kill -9 (no child outlives it); output read as bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from helpers import child_env, query, run, workctl_cmd


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def propose(db: Path, tasks: int = 1) -> str:
    out = run(db, "propose", "task.batch", "--payload", json.dumps({"tasks": list(range(tasks))}), "--json")
    return out.json["order"]["id"]


def read_pids(path: Path, n: int, seconds: float = 20) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            pids = [int(x) for x in path.read_text().split()]
            if len(pids) >= n:
                return pids
        time.sleep(0.05)
    raise AssertionError(f"the command did not write {n} pids")


def test_kill_9_of_run_leaves_no_child_process_alive(tmp_path):
    db = tmp_path / "w.db"
    propose(db)
    pids = tmp_path / "pids"
    command = f"echo $$ >> {pids}; sleep 60 & echo $! >> {pids}; sleep 60; echo '{{}}'"
    proc = subprocess.Popen(workctl_cmd(db, "run", "--exec", command), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=tmp_path, env=child_env(), start_new_session=True)
    children = read_pids(pids, 2)
    assert all(alive(pid) for pid in children)
    os.killpg(proc.pid, signal.SIGKILL)  # run and everything in its group (the command has a group of its own)
    proc.wait(timeout=10)
    assert wait_gone(children) == [], "a command outlived run"
    assert query(db, "SELECT state FROM items") == [("leased",)]  # the lease expires and is reclaimed as usual


def test_timeout_stops_a_command_that_forks(tmp_path):
    db = tmp_path / "w.db"
    order_id = propose(db)
    pids = tmp_path / "pids"
    command = f"sh -c 'sleep 20 & echo $! >> {pids}; sleep 20; echo {{}}'"
    started = time.monotonic()
    out = run(db, "run", order_id, "--exec", command, "--timeout", "0.5", "--json")
    assert time.monotonic() - started < 10
    assert out.exit_code == 7 and "timed out" in out.json["errors"][0]["error"]
    assert wait_gone(read_pids(pids, 1)) == []
    assert query(db, "SELECT state, attempts FROM items") == [("queued", 1)]


def test_output_that_is_not_utf8_releases_the_item_with_an_error(tmp_path):
    db = tmp_path / "w.db"
    order_id = propose(db)
    out = run(db, "run", order_id, "--exec", r"cat >/dev/null; printf '\377{}'; printf '\376oops' >&2", "--json",
              env={"WORKCTL_NOW": "2026-03-01T00:00:00Z"})
    assert out.exit_code == 7
    assert "invalid UTF-8" in out.json["errors"][0]["error"]
    assert query(db, "SELECT state FROM items") == [("queued",)]  # released, never left leased
    failing = run(db, "run", order_id, "--exec", r"printf '\376bad' >&2; exit 2", "--json",
                  env={"WORKCTL_NOW": "2026-03-01T00:01:00Z"})  # after the first failure's backoff
    assert "exited 2" in failing.json["errors"][0]["error"] and "\ufffdbad" in failing.json["errors"][0]["error"]


def test_a_lost_lease_stops_the_command(tmp_path):
    db = tmp_path / "w.db"
    order_id = propose(db)
    # The command lets time jump past its lease (another process reclaims it), then would run for 30 s.
    command = (f"WORKCTL_NOW=2099-01-01T00:00:00Z {workctl_cmd(db, 'checkout', '--agent', 'other')[0]} -m workctl "
               f"--db {db} checkout --agent other >/dev/null; sleep 30; echo '{{}}'")
    started = time.monotonic()
    out = run(db, "run", order_id, "--exec", command, "--ttl", "3", "--json")
    assert time.monotonic() - started < 15
    assert out.exit_code == 7 and out.json["items"]["lost"] == 1
    assert query(db, "SELECT state, leased_by FROM items") == [("leased", "other")]


def test_a_command_writing_escape_codes_and_a_flood_to_stderr_is_released_with_a_clean_error(tmp_path):
    """The error recorded for a failed command is composed from its stderr: escape sequences and 50,000
    characters must not make the release itself refused (which would leave the item leased)."""
    db = tmp_path / "w.db"
    order_id = propose(db)
    out = run(db, "run", order_id, "--exec", r"printf '\033[2J\033[31mred\007'; head -c 50000 /dev/zero | tr '\0' x >&2;"
              r" printf '\033[2J' >&2; exit 3", "--json", env={"WORKCTL_NOW": "2026-03-01T00:00:00Z"})
    assert out.exit_code == 7, out.stderr
    error = query(db, "SELECT error FROM item_results WHERE error IS NOT NULL")[0][0]
    assert "\x1b" not in error and len(error) <= 10_000, error[:200]
    assert query(db, "SELECT state FROM items") == [("queued",)]
