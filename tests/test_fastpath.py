"""The agent commands' fast path (workctl.cli.fastpath) behaves exactly like the Typer commands.

Every case runs twice on the same store file restored from one template, with the clock pinned and
lease tokens made deterministic: once through ``fastpath.main`` (no Typer) and once through the Typer
app with CliRunner. stdout, stderr, the exit code and the store's rows afterwards must be identical.
Forms the fast path does not handle must return None (Typer then parses them from scratch); a few
real processes check the console-script entry end to end against ``WORKCTL_NO_FASTPATH=1``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workctl import Workctl
from workctl.cli import fastpath
from workctl.core import leases
from workctl.core import submit as submit_module
from workctl.cli.app import app
from workctl.config import Config
from helpers import make_users

NOW = "2026-03-01T12:00:00Z"
LATER = "2026-03-01T13:00:00Z"  # past the 600 s lease


def _tokens():
    n = 0

    def token() -> str:
        nonlocal n
        n += 1
        return f"token-{n:04d}"
    return token


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A store with users, a 2-item sync order (one item leased by agent a), a 3-task order, a config."""
    root = tmp_path_factory.mktemp("fastpath")
    db = root / "template.db"
    make_users(db, 150)
    old = os.environ.get("WORKCTL_NOW")
    os.environ["WORKCTL_NOW"] = NOW
    saved, leases.new_token = leases.new_token, _tokens()
    try:
        with Workctl(db, config=Config()) as wc:
            sync = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, 101)),
                                                 "fields": ["email"]})
            tasks = wc.propose("task.batch", {"tasks": [{"n": 1}, {"n": 2}, {"n": 3}]})
            leased = wc.checkout(sync["order"]["id"], agent="a")["item"]
    finally:
        leases.new_token = saved
        if old is None:
            del os.environ["WORKCTL_NOW"]
        else:
            os.environ["WORKCTL_NOW"] = old
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    (root / "ttl.toml").write_text("[lease]\nttl_seconds = 90\nheartbeat_every_seconds = 30\n")
    result = {"success": True, "errors": [],
              "synced_users": [{"user_id": u, "data": {"email": f"u{u}@example.com"}, "verified": True}
                               for u in leased["input"]["user_ids"]]}
    (root / "result.json").write_text(json.dumps(result))
    queued = [it["id"] for it in sync["items"] if it["id"] != leased["id"]][0]
    return {"db": db, "root": root, "sync": sync["order"]["id"], "tasks": tasks["order"]["id"],
            "leased": leased["id"], "token": leased["lease_token"], "queued": queued, "result": result}


def _state(db: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall()
                for t in ("orders", "items", "events", "idempotency_keys")}
    finally:
        conn.close()


def _restore(template, work: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template["db"], work)


def _fast(argv, stdin, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
    capsys.readouterr()
    code = fastpath.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _typer(argv, stdin):
    result = CliRunner().invoke(app, argv, input=stdin, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


# (id, argv after --db, stdin, extra environment). {placeholders} come from the template.
CASES = [
    ("checkout-json", "checkout --json --agent b", None, {}),
    ("checkout-human", "checkout --agent b", None, {}),
    ("checkout-default-agent", "checkout --json", None, {}),
    ("checkout-order-ttl", "checkout {tasks} --agent=b --ttl 60 --json", None, {}),
    ("checkout-type", "checkout --type task.batch --json --agent b", None, {}),
    ("checkout-type-interspersed", "checkout --json {tasks} --agent b --ttl=5", None, {}),
    ("checkout-env-agent", "checkout --json", None, {"WORKCTL_AGENT_ID": "from-env"}),
    ("checkout-empty-env-agent", "checkout --json", None, {"WORKCTL_AGENT_ID": ""}),
    ("checkout-config", "--config {root}/ttl.toml checkout --json --agent b", None, {}),
    ("checkout-unknown-order", "checkout nope --json", None, {}),
    ("checkout-unknown-order-human", "checkout nope", None, {}),
    ("checkout-unknown-type", "checkout --type no.such --json", None, {}),
    ("checkout-config-missing", "--config {root}/missing.toml checkout --json", None, {}),
    ("checkout-db-is-dir", "checkout --json", None, {"DB": "{root}"}),
    ("heartbeat-json", "heartbeat {leased} --agent a --json", None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("heartbeat-human-ttl", "heartbeat {leased} --agent a --ttl=120", None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("heartbeat-token", "heartbeat {leased} --agent a --lease-token {token} --json", None, {}),
    ("heartbeat-env-token", "heartbeat {leased} --agent a --json", None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("heartbeat-wrong-token", "heartbeat {leased} --agent a --lease-token nope --json", None, {}),
    ("heartbeat-other-agent", "heartbeat {leased} --agent b --json", None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("heartbeat-expired", "heartbeat {leased} --agent a --json", None, {"WORKCTL_LEASE_TOKEN": "{token}", "WORKCTL_NOW": LATER}),
    ("heartbeat-unknown-item", "heartbeat nope --agent a --json", None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("heartbeat-not-leased-human", "heartbeat {queued} --agent a", None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("release-json", "release {leased} --agent a --json", None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("release-error-human", "release {leased} --agent a --error boom", None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("release-not-leased", "release {queued} --agent a --json", None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("submit-json", "submit {leased} --agent a --result @{root}/result.json --json", None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("submit-inline-human", "submit {leased} --agent a --result {result}", None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("submit-stdin", "submit {leased} --agent a --result - --json", "{result}", {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("submit-idempotency", "submit {leased} --agent a --result - --idempotency-key k1 --json", "{result}", {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("submit-bad-json", "submit {leased} --agent a --result {{nope --json", None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("submit-invalid-result", 'submit {leased} --agent a --result {{"success":1} --json', None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("submit-missing-file", "submit {leased} --agent a --result @{root}/none.json --json", None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("submit-other-agent", "submit {leased} --agent b --result - --json", "{result}", {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("submit-next-json", "submit {leased} --agent a --result - --next --json", "{result}", {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("submit-next-human", "submit {leased} --agent a --result - --next", "{result}", {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("submit-next-order-ttl", "submit {leased} --agent a --result - --next-order {tasks} --ttl 60 --json", "{result}",
     {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("submit-next-type-none", "submit {leased} --agent a --result - --next-type no.such --json", "{result}",
     {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("submit-id-prefix", "submit {leased8} --agent a --result - --json", "{result}", {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("heartbeat-id-prefix", "heartbeat {leased8} --agent a --json", None, {"WORKCTL_LEASE_TOKEN": "{token}"}),
    ("checkout-order-prefix", "checkout {tasks8} --agent b --json", None, {}),
    ("heartbeat-no-token", "heartbeat {leased} --agent a --json", None, {}),
    ("release-no-token-human", "release {leased} --agent a", None, {}),
    ("submit-empty-env-token", "submit {leased} --agent a --result - --json", "{result}", {"WORKCTL_LEASE_TOKEN": ""}),
    ("status-json", "status --json", None, {}),
    ("status-order-json", "status {sync} --json", None, {}),
    ("status-unknown-order", "status nope --json", None, {}),
]


def _fill(text: str, template) -> str:
    values = {k: v for k, v in template.items() if isinstance(v, (str, Path))}
    values.update({f"{k}8": v[:8] for k, v in template.items() if k in ("leased", "tasks")})  # id prefixes
    values["result"] = json.dumps(template["result"], separators=(",", ":"))
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text.replace("{{", "{")


def _argv(spec: str, template) -> list[str]:
    words = []
    for word in spec.split(" "):
        words.append(_fill(word, template))
    return words


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fast_path_matches_typer(case, template, tmp_path, capsys, monkeypatch):
    _, spec, stdin, env = case
    work = tmp_path / "w.db"
    monkeypatch.setenv("WORKCTL_NOW", NOW)
    db = str(work)
    for name, value in env.items():
        if name == "DB":
            db = _fill(value, template)
        else:
            monkeypatch.setenv(name, _fill(value, template))
    argv = ["--db", db, *_argv(spec, template)]
    stdin = _fill(stdin, template) if stdin else None

    outcomes = []
    for runner in ("fast", "typer"):
        _restore(template, work)
        tokens = _tokens()
        monkeypatch.setattr(leases, "new_token", tokens)
        monkeypatch.setattr(submit_module, "new_token", tokens)  # submit --next leases too
        if runner == "fast":
            code, out, err = _fast(argv, stdin, capsys, monkeypatch)
            assert code is not None, "the fast path should handle this form"
        else:
            code, out, err = _typer(argv, stdin)
        outcomes.append(((code, out, err), _state(work)))
    (fast, fast_rows), (typer_, typer_rows) = outcomes
    assert fast == typer_
    assert fast_rows == typer_rows


@pytest.mark.parametrize("raised, code", [(ValueError("boom"), 1), (KeyboardInterrupt(), 130)])
@pytest.mark.parametrize("json_", [True, False])
def test_unexpected_errors_match_typer(raised, code, json_, template, tmp_path, capsys, monkeypatch):
    """A bug is an internal_error document and exit 1; Ctrl-C is exit 130 with no output; both ways."""
    from workctl.api import Workctl as Api

    def explode(self, *args, **kwargs):
        raise raised

    monkeypatch.setattr(Api, "checkout", explode)
    monkeypatch.delenv("WORKCTL_DEBUG", raising=False)
    work = tmp_path / "w.db"
    argv = ["--db", str(work), "checkout", "--agent", "b", *(["--json"] if json_ else [])]
    _restore(template, work)
    fast = _fast(argv, None, capsys, monkeypatch)
    _restore(template, work)
    assert fast == _typer(argv, None)
    assert fast[0] == code


# Forms the fast path leaves to Typer (which reports usage errors, help and version itself).
FALLBACKS = [
    "--help", "--version", "checkout --help", "checkout --bogus", "checkout --ttl 0", "checkout --ttl abc",
    "checkout --ttl -5", "checkout a b", "checkout --json --json", "checkout --json=1", "checkout --agent",
    "checkout --agent --json", "checkout -- x", "checkout -h", "heartbeat", "heartbeat --json", "release",
    "submit X", "submit X --result", "status", "status --watch --json", "status --interval 1 --json",
    "orders --json", "propose task.batch --payload {}", "types", "--db", "--db x --db y checkout",
    "--bogus checkout", "checkout --db x", "chekout --json", "", "approve X --json",
]


@pytest.mark.parametrize("argv", FALLBACKS)
def test_other_forms_fall_back_to_typer(argv, capsys):
    assert fastpath.main(argv.split()) is None
    assert capsys.readouterr() == ("", "")


def _process(args, cwd, env=None):
    proc = subprocess.run([sys.executable, "-m", "workctl", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "WORKCTL_NOW": NOW, **(env or {})}, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("args", [
    ["checkout", "--bogus", "--json"],  # a usage error: the fallback's one-line JSON error, exit 2
    ["checkout", "--ttl", "0"],
    ["checkout", "nope", "--json"],  # handled by the fast path: exit 4 with the error document
    ["heartbeat", "nope", "--agent", "a"],
    ["submit", "nope", "--agent", "a", "--result", "[1"],
    ["status", "--json"],
])
def test_console_entry_matches_typer_entry(args, template, tmp_path):
    """End to end: `python -m workctl` (fast path first) against the same with the fast path disabled."""
    work = tmp_path / "w.db"
    seen = []
    for env in ({}, {"WORKCTL_NO_FASTPATH": "1"}):
        _restore(template, work)
        seen.append(_process(["--db", str(work), *args], tmp_path, env))
    assert seen[0] == seen[1]


@pytest.mark.parametrize("command", sorted(fastpath.SYNTAX))
def test_the_fast_path_knows_exactly_the_typer_commands_parameters(command):
    """The fast path's table and the Typer command cannot drift: the same arguments (names, order,
    required), and the same options (keyword, flag or value, environment variable), except the ones the
    fast path leaves to Typer by name (FALLBACK_ONLY)."""
    import typer.main

    typer_command = typer.main.get_command(app).commands[command]
    positional, options, envvars = fastpath.SYNTAX[command]
    arguments = [(p.name, p.required) for p in typer_command.params if p.param_type_name == "argument"]
    assert list(positional) == arguments
    typer_options = {opt: p for p in typer_command.params if p.param_type_name == "option" for opt in p.opts}
    left_to_typer = fastpath.FALLBACK_ONLY.get(command, frozenset())
    assert set(options) == set(typer_options) - left_to_typer
    for name, (keyword, takes_value) in options.items():
        param = typer_command.params[[p.name for p in typer_command.params].index(keyword)]
        assert name in param.opts
        assert takes_value is not param.is_flag, name
        assert envvars.get(keyword) == param.envvar, name
