"""The command line people expect (issue 16): help and completion as in gh/kubectl/sqlite-utils, short id
prefixes, output that fits where it goes (a terminal or a pipe), errors that say what to do next,
`workctl config`, `submit --next`, `sources check` against live and dead servers, and start-up that
imports nothing heavy it does not use.

Real processes where the process is the point (start-up imports, a pty, bare `workctl`); CliRunner
otherwise. The prefix and submit --next cases run on both backends (``db_path``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workctl import Workctl
from workctl.cli.app import COMMANDS, app
from workctl.config import Config
from workctl.errors import ERROR_CODES, NEXT_STEPS
from workctl.sources.sample_server import SampleServer
from helpers import child_env, run

BACKENDS = ("sqlite", "postgres")
REPO = Path(__file__).resolve().parents[1]


def process(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workctl", *args], capture_output=True, text=True, timeout=60,
                          env=child_env(**(env or {})), cwd=cwd)


def every_command_path() -> list[list[str]]:
    """Every command and subcommand, as the words that name it."""
    import typer.main

    root = typer.main.get_command(app)
    paths = []
    for name in COMMANDS:
        command = root.commands[name]
        paths.append([name])
        paths += [[name, sub] for sub in getattr(command, "commands", {})]
    return paths


# -- help and completion -------------------------------------------------------------------------------
def test_bare_workctl_prints_help_and_succeeds(tmp_path):
    out = process(cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: workctl") and "Commands:" in out.stdout
    assert out.stderr == ""
    assert not (tmp_path / "workctl.db").exists()


@pytest.mark.parametrize("path", every_command_path(), ids=lambda p: " ".join(p))
def test_every_help_page_has_an_example_takes_h_and_shows_no_python_types(path, tmp_path):
    long = CliRunner().invoke(app, [*path, "--help"])
    short = CliRunner().invoke(app, [*path, "-h"])
    assert long.exit_code == 0 and short.exit_code == 0, long.output
    assert short.stdout == long.stdout
    example = long.stdout.split("Example:\n", 1)[-1]
    assert example.startswith("    $ ") and "workctl " in example.splitlines()[0], long.stdout
    for python_type in ("<bool>", "<str>", "<int", "<float", "TEXT", "INTEGER"):
        assert python_type not in long.stdout, (python_type, long.stdout)
    assert not (tmp_path / "workctl.db").exists()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_command_tables_summary_is_the_commands_own_first_words(name):
    """`workctl --help` lists commands from the table without importing them; it must say what they say."""
    import typer.main

    command = typer.main.get_command(app).commands[name]
    text = " ".join((command.help or "").split())
    assert text.startswith(COMMANDS[name].summary.rstrip(".")), (name, text)


def test_workctl_help_imports_no_command_and_lists_them_all():
    code = ("import sys; from workctl.cli.app import main; main(['--help']); "
            "print([m for m in sys.modules if m.startswith('workctl.commands.') and m != 'workctl.commands._common'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60)
    assert out.stdout.strip().endswith("[]"), out.stdout[-300:]
    for name in COMMANDS:
        assert f"\n  {name} " in out.stdout


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o default -F _workctl_completion workctl"),
                                           ("zsh", "#compdef workctl"), ("fish", "complete --command workctl")])
def test_completion_scripts_are_generated_for_each_shell(shell, marker, tmp_path):
    out = run(tmp_path / "w.db", "completion", shell)
    assert out.exit_code == 0
    assert marker in out.stdout and "_WORKCTL_COMPLETE" in out.stdout
    assert not (tmp_path / "w.db").exists()  # needs no store


def test_completion_of_an_unknown_shell_is_a_usage_error(tmp_path):
    out = run(tmp_path / "w.db", "completion", "tcsh")
    assert out.exit_code == 2 and "bash, zsh, fish" in out.stderr


@pytest.mark.parametrize("env, expected", [
    ({"_WORKCTL_COMPLETE": "complete_bash", "COMP_WORDS": "workctl ord", "COMP_CWORD": "1"}, "orders"),
    ({"_WORKCTL_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "workctl orders --st"}, "--state"),
    ({"_WORKCTL_COMPLETE": "complete_fish", "_TYPER_COMPLETE_FISH_ACTION": "get-args",
      "_TYPER_COMPLETE_ARGS": "workctl sources ch"}, "check"),
])
def test_the_scripts_callback_completes_commands_and_options(env, expected, tmp_path):
    """What the generated script runs on <TAB>: workctl itself, answering from the command table."""
    out = process(env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert expected in out.stdout


def test_workers_is_the_name_on_run_and_parallel_a_hidden_alias(tmp_path):
    page = run(tmp_path / "w.db", "run", "--help").stdout
    assert "--workers" in page and "--parallel" not in page
    assert "--quiet" in page and "--verbose" in page
    conflicting = run(tmp_path / "w.db", "run", "--exec", "cat", "--workers", "2", "--parallel", "3")
    assert conflicting.exit_code == 2 and "--parallel is the old name of --workers" in conflicting.stderr


def test_listings_share_one_limit_default():
    from workctl.commands._common import DEFAULT_LIMIT

    pages = {name: CliRunner().invoke(app, [name, "--help"]).stdout for name in ("orders",)}
    for name, page in pages.items():
        assert f"[default: {DEFAULT_LIMIT};" in page, name


# -- start-up: what a command imports ----------------------------------------------------------------------
@pytest.mark.parametrize("argv, banned", [
    (["orders"], ("pydantic", "rich", "jsonschema", "httpx")),
    (["status"], ("pydantic", "rich", "jsonschema", "httpx")),
    (["propose", "task.batch", "--payload", '{"tasks": [{"n": 1}]}'], ("pydantic", "rich", "jsonschema")),
    (["--help"], ("pydantic", "rich", "jsonschema", "httpx")),
    (["checkout", "--json"], ("typer", "pydantic", "rich", "jsonschema", "httpx")),
])
def test_commands_import_no_heavy_package_they_do_not_use(argv, banned, tmp_path):
    """pydantic (Typer's coercion), rich (only on a terminal) and jsonschema (only for an invalid payload)
    cost more start-up than the commands' own work (bench/startup_bench.py has the figures)."""
    db = tmp_path / "w.db"
    assert run(db, "init").exit_code == 0
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "workctl", "--db", str(db), *argv],
                         capture_output=True, text=True, env=child_env(), timeout=60)
    assert out.returncode in (0, 3), out.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & set(banned), sorted(imported & set(banned))


# -- output: ids, JSON, tables -----------------------------------------------------------------------------
def _pty_run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run workctl with stdout on a pseudo-terminal; return what it wrote there."""
    import pty

    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "workctl", *args], stdout=terminal, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=child_env(COLUMNS="200", **env), cwd=cwd)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(controller)
    assert proc.returncode == 0, proc.stderr.read()
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_json_is_indented_on_a_terminal_and_one_compact_line_in_a_pipe(tmp_path):
    db = tmp_path / "w.db"
    for n in range(3):
        proposed = run(db, "propose", "task.batch", "--payload", json.dumps({"tasks": [{"n": n}, {"n": -n}]}),
                       "--json")
        assert proposed.exit_code == 0
    order_id = proposed.json["order"]["id"]
    # show and log --json are streamed row by row (constant memory): the same rule holds for them
    for argv in (["show", order_id, "--json"], ["log", order_id, "--json"]):
        piped = process("--db", str(db), *argv)
        assert piped.returncode == 0 and piped.stdout.count("\n") == 1, piped.stdout
        on_terminal = _pty_run(["--db", str(db), *argv], tmp_path, {})
        assert on_terminal.count("\n  ") >= 2  # a row per line
        assert json.loads(on_terminal) == json.loads(piped.stdout)
    for argv in (["orders", "--json"], ["status", "--json"]):  # the Typer path and the fast path
        pinned = {"WORKCTL_NOW": "2026-06-01T00:00:00Z"}  # status says "as of" now
        piped = process("--db", str(db), *argv, env=pinned)
        assert piped.returncode == 0
        assert piped.stdout.count("\n") == 1 and json.loads(piped.stdout)
        on_terminal = _pty_run(["--db", str(db), *argv], tmp_path, pinned)
        assert on_terminal.count("\n") > 5 and "\n  " in on_terminal
        assert json.loads(on_terminal) == json.loads(piped.stdout)


def test_human_tables_in_a_pipe_keep_every_id_whole(tmp_path):
    db = tmp_path / "w.db"
    order = run(db, "propose", "task.batch", "--payload", '{"tasks": [{"n": 1}]}', "--json").json
    out = process("--db", str(db), "orders", env={"COLUMNS": "40"})
    assert order["order"]["id"] in out.stdout
    status = process("--db", str(db), "status", order["order"]["id"][:8], env={"COLUMNS": "40"})
    assert order["items"][0]["id"] in status.stdout


def test_a_cut_orders_listing_says_how_many_more(tmp_path):
    db = tmp_path / "w.db"
    for n in range(5):
        run(db, "propose", "task.batch", "--payload", json.dumps({"tasks": [{"n": n}]}))
    cut = run(db, "orders", "--limit", "2")
    assert cut.stdout.rstrip().splitlines()[-1] == "… 3 more orders (see them with --limit 5)"
    assert run(db, "orders", "--limit", "2", "--json").json["more"] == 3
    whole = run(db, "orders", "--limit", "5")
    assert "more" not in whole.stdout and len(whole.stdout.strip().splitlines()) == 6


# -- id prefixes ------------------------------------------------------------------------------------------
@pytest.fixture
def crafted_ids(monkeypatch):
    """Orders get ids that share their first 8 characters (aaaaaaaa-…), so prefixes can be ambiguous."""
    import workctl.core.propose as propose_module

    counter = iter(range(1, 10_000))
    monkeypatch.setattr(propose_module, "new_id", lambda: f"aaaaaaaa-{next(counter):04d}-4000-8000-000000000000")


def test_a_unique_prefix_names_the_order_for_every_command(db_path, crafted_ids):
    first = run(db_path, "propose", "task.batch", "--payload", '{"tasks": [{"n": 1}]}', "--json").json
    order_id, item_id = first["order"]["id"], first["items"][0]["id"]  # aaaaaaaa-0001-… and aaaaaaaa-0002-…
    prefix = order_id[:13]  # aaaaaaaa-0001
    assert run(db_path, "show", prefix, "--json").json["order"]["id"] == order_id
    assert run(db_path, "status", prefix, "--json").json["order"]["id"] == order_id
    assert run(db_path, "log", prefix, "--json").exit_code == 0
    leased = run(db_path, "checkout", prefix, "--agent", "a", "--json").json["item"]
    assert leased["id"] == item_id
    submitted = run(db_path, "submit", item_id[:13], "--agent", "a", "--lease-token", leased["lease_token"],
                    "--result", '{"ok": true}', "--json")
    assert submitted.exit_code == 0, submitted.stderr
    assert run(db_path, "approve", prefix.upper(), "--dry-run", "--json").json["order"]["id"] == order_id


def test_an_ambiguous_prefix_is_exit_4_listing_the_matches(db_path, crafted_ids):
    ids = [run(db_path, "propose", "task.batch", "--payload", '{"tasks": [{"n": 1}]}', "--json").json["order"]["id"]
           for _ in range(2)]
    out = run(db_path, "show", "aaaaaaaa", "--json")
    assert out.exit_code == 4
    error = out.json["error"]
    assert error["code"] == "ambiguous_id"
    listed = {d["id"] for d in error["details"]}
    assert set(ids) <= listed  # the items' ids start with aaaaaaaa too, but only orders are matched
    assert all(i in error["message"] for i in ids)
    assert "more characters" in out.stderr.splitlines()[1]


@pytest.mark.backends("sqlite")
def test_a_prefix_shorter_than_8_characters_is_not_looked_up(db_path, crafted_ids):
    """Like git: 7 characters are taken as the id they are, so they name nothing (exit 4, order_not_found)."""
    run(db_path, "propose", "task.batch", "--payload", '{"tasks": [{"n": 1}]}')
    out = run(db_path, "show", "aaaaaaa", "--json")
    assert out.exit_code == 4 and out.json["error"]["code"] == "order_not_found"


# -- errors say what to do next ---------------------------------------------------------------------------
def test_every_error_code_has_a_next_step():
    assert set(ERROR_CODES) <= set(NEXT_STEPS)
    assert all(NEXT_STEPS[code].strip() for code in ERROR_CODES)


def test_show_of_an_unknown_order_points_at_orders(tmp_path):
    db = tmp_path / "w.db"
    run(db, "init")
    out = run(db, "show", "nope")
    assert out.exit_code == 4
    first, second = out.stderr.splitlines()[:2]
    assert first.startswith("workctl: error: ") and "nope" in first
    assert second == "workctl: next: list orders with: workctl orders"


def test_a_lease_held_by_another_agent_points_at_agent_and_its_variable(tmp_path):
    db = tmp_path / "w.db"
    run(db, "propose", "task.batch", "--payload", '{"tasks": [{"n": 1}]}')
    item = run(db, "checkout", "--agent", "a", "--json").json["item"]
    out = run(db, "heartbeat", item["id"], "--agent", "b", "--lease-token", item["lease_token"])
    assert out.exit_code == 6
    second = out.stderr.splitlines()[1]
    assert "--agent" in second and "WORKCTL_AGENT_ID" in second


def test_a_usage_error_points_at_the_commands_help(tmp_path):
    out = process("--db", str(tmp_path / "w.db"), "orders", "--limit", "0")
    assert out.returncode == 2
    assert out.stderr.splitlines()[1] == "workctl: next: see: workctl orders --help"


# -- sync: the ids and the next command -------------------------------------------------------------------
def test_sync_prints_the_order_it_created_and_the_command_to_approve_it(tmp_path):
    from helpers import make_users

    db = tmp_path / "w.db"
    make_users(db, 10)
    with SampleServer() as server:
        (tmp_path / "workctl.toml").write_text(f'[sources.crm]\nbase_url = "{server.url}/crm"\n')
        config = str(tmp_path / "workctl.toml")
        out = run(db, "--config", config, "sync", "--source", "crm", "--users", "1-10", "--fields", "email",
                  "-v")
        assert out.exit_code == 0, out.stderr
        assert "started" in out.stderr and "batch 1/1 submitted" in out.stderr  # -v: a line per batch and start
        (order_id,) = [row[0] for row in _query(db, "SELECT id FROM orders")]
        assert f"created order {order_id}" in out.stdout
        assert f"workctl approve {order_id}" in out.stdout and f"workctl diff {order_id}" in out.stdout
        again = run(db, "--config", config, "sync", "--source", "crm", "--users", "1-10", "--fields", "email",
                    "--quiet", "--approve")
        assert f"resumed order {order_id}" in again.stdout
        assert f"workctl show {order_id}" in again.stdout  # approved now: see what changed


def _query(db: Path, sql: str) -> list[tuple]:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# -- sources check: a real request ------------------------------------------------------------------------
def test_sources_check_reports_a_live_source_and_a_dead_one_with_exit_7(tmp_path, monkeypatch):
    secret = "s3cr3t-token-value"
    monkeypatch.setenv("CRM_TOKEN", secret)
    with SampleServer() as stopped:
        dead = stopped.url  # nothing listens there any more
    with SampleServer() as live:
        (tmp_path / "workctl.toml").write_text(
            f'[sources.crm]\nbase_url = "{live.url}/crm"\nauth = "bearer"\ntoken_env = "CRM_TOKEN"\n'
            f'[sources.billing]\nbase_url = "{dead}/billing"\ntimeout = 2\n')
        config = str(tmp_path / "workctl.toml")
        one = run(tmp_path / "w.db", "--config", config, "sources", "check", "crm", "--json")
        assert one.exit_code == 0, one.stderr
        (report,) = one.json["sources"]
        assert report["status"] == "ok" and report["auth"] == "ok" and report["latency_ms"] >= 0
        assert live.log.entries and live.log.entries[0]["headers"]["Authorization"] == f"Bearer {secret}"
        both = run(tmp_path / "w.db", "--config", config, "sources", "check")
    assert both.exit_code == 7
    assert "crm: ok, auth ok" in both.stdout and "billing: FAILED" in both.stdout
    assert "Connection refused" in both.stderr or "connect" in both.stderr.lower()
    assert secret not in both.stdout + both.stderr + one.stdout + one.stderr
    assert not (tmp_path / "w.db").exists()


def test_sources_check_with_refused_credentials_is_exit_7(tmp_path, monkeypatch):
    from workctl.sources.sample_server import Faults

    monkeypatch.setenv("CRM_TOKEN", "wrong")
    with SampleServer(faults=Faults(token="right")) as server:
        (tmp_path / "workctl.toml").write_text(
            f'[sources.crm]\nbase_url = "{server.url}/crm"\nauth = "bearer"\ntoken_env = "CRM_TOKEN"\n')
        out = run(tmp_path / "w.db", "--config", str(tmp_path / "workctl.toml"), "sources", "check", "--json")
    assert out.exit_code == 7
    assert out.json["sources"][0]["error"]["code"] == "source_auth"


# -- workctl config ---------------------------------------------------------------------------------------
def test_config_shows_each_value_with_its_origin_and_secrets_as_set(tmp_path, monkeypatch):
    monkeypatch.setenv("CRM_TOKEN", "very-secret")
    monkeypatch.setenv("WORKCTL_AGENT_ID", "bot-7")
    (tmp_path / "workctl.toml").write_text(
        '[lease]\nttl_seconds = 90\n[sources.crm]\nbase_url = "https://user:pw@crm.example.com/api"\n'
        'auth = "bearer"\ntoken_env = "CRM_TOKEN"\nrate_limit = 5\n'
        '[[webhooks]]\nurl = "https://hooks.example.com/x?key=abc"\nsecret_env = "HOOK_SECRET"\n')
    out = run(tmp_path / "store.db", "config", "--json")
    assert out.exit_code == 0, out.stderr
    settings = {s["key"]: s for s in out.json["settings"]}
    assert settings["store"] == {"key": "store", "value": str(tmp_path / "store.db"), "origin": "--db"}
    assert settings["config_file"]["origin"].startswith("default")
    assert settings["lease.ttl_seconds"]["value"] == 90
    origin = settings["lease.ttl_seconds"]["origin"]
    assert origin.startswith("file ") and origin.endswith("workctl.toml")
    assert settings["lease.heartbeat_every_seconds"]["origin"] == "default"
    assert settings["agent"] == {"key": "agent", "value": "bot-7", "origin": "env WORKCTL_AGENT_ID"}
    assert settings["sources.crm.rate_limit"]["value"] == 5
    assert settings["sources.crm.rate_limit"]["origin"].startswith("file ")
    assert settings["sources.crm.concurrency"]["origin"] == "default"
    assert settings["sources.crm.token"] == {"key": "sources.crm.token", "value": "set", "origin": "env CRM_TOKEN"}
    assert settings["webhooks.1.secret"]["value"] == "not set"
    text = out.stdout + run(tmp_path / "store.db", "config").stdout
    assert "very-secret" not in text and "pw@" not in text and "key=abc" not in text
    assert "file workctl.toml" in text
    assert not (tmp_path / "store.db").exists()  # needs no store


def test_config_says_where_the_store_comes_from(tmp_path):
    from_env = run(tmp_path / "ignored.db", "config", "--json")  # --db given: the option wins
    assert from_env.json["settings"][0]["origin"] == "--db"
    result = CliRunner().invoke(app, ["config", "--json"], env={"WORKCTL_DB": str(tmp_path / "env.db")})
    store = json.loads(result.stdout)["settings"][0]
    assert store == {"key": "store", "value": str(tmp_path / "env.db"), "origin": "env WORKCTL_DB"}


def test_a_malformed_config_file_is_exit_5(tmp_path):
    (tmp_path / "workctl.toml").write_text("[leese]\nttl_seconds = 5\n")
    out = run(tmp_path / "w.db", "config")
    assert out.exit_code == 5 and "did you mean 'lease'" in out.stderr


# -- submit --next --------------------------------------------------------------------------------------
def test_submit_next_leases_the_next_item_in_the_same_call(db_path):
    with Workctl(db_path, config=Config(), create=True) as wc:
        first = wc.propose("task.batch", {"tasks": [{"n": 1}, {"n": 2}]})["order"]["id"]
        other = wc.propose("task.batch", {"tasks": [{"n": 3}]}, priority=5)["order"]["id"]
    item = run(db_path, "checkout", first, "--agent", "a", "--json").json["item"]
    out = run(db_path, "submit", item["id"], "--agent", "a", "--lease-token", item["lease_token"],
              "--result", '{"ok": true}', "--next-order", first, "--ttl", "60", "--json")
    assert out.exit_code == 0, out.stderr
    document = out.json
    assert document["item"] == {"id": item["id"], "state": "submitted"}
    nxt = document["next"]
    assert nxt["order_id"] == first and nxt["state"] == "leased" and nxt["lease_token"]
    again = run(db_path, "submit", nxt["id"], "--agent", "a", "--lease-token", nxt["lease_token"],
                "--result", '{"ok": true}', "--next", "--json")
    assert again.json["next"]["order_id"] == other  # --next alone: any order
    last = again.json["next"]
    done = run(db_path, "submit", last["id"], "--agent", "a", "--lease-token", last["lease_token"],
               "--result", '{"ok": true}', "--next")
    assert done.exit_code == 0
    assert "No next item to lease" in done.stdout
