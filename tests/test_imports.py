"""Hot paths stay lean: shell agents start one process per call (ARCHITECTURE.md invariant 8)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import make_users, run


HEAVY = ("httpx", "jsonschema", "rich", "sqlite_utils")
# What the Typer app brings, which the fast path must not.
FALLBACK_ONLY = ("typer", "click", "pydantic", "pydantic_core", "annotated_doc", "shellingham", "pygments",
                 "markdown_it")


def imported_modules(args, cwd, env=None):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "workctl", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=60)
    return proc, {m.group(1) for m in re.finditer(r"\|\s+([\w.]+)\s*$", proc.stderr, re.M)}


def test_checkout_help_does_not_import_httpx(tmp_path):
    proc, modules = imported_modules(["checkout", "--help"], tmp_path)
    assert proc.returncode == 0
    assert "workctl.cli.app" in modules
    assert not {m for m in modules if m.split(".")[0] == "httpx"}


@pytest.fixture()
def store_with_work(tmp_path):
    db = tmp_path / "w.db"
    make_users(db, 100)
    run(db, "propose", "user.data.sync", "--payload",
        json.dumps({"source": "crm", "user_ids": list(range(1, 101)), "fields": ["email"]}))
    return db


@pytest.mark.parametrize("command", ["checkout", "status", "heartbeat", "release", "submit"])
def test_agent_commands_import_no_heavy_modules(store_with_work, tmp_path, command):
    """The hot agent commands run on the fast path (workctl.cli.fastpath): no Typer (nor click, pydantic,
    rich), no httpx, no jsonschema, no sqlite-utils; only the stdlib and workctl's own core modules."""
    db = str(store_with_work)
    lease = json.loads(subprocess.run([sys.executable, "-m", "workctl", "--db", db, "checkout", "--agent", "a",
                                       "--json"], capture_output=True, text=True, check=True).stdout)["item"]
    result = {"success": True, "synced_users": [{"user_id": u, "data": {"email": f"{u}@x"}, "verified": True}
                                                for u in lease["input"]["user_ids"]]}
    argv = {
        "checkout": ["checkout", "--agent", "b", "--json"],
        "status": ["status", "--json"],
        "heartbeat": ["heartbeat", lease["id"], "--agent", "a", "--lease-token", lease["lease_token"], "--json"],
        "submit": ["submit", lease["id"], "--agent", "a", "--lease-token", lease["lease_token"], "--result",
                   json.dumps(result), "--json"],
        "release": ["release", lease["id"], "--agent", "a", "--lease-token", lease["lease_token"], "--json"],
    }[command]
    proc, modules = imported_modules(["--db", db, *argv], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "workctl.cli.fastpath" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY + FALLBACK_ONLY)
    assert heavy == [], heavy
    typer_side = sorted(m for m in modules if m == "workctl.cli.app" or m.startswith("workctl.commands"))
    assert typer_side == [], typer_side



def test_checkout_json_loads_neither_httpx_nor_jsonschema_nor_typer(store_with_work, tmp_path):
    """The figure P2 times: `workctl checkout --json`, through the console-script entry's fast path."""
    proc, modules = imported_modules(["--db", str(store_with_work), "checkout", "--json", "--agent", "p2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["item"]["lease_token"]
    roots = {m.split(".")[0] for m in modules}
    assert not roots & {"httpx", "jsonschema", "typer", "click", "pydantic", "rich"}, sorted(roots)
    # uuid, hashlib and platform are loaded lazily by what needs them (propose, idempotency keys)
    assert not roots & {"uuid", "hashlib", "platform"}, sorted(roots)


def test_console_script_entry_is_the_fast_path():
    """pyproject's [project.scripts] and `python -m workctl` both enter through workctl.cli.fastpath:run."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["workctl"] == "workctl.cli.fastpath:run"
    assert "workctl.cli.fastpath import run" in (root / "workctl" / "__main__.py").read_text()
