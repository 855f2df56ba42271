"""Ctrl-C (SIGINT) stops sync and run --exec cleanly: exit 130 and no lease left behind to expire."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

from workctl.sources.sample_server import Faults, SampleServer
from helpers import as_on_a_terminal, make_users, run


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)  # polling for the other process, not waiting for time to pass


def leased(db):
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM items WHERE state = 'leased'").fetchone()[0]
    finally:
        conn.close()


def test_sigint_during_sync_finishes_the_batches_in_flight_and_exits_130(tmp_path):
    db = tmp_path / "w.db"
    make_users(db, 1000)
    with SampleServer(faults=Faults(latency=0.2)) as server:
        env = {**os.environ, "WORKCTL_SOURCE_CRM_URL": f"{server.url}/crm"}
        proposed = run(db, "propose", "user.data.sync", "--payload",
                       '{"source": "crm", "user_ids": ' + str(list(range(1, 1001))) + ', "fields": ["email"]}')
        assert proposed.exit_code == 0
        proc = subprocess.Popen([sys.executable, "-m", "workctl", "--db", str(db), "sync", "--workers", "4",
                                 "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=as_on_a_terminal)
        wait_for(lambda: len(server.log) >= 4)  # batches are in flight
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert leased(db) == 0  # every batch in flight was submitted or released, none left to expire
    conn = sqlite3.connect(db)
    states = dict(conn.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())
    conn.close()
    assert states.get("submitted", 0) >= 1 and states.get("queued", 0) >= 1  # it stopped early, cleanly


def test_sigint_during_run_exec_takes_no_new_item_and_exits_130(tmp_path):
    db = tmp_path / "w.db"
    tasks = '{"tasks": [' + ",".join(str(i) for i in range(20)) + "]}"
    assert run(db, "propose", "task.batch", "--payload", tasks).exit_code == 0
    marker = tmp_path / "started"
    # Each command says it started, then waits for its stdin item to be read and a short while.
    command = f"cat >/dev/null; touch {marker}; exec sleep 0.3 && echo '{{}}'"
    proc = subprocess.Popen([sys.executable, "-m", "workctl", "--db", str(db), "run", "--exec", command,
                             "--parallel", "2", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=as_on_a_terminal)
    wait_for(marker.exists)
    proc.send_signal(signal.SIGINT)  # to workctl only (its own session): the commands finish normally
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert leased(db) == 0
    conn = sqlite3.connect(db)
    queued = conn.execute("SELECT count(*) FROM items WHERE state = 'queued'").fetchone()[0]
    conn.close()
    assert queued >= 15  # it stopped after the items in hand


def test_log_follow_streams_new_events_until_ctrl_c(tmp_path):
    db = tmp_path / "w.db"
    order_id = run(db, "propose", "task.batch", "--payload", '{"tasks": [1, 2]}', "--json").json["order"]["id"]
    proc = subprocess.Popen([sys.executable, "-m", "workctl", "--db", str(db), "log", order_id, "--follow", "--nl",
                             "--interval", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_on_a_terminal)
    first = [proc.stdout.readline() for _ in range(2)]  # proposed, planned
    assert [json.loads(line)["event"] for line in first] == ["proposed", "planned"]
    assert run(db, "checkout", order_id, "--agent", "a").exit_code == 0
    later = [json.loads(proc.stdout.readline())["event"] for _ in range(2)]  # arrives while following
    assert later == ["leased", "started"]
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130


def test_a_reader_that_goes_away_is_a_quiet_exit_141(tmp_path):
    db = tmp_path / "w.db"
    order_id = run(db, "propose", "task.batch", "--payload", json.dumps({"tasks": [1, 2]}), "--json").json["order"]["id"]
    for command in (["show", order_id, "--json"], ["status", order_id, "--json"]):  # Typer, fast path
        proc = subprocess.Popen([sys.executable, "-m", "workctl", "--db", str(db), *command],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()  # the reader is gone before the output comes (like `| head -c 0`)
        assert proc.wait(timeout=60) == 141
        assert proc.stderr.read() == b""
