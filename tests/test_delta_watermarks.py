"""Delta sync never skips a user (issue 11): per-user watermarks keyed by source and fields, so a delta over
a subset moves only its users' watermarks, a new local user and a new field set are fetched in full,
failed and missing users keep theirs, and ``lookback_seconds`` widens the window. Through the CLI
against the sample server on 127.0.0.1 (whose users changed at known times between 2026-01-01 and
2026-03-02); the users table and the watermarks are checked row by row.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from workctl.clock import iso
from workctl.sources.sample_server import Faults, SampleServer, sample_user, updated_at
from workctl.types.user_data_sync.delta import from_micros
from helpers import make_users, query, run

FEB1 = "2026-02-01T00:00:00.000000Z"


def when(text: str) -> dict[str, str]:
    return {"WORKCTL_NOW": text}


def marks(db: Path) -> dict[tuple[str, int], str]:
    """{(fields, user): synced_through} for source crm."""
    return {(fields, user): iso(from_micros(through)) for fields, user, through in query(
        db, "SELECT s.fields, w.user_id, w.synced_through FROM sync_watermarks w JOIN sync_scopes s "
            "ON s.id = w.scope_id WHERE s.source = 'crm' ORDER BY s.fields, w.user_id")}


def emails(db: Path) -> dict[int, str]:
    return dict(query(db, "SELECT id, email FROM users ORDER BY id"))


def stale(db: Path, column: str = "email") -> None:
    conn = sqlite3.connect(db)
    conn.execute(f"UPDATE users SET {column} = 'stale'")
    conn.commit()
    conn.close()


def changed_after(moment: str, users: range) -> set[int]:
    return {u for u in users if iso(updated_at("crm", u)) > moment}


@pytest.fixture
def server(monkeypatch):
    with SampleServer() as srv:
        monkeypatch.setenv("WORKCTL_SOURCE_CRM_URL", f"{srv.url}/crm")
        yield srv


def delta(db: Path, now: str, *args: str) -> dict[str, Any]:
    ran = run(db, "sync", "--source", "crm", "--delta", "--approve", "--json", *args, env=when(now))
    assert ran.exit_code == 0, ran.stderr
    return ran.json


def items_since(db: Path, order_id: str) -> list[tuple[list[int], str | None]]:
    shown = run(db, "show", order_id, "--json").json
    return [(it["input"]["user_ids"], it["input"].get("since")) for it in shown["items"]]


def test_a_delta_over_a_subset_does_not_skip_the_other_users(tmp_path, server):
    """The issue's case: a delta for users 1-5 used to move the source's one cursor, and the next delta of
    every user fetched none of those changed at the source in between."""
    db = tmp_path / "w.db"
    make_users(db, 20)
    delta(db, "2026-02-01T00:00:00Z", "--fields", "email")
    assert marks(db) == {('["email"]', u): FEB1 for u in range(1, 21)}
    stale(db)
    subset = delta(db, "2026-03-01T00:00:00Z", "--fields", "email", "--users", "1-5")
    assert marks(db) == {('["email"]', u): ("2026-03-01T00:00:00.000000Z" if u <= 5 else FEB1) for u in range(1, 21)}
    assert subset["users"]["unchanged"] + subset["users"]["synced"] == 5
    final = delta(db, "2026-03-02T00:00:00Z", "--fields", "email", "--batch-size", "5")
    order_id = final["orders"][0]
    # Each batch asks for changes since the earliest watermark of its users.
    assert items_since(db, order_id) == [([1, 2, 3, 4, 5], "2026-03-01T00:00:00.000000Z"),
                                         ([6, 7, 8, 9, 10], FEB1), ([11, 12, 13, 14, 15], FEB1),
                                         ([16, 17, 18, 19, 20], FEB1)]
    fetched = changed_after(FEB1, range(1, 21))
    assert fetched == {6, 7, 8, 9, 10, 17, 18, 19, 20}
    assert final["users"]["synced"] == len(fetched)
    assert emails(db) == {u: (sample_user("crm", u)["email"] if u in fetched else "stale") for u in range(1, 21)}
    assert marks(db) == {('["email"]', u): "2026-03-02T00:00:00.000000Z" for u in range(1, 21)}


def test_a_user_new_locally_is_fetched_in_full(tmp_path, server):
    db = tmp_path / "w.db"
    make_users(db, 10)
    delta(db, "2026-02-01T00:00:00Z", "--fields", "email", "--batch-size", "10")
    make_users(db, 1, start=11)                       # user 11 changed at the source on 2026-01-01
    stale(db)
    report = delta(db, "2026-02-02T00:00:00Z", "--fields", "email", "--batch-size", "10")
    assert items_since(db, report["orders"][0]) == [(list(range(1, 11)), FEB1), ([11], None)]
    assert emails(db)[11] == sample_user("crm", 11)["email"]
    assert emails(db)[6] == sample_user("crm", 6)["email"]       # changed on 2026-02-02, after the watermark
    assert emails(db)[1] == "stale"                              # not changed since: not fetched
    assert set(marks(db).values()) == {"2026-02-02T00:00:00.000000Z"}


def test_another_set_of_fields_has_its_own_watermarks(tmp_path, server):
    db = tmp_path / "w.db"
    make_users(db, 5)
    delta(db, "2026-02-01T00:00:00Z", "--fields", "email")
    report = delta(db, "2026-03-01T00:00:00Z", "--fields", "phone")
    assert items_since(db, report["orders"][0]) == [([1, 2, 3, 4, 5], None)]   # no phone watermark yet: full
    both = delta(db, "2026-03-02T00:00:00Z", "--fields", "email,phone")
    assert items_since(db, both["orders"][0]) == [([1, 2, 3, 4, 5], None)]     # neither scope covers both
    again = delta(db, "2026-03-03T00:00:00Z", "--fields", "email")              # the wider scope covers email
    assert items_since(db, again["orders"][0]) == [([1, 2, 3, 4, 5], "2026-03-02T00:00:00.000000Z")]
    assert sorted({fields for fields, _ in marks(db)}) == ['["email","phone"]', '["email"]', '["phone"]']


def test_lookback_widens_every_window(tmp_path, server):
    db = tmp_path / "w.db"
    make_users(db, 3)
    config = tmp_path / "workctl.toml"
    config.write_text('[types."user.data.sync"]\nlookback_seconds = 86400\n')
    cfg = ("--config", str(config))
    assert run(db, *cfg, "sync", "--source", "crm", "--delta", "--fields", "email", "--approve",
               env=when("2026-02-01T00:00:00Z")).exit_code == 0
    report = run(db, *cfg, "sync", "--source", "crm", "--delta", "--fields", "email", "--json",
                 env=when("2026-02-10T00:00:00Z")).json
    assert items_since(db, report["orders"][0]) == [([1, 2, 3], "2026-01-31T00:00:00.000000Z")]
    assert "updated_since=2026-01-31T00%3A00%3A00.000000Z" in server.log.entries[-1]["path"]
    shown = run(db, "show", report["orders"][0], "--json").json["order"]["payload"]
    assert shown["lookback_seconds"] == 86400 and shown["delta_since"] == [["2026-01-31T00:00:00.000000Z", 3]]
    # The payload's own lookback wins over the config's.
    own = run(db, *cfg, "propose", "user.data.sync", "--payload", json.dumps(
        {"source": "crm", "user_ids": [1], "fields": ["email"], "sync_mode": "delta", "lookback_seconds": 0}),
        "--json", env=when("2026-02-10T00:00:00Z")).json
    assert own["items"][0]["input"]["since"] == FEB1


def test_failed_and_missing_users_keep_their_watermarks(tmp_path, monkeypatch):
    db = tmp_path / "w.db"
    make_users(db, 4)
    with SampleServer(faults=Faults(missing=frozenset({3}))) as srv:
        monkeypatch.setenv("WORKCTL_SOURCE_CRM_URL", f"{srv.url}/crm")
        order = run(db, "propose", "user.data.sync", "--payload", json.dumps(
            {"source": "crm", "user_ids": [1, 2, 3, 4, 5], "fields": ["email"], "sync_mode": "delta",
             "min_success_ratio": 0.5}), "--json", env=when("2026-02-01T00:00:00Z")).json["order"]["id"]
        assert run(db, "sync", order, "--approve", env=when("2026-02-01T00:00:00Z")).exit_code == 0
    diff = run(db, "show", order, "--json").json["order"]
    assert run(db, "diff", order, "--json").json["diff"]["missing_user_ids"] == [5]
    # 3 failed at the source, 5 does not exist locally: neither is marked as synced.
    assert marks(db) == {('["email"]', u): FEB1 for u in (1, 2, 4)}
    assert diff["state"] == "completed"
    advanced = query(db, "SELECT payload FROM events WHERE order_id = ? AND event = 'watermarks_advanced'", (order,))
    assert json.loads(advanced[0][0]) == {"source": "crm", "fields": ["email"], "to": FEB1, "users": 3,
                                          "not_covered": 2}


def test_a_rejected_or_unapproved_delta_moves_nothing_and_a_full_sync_pays_nothing(tmp_path, server):
    db = tmp_path / "w.db"
    make_users(db, 3)
    pending = run(db, "sync", "--source", "crm", "--delta", "--fields", "email", "--json",
                  env=when("2026-02-01T00:00:00Z")).json["orders"][0]
    assert marks(db) == {}
    assert run(db, "reject", pending, "--reason", "no").exit_code == 0
    assert run(db, "sync", "--source", "crm", "--users", "1-3", "--fields", "email", "--approve").exit_code == 0
    assert marks(db) == {} and query(db, "SELECT count(*) FROM sync_scopes") == [(0,)]
