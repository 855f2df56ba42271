"""workctl demo: the README's main command, as a real process."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

from helpers import run_process



def test_demo_syncs_150_users_and_exits(tmp_path):
    # run_process waits for the process to exit: the sample server thread must not keep it alive.
    db = tmp_path / "demo.db"
    out = run_process(db, "demo")
    assert out.exit_code == 0, out.stderr
    assert "Synced data for 150 users from crm" in out.stdout
    assert 'after: {"updated_count": 150}' in out.stdout
    assert "Final state: completed (3/3 items)" in out.stdout
    assert "batch 3/3 submitted" in out.stderr  # plain progress lines when stderr is not a terminal
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM users WHERE email LIKE 'user%@example.com'").fetchone()[0] == 150
    conn.close()


def test_demo_without_db_uses_a_fresh_temporary_database(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("WORKCTL_DB", None)
    proc = subprocess.run([sys.executable, "-m", "workctl", "demo", "--json"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["db"].startswith(str(tmp_path)) and not (tmp_path / "workctl.db").exists()
    assert document["diff"]["after"] == {"updated_count": 150}
    assert document["order"]["state"] == "completed"
    assert proc.stderr == ""  # --json implies no progress noise
