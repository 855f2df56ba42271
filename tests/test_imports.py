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


def imported_modules(args, cwd, env=None):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "workctl", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=60)
    return proc, {m.group(1) for m in re.finditer(r"\|\s+([\w.]+)\s*$", proc.stderr, re.M)}


def test_checkout_help_does_not_import_httpx(tmp_path):
    proc, modules = imported_modules(["checkout", "--help"], tmp_path)
    assert proc.returncode == 0
    assert "workctl.cli" in modules
    assert not {m for m in modules if m.split(".")[0] == "httpx"}


@pytest.fixture()
def store_with_work(tmp_path):
    db = tmp_path / "w.db"
    make_users(db, 100)
    run(db, "propose", "user.data.sync", "--payload",
        json.dumps({"source": "crm", "user_ids": list(range(1, 101)), "fields": ["email"]}))
    return db


@pytest.mark.parametrize("command", ["checkout", "status", "heartbeat", "submit"])
def test_agent_commands_import_no_heavy_modules(store_with_work, tmp_path, command):
    db = str(store_with_work)
    lease = json.loads(subprocess.run([sys.executable, "-m", "workctl", "--db", db, "checkout", "--agent", "a",
                                       "--json"], capture_output=True, text=True, check=True).stdout)["item"]
    result = {"success": True, "synced_users": [{"user_id": u, "data": {"email": f"{u}@x"}, "verified": True}
                                                for u in lease["input"]["user_ids"]]}
    argv = {
        "checkout": ["checkout", "--agent", "b", "--json"],
        "status": ["status", "--json"],
        "heartbeat": ["heartbeat", lease["id"], "--agent", "a", "--json"],
        "submit": ["submit", lease["id"], "--agent", "a", "--result", json.dumps(result), "--json"],
    }[command]
    proc, modules = imported_modules(["--db", db, *argv], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "workctl.cli" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], heavy
