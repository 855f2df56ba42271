"""CLI test helpers: run workctl in-process (CliRunner) or as a real process, and snapshot a database."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from workctl.cli.app import app


@dataclass
class Ran:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def run(db: Path | str, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Ran:
    result = CliRunner().invoke(app, ["--db", str(db), *args], input=input, env=env, catch_exceptions=False)
    return Ran(result.exit_code, result.stdout, result.stderr)


def run_process(db: Path | str, *args: str, env: dict[str, str] | None = None, input: str | None = None) -> Ran:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "workctl", "--db", str(db), *args], capture_output=True,
                          text=True, env=full_env, input=input, timeout=120)
    return Ran(proc.returncode, proc.stdout, proc.stderr)


def make_users(path: Path | str, count: int = 150) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT, email TEXT, phone TEXT, "
                 "company TEXT, password TEXT, is_admin INTEGER DEFAULT 0, role TEXT)")
    conn.executemany("INSERT INTO users (id, name) VALUES (?, ?)", [(i, f"User {i}") for i in range(1, count + 1)])
    conn.commit()
    conn.close()


def sync_result(user_ids: list[int], **overrides: Any) -> dict[str, Any]:
    result = {"success": True, "synced_users": [
        {"user_id": uid, "data": {"email": f"user{uid}@example.com", "phone": f"+1555{uid:07d}",
                                  "company": f"Company {uid % 7}"}, "verified": True} for uid in user_ids],
        "errors": []}
    result.update(overrides)
    return result


def snapshot(path: Path | str) -> tuple[str, str]:
    """(sha256 of the main file, logical dump) after folding the WAL into it."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    dump = "\n".join(conn.iterdump())
    conn.close()
    return hashlib.sha256(Path(path).read_bytes()).hexdigest(), dump
