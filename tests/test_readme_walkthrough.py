"""The README's walk-through, pasted into a shell as a reader would: it keeps working now that the lease
token is required (issue 10), and it can be run again. The block is taken from the README itself, so a
change that breaks it, or an edit of it that no longer runs, fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO, child_env, query

START = "# 1. A users table with 150 users in ./workctl.db"


def walkthrough() -> str:
    """The ```bash block that starts with the walk-through's first step, wherever the docs keep it."""
    for doc in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            if block.startswith(START):
                return block
    raise AssertionError(f"no ```bash block starting with {START!r} in README.md or docs/")


def paste(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # `workctl` and `python3` as the reader's activated venv has them: the console script of this checkout
    env = child_env(PATH=f"{Path(sys.executable).parent}:{child_env()['PATH']}", NO_COLOR="1")
    env.pop("WORKCTL_LEASE_TOKEN", None)
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_the_readme_walkthrough_runs_as_pasted_and_again(tmp_path: Path) -> None:
    script = walkthrough()
    assert "WORKCTL_LEASE_TOKEN=" in script  # the fenced submit passes the token, as the README recommends
    for run_number in (1, 2):  # "You can run it again: each run resets the users and creates a new order."
        done = paste(script, tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert done.stdout.count("Submitted item") == 3, done.stdout[-3000:]
        assert "checkout exit code: 3" in done.stdout
        # The one error a reader sees is the deliberate fourth checkout: no token was ever missing.
        errors = [line for line in done.stderr.splitlines() if line.startswith("workctl: error:")]
        assert len(errors) == 1 and "no items available" in errors[0], done.stderr[-3000:]
        order = re.search(r"^order: (\S+)$", done.stdout, re.M)
        assert order, done.stdout[:2000]
        db = tmp_path / "workctl.db"
        assert query(db, "SELECT state FROM orders WHERE id = ?", (order.group(1),)) == [("completed",)]
        assert query(db, "SELECT count(*) FROM orders") == [(run_number,)]
        assert query(db, "SELECT email, phone, company FROM users WHERE id = 1") == [
            ("user1@example.com", "+1-555-0001", "Company 1")]
        assert query(db, "SELECT count(*) FROM users WHERE email = 'user' || id || '@example.com'") == [(150,)]
