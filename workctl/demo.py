"""``workctl demo``: the seed's whole flow on an embedded default, in seconds, leaving nothing running.

A fresh database (temporary unless --db is given) gets 150 local users; the sample source server
starts on a free loopback port; the seed's order (users 1–150 from crm: email, phone, company) is
proposed, synced with the progress display, approved, and its diff and final status returned.
"""

from __future__ import annotations

import sqlite3
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

DEMO_USERS = 150
DEMO_FIELDS = ["email", "phone", "company"]


def seed_users(path: str, count: int = DEMO_USERS) -> int:
    """Create the local users table (if needed) with users 1..count; return how many were added."""
    from .store.sqlite import connect, translate, write_tx

    conn = connect(path, create=True)  # the demo creates its store: the file 0600 and the workctl schema
    try:
        with write_tx(conn):
            conn.execute("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                         "email TEXT, phone TEXT, company TEXT, password_hash TEXT, "
                         "is_admin INTEGER NOT NULL DEFAULT 0)")
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO users (id, name) VALUES (?, ?)",
                             [(i, f"User {i}") for i in range(1, count + 1)])
            return conn.total_changes - before
    except sqlite3.Error as exc:
        raise translate(exc, path) from exc
    finally:
        conn.close()


def run_demo(db_path: str | None = None, *, config_path: str | None = None, listener: Any = None,
             users: int = DEMO_USERS) -> dict[str, Any]:
    from .api import Workctl
    from .config import load_config
    from .sources.sample_server import SampleServer
    from .store import checked_location
    from .agents.sync import SyncOptions

    if db_path is None:
        db_path = str(Path(tempfile.mkdtemp(prefix="workctl-demo-")) / "demo.db")
    db_path = checked_location(db_path)
    added = seed_users(db_path, users)
    base = load_config(config_path)
    with SampleServer() as server:
        sources = {**base.raw.get("sources", {}), "crm": {"base_url": f"{server.url}/crm"}}
        config = replace(base, raw={**base.raw, "sources": sources}, target_db=None)
        with Workctl(db_path, config=config) as wc:
            proposed = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, users + 1)),
                                                     "fields": DEMO_FIELDS})
            order_id = proposed["order"]["id"]
            report = wc.sync(SyncOptions(order_id=order_id, agent="demo-agent", approve=True), listener=listener)
            status = wc.status(order_id)
    diff = report["approved"][0]["diff"] if report["approved"] else None
    return {"db": db_path, "users_seeded": added, "order": status["order"], "items": len(proposed["items"]),
            "sync": report, "diff": diff, "progress": status["progress"]}
