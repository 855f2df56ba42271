"""workctl export / import: a store's history moves between backends whole, and a bad file changes nothing."""

from __future__ import annotations

import json
from contextlib import closing

import pytest

from workctl import Workctl
from workctl.clock import ManualClock
from workctl.config import Config
from workctl.core.transfer import TABLES
from helpers import connect, make_users, pg_schema, query, result_for_item, run, run_process


def history(db) -> str:
    """A store with a bit of everything: an applied sync order, a failed batch, a queued order, a token."""
    make_users(db, 120, filled=True)
    with Workctl(db, config=Config(), clock=ManualClock("2026-01-01T00:00:00Z"), create=True) as wc:
        done = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, 101)),
                                             "fields": ["email", "phone"], "batch_size": 50,
                                             "min_success_ratio": 0.9},
                          idempotency_key="nightly")["order"]["id"]
        for n in range(2):
            item = wc.checkout(done, agent=f"agent-{n}")["item"]
            result = result_for_item(item["input"])
            if n == 1:
                result["failed_users"] = [{"user_id": item["input"]["user_ids"][0], "error": "not_found: gone"}]
                result["synced_users"] = result["synced_users"][1:]
            wc.submit(item["id"], result, agent=f"agent-{n}", lease_token=item["lease_token"])
        wc.approve(done)
        wc.propose("task.batch", {"tasks": ["a", "b", "c"]})
        wc.create_token(scope="agent", name="ci")
        return done


def table_rows(db) -> dict[str, list[tuple]]:
    """Every table's rows as sorted (column, value) pairs (the backends order columns differently)."""
    out = {}
    with closing(connect(db)) as conn:
        for table, _ in TABLES:
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            out[table] = sorted((tuple(sorted(dict(r).items())) for r in rows), key=repr)
    return out


@pytest.mark.parametrize("direction", ["sqlite-to-postgres", "postgres-to-sqlite"])
def test_a_store_moves_whole_between_backends(tmp_path, direction):
    with pg_schema() as url:
        sqlite_path = str(tmp_path / "w.db")
        source, target = (sqlite_path, url) if direction == "sqlite-to-postgres" else (url, sqlite_path)
        if direction == "postgres-to-sqlite":
            make_users(sqlite_path, 0)
        done = history(source)
        export = tmp_path / "store.jsonl"
        ran = run_process(source, "export", "-o", str(export))
        assert ran.exit_code == 0, ran.stderr
        imported = run_process(target, "import", str(export), "--json")
        assert imported.exit_code == 0, imported.stderr
        assert imported.json["imported"]["orders"] == 2 and imported.json["imported"]["api_tokens"] == 1

        assert table_rows(target) == table_rows(source)
        for command in (["status", "--json"], ["log", done, "--json"], ["show", done, "--json"]):
            now = {"WORKCTL_NOW": "2026-01-02T00:00:00Z"}
            assert run(target, *command, env=now).json == run(source, *command, env=now).json, command
        # The imported store carries on: new ids follow the imported ones, the key still replays.
        with Workctl(target, config=Config(), create=False) as wc:
            assert wc.checkout(agent="after")["item"]["input"] == {"task": "a"}
            again = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, 101)),
                                                  "fields": ["email", "phone"], "batch_size": 50,
                                                  "min_success_ratio": 0.9},
                               idempotency_key="nightly")
            assert again["order"]["id"] == done
        ids = [r[0] for r in query(target, "SELECT id FROM events ORDER BY id")]
        assert len(ids) == len(set(ids)) and ids[-1] > max(r[0] for r in query(source, "SELECT id FROM events"))


def test_a_bad_export_changes_nothing(tmp_path):
    db = tmp_path / "w.db"
    history(db)
    export = tmp_path / "store.jsonl"
    assert run_process(db, "export", "-o", str(export)).exit_code == 0
    lines = export.read_text().splitlines()
    fresh = tmp_path / "fresh.db"
    assert run(fresh, "init").exit_code == 0
    before = {t: query(fresh, f"SELECT count(*) FROM {t}")[0][0] for t, _ in TABLES}
    cases = {
        "cut short": lines[:-5],
        "not an export": ['{"hello": 1}', *lines[1:]],
        "unknown table": [lines[0], json.dumps({"table": "users", "columns": ["id"]}), "[1]", lines[-1]],
        "unknown column": [lines[0], json.dumps({"table": "orders", "columns": ["id", "nope"]}), lines[-1]],
        "not a scalar": [lines[0], json.dumps({"table": "alert_marks", "columns": ["name", "last_event_id"]}),
                         '["x", {"a": 1}]', lines[-1]],
        "wrong type": [lines[0], json.dumps({"table": "items", "columns": ["n", "id"]}), '["many", "x"]', lines[-1]],
        "not JSON": [lines[0], "{nope", lines[-1]],
        "NaN": [lines[0], json.dumps({"table": "alert_marks", "columns": ["name", "last_event_id"]}),
                '["x", NaN]', lines[-1]],
    }
    for name, body in cases.items():
        bad = tmp_path / f"{name.replace(' ', '-')}.jsonl"
        bad.write_text("\n".join(body) + "\n")
        ran = run(fresh, "import", str(bad), "--json")
        assert ran.exit_code == 5, (name, ran.stdout, ran.stderr)
        assert "nothing was imported" in ran.json["error"]["message"], name
        assert {t: query(fresh, f"SELECT count(*) FROM {t}")[0][0] for t, _ in TABLES} == before, name
    # into a store that already has orders: refused, exit 6
    assert run(fresh, "import", str(export)).exit_code == 0
    again = run(fresh, "import", str(export), "--json")
    assert again.exit_code == 6 and again.json["error"]["code"] == "store_not_empty"


def test_export_never_overwrites_a_file(tmp_path):
    db = tmp_path / "w.db"
    history(db)
    existing = tmp_path / "keep.jsonl"
    existing.write_text("precious\n")
    ran = run(db, "export", "-o", str(existing))
    assert ran.exit_code == 2 and "never overwrites" in ran.stderr
    assert existing.read_text() == "precious\n"
