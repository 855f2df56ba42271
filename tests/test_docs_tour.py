"""The README's five-minute tour, run as a reader runs it: its own code blocks, extracted and executed in
one bash (real `workctl` processes, the real sample CRM on a loopback port, a real SQLite `app.db`) — with
the store in the tour's directory (SQLite, the default) and on PostgreSQL (`WORKCTL_DB`, a schema of the
test's own). The checks are on the session's shape and on the data, not on table layout: every step
succeeds, sync fetches the 150 users, diff previews 450 changes without writing, approve writes them
once, and the second, unattended sync changes nothing."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import child_env, pg_schema
from workctl.docsgen import tour

ROOT = Path(__file__).resolve().parent.parent


def step(steps: list[tour.Step], start: str) -> tour.Step:
    """The one step whose command (comments aside) starts with ``start``."""
    found = [s for s in steps if any(line.startswith("$ " + start) for line in tour.shown_command(s.command))]
    assert len(found) == 1, f"the tour has {len(found)} steps starting with {start!r}"
    return found[0]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_readme_tour_runs(backend: str, tmp_path: Path) -> None:
    stmts = tour.tour_statements((ROOT / "README.md").read_text(encoding="utf-8"))
    with contextlib.ExitStack() as stack:
        env = {"WORKCTL_DB": stack.enter_context(pg_schema())} if backend == "postgres" else {}
        steps = tour.run(stmts, tmp_path, env=env, timeout=600)
        workdir = tmp_path / "workctl-tour"

        failed = [(s.command, s.exit_code, s.output[-2000:]) for s in steps if s.exit_code]
        assert failed == [], f"tour steps failed on {backend}: {failed}"
        assert len(steps) == len(stmts)

        assert "ok" in step(steps, "workctl sources check crm").output
        first_sync, again = [s for s in steps if s.command.startswith("workctl sync --source crm")]
        assert "batch 3/3 submitted" in first_sync.output  # progress on stderr, interleaved in the session
        assert "would change 450 fields of 150 users" in step(steps, 'workctl diff "$ORDER"').output
        assert "completed" in step(steps, 'workctl approve "$ORDER"').output
        assert "(1, 'User 1', 'user1@example.com', '+1-555-0000001', 'Widget Inc')" in step(steps, "python3 -c 'import sqlite3").output

        # The data: approve wrote every user once, into the target the tour configured.
        with contextlib.closing(sqlite3.connect(workdir / "app.db")) as app:
            rows = app.execute("SELECT id, email FROM users ORDER BY id").fetchall()
        assert rows == [(i, f"user{i}@example.com") for i in range(1, 151)]

        # The store: where the backend says, with both orders completed (the second changed nothing).
        assert (workdir / "workctl.db").exists() == (backend == "sqlite")
        status = subprocess.run([sys.executable, "-m", "workctl", "status", "--json"], cwd=workdir,
                                capture_output=True, text=True, env=child_env(**env), timeout=120)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["orders"]["completed"] == 2
        orders = subprocess.run([sys.executable, "-m", "workctl", "orders", "--json"], cwd=workdir,
                                capture_output=True, text=True, env=child_env(**env), timeout=120)
        unchanged = []
        for order in json.loads(orders.stdout)["orders"]:  # the pinned clock gives both one created_at
            shown = subprocess.run([sys.executable, "-m", "workctl", "show", order["id"], "--json"], cwd=workdir,
                                   capture_output=True, text=True, env=child_env(**env), timeout=120)
            unchanged.append(json.loads(shown.stdout)["order"]["diff"]["stats"]["unchanged"])
        assert sorted(unchanged) == [0, 150]  # the first wrote every user, the second found nothing to change
        assert again.exit_code == 0


def test_the_tour_is_cut_where_bash_reads() -> None:
    """Heredocs, multi-line quotes and comments stay with their statement; each line is a statement."""
    block = "# a comment\necho one\ncat > f <<EOF\nx = 1\n\nEOF\npython3 -c '\nprint(2)'\necho 'a' &&\n  echo b\n"
    assert tour.statements(block) == ["# a comment\necho one", "cat > f <<EOF\nx = 1\n\nEOF", "python3 -c '\nprint(2)'",
                                      "echo 'a' &&\n  echo b"]


def test_a_failing_step_is_recorded_with_its_exit_code(tmp_path: Path) -> None:
    steps = tour.run(["X=1", "workctl show 00000000-0000-0000-0000-000000000000", "echo $X"], tmp_path)
    assert [s.exit_code for s in steps] == [0, 8, 0]  # no store here: store_missing, and the shell goes on
    assert steps[2].output == "1\n"


# Guides whose bash blocks are one session, pasted in order; each with lines its shown output must contain.
EXAMPLES = {
    "shell-agents.md": ["checkout exit code: 3", "Dry run: nothing changed",
                        "(1, 'User 1', 'user1@example.com', '+1-555-0001', 'Company 1', 'x')"],
    "variations.md": ["{'synced': 48, 'failed': 2, 'failed_by_class': {'not_found': 2}, 'unchanged': 0}",
                      "exit code: 5", "exit code: 6", "(2, 'Linus Lovelace', 'user2@example.com', 'user2@example.com', "
                      "'Globex')", "webhook_failed order.applied attempt 1", "webhook_delivered order.applied attempt 2 204",
                      "(2, 'user2@example.com', 'crm', '+1-555-mine', None, None)", "masked: phone",
                      "restored 1 of 2 recorded changes", "user 6 · company: now Local Co"],
}


@pytest.mark.parametrize("page", sorted(EXAMPLES))
def test_the_guides_examples_run(page: str, tmp_path: Path) -> None:
    """The guides' examples as a reader pastes them (on SQLite: they build their users tables with sqlite3)."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    steps = tour.run(tour.page_statements(text), tmp_path, pin_clock=False, timeout=600)
    failed = [(s.command, s.exit_code, s.output[-2000:]) for s in steps if s.exit_code]
    assert failed == [], f"examples of docs/{page} failed: {failed}"
    output = "".join(s.output for s in steps)
    for line in EXAMPLES[page]:
        assert line in output, f"docs/{page}: the examples no longer print {line!r}"
        assert line in text, f"docs/{page} does not show {line!r} (keep the check in step with the page)"
