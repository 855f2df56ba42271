"""Submit and propose refuse what the store or the target cannot hold (issue 11), through the CLI:
integers beyond signed 64 bits, NaN and Infinity, floats where an integer belongs (``user_ids: [1.0, 2]``,
``batch_size: 10.0`` — JSON Schema calls them integers), lone surrogates, strings longer than
``[target] max_value_chars``. Each is exit 5 with the JSON path, and nothing is written: the store's
bytes are unchanged and a refused result keeps its lease.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import file_snapshot, propose_sync, run, sql


@pytest.fixture
def leased(tmp_path: Path) -> tuple[Path, dict[str, Any], tuple[str, ...]]:
    db = tmp_path / "w.db"
    sql(db, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, score INTEGER)",
        "INSERT INTO users VALUES (1, 'a', 1), (2, 'b', 2)")
    config = tmp_path / "workctl.toml"
    config.write_text("[target]\nmax_value_chars = 20\n")
    cfg = ("--config", str(config))
    order_id = propose_sync(db, {"source": "crm", "user_ids": [1, 2], "fields": ["email", "score"]}, *cfg)
    item = run(db, *cfg, "checkout", order_id, "--agent", "a", "--json").json["item"]
    assert item["input"]["max_value_chars"] == 20
    return db, item, cfg


def entries(score: Any = 1, email: Any = '"x@y"', user_id: Any = 1) -> str:
    return ('{"success": true, "synced_users": ['
            f'{{"user_id": {user_id}, "data": {{"email": {email}, "score": {score}}}, "verified": true}}, '
            '{"user_id": 2, "data": {"email": "b", "score": 2}, "verified": true}]}')


@pytest.mark.parametrize("result, path, words", [
    (entries(score=2**63), "synced_users.0.data.score", "64 bits"),
    (entries(score=-(2**63) - 1), "synced_users.0.data.score", "64 bits"),
    (entries(score="NaN"), "synced_users.0.data.score", "nan"),
    (entries(score="Infinity"), "synced_users.0.data.score", "inf"),
    (entries(score="-Infinity"), "synced_users.0.data.score", "inf"),
    (entries(email='"' + "x" * 21 + '"'), "synced_users.0.data.email", "limit of 20"),
    (entries(user_id="1.0"), "synced_users.0.user_id", "integer"),
    (entries(email='"\\ud800"'), "synced_users.0.data.email", "surrogate"),
], ids=["2**63", "-2**63-1", "NaN", "Infinity", "-Infinity", "too-long", "float-id", "lone-surrogate"])
def test_submit_refuses_what_the_target_cannot_store(leased, result, path, words):
    db, item, cfg = leased
    before = file_snapshot(db)
    refused = run(db, *cfg, "submit", item["id"], "--agent", "a", "--lease-token", item["lease_token"],
                  "--result", result, "--json")
    assert refused.exit_code == 5, refused.stderr
    error = refused.json["error"]
    assert error["code"] in ("result_invalid", "invalid_json")
    assert path in [d["path"] for d in error["details"]]
    assert words.lower() in " ".join(d["message"] for d in error["details"]).lower()
    assert file_snapshot(db) == before                        # nothing written; the item keeps its lease
    assert run(db, *cfg, "submit", item["id"], "--agent", "a", "--lease-token", item["lease_token"],
               "--result", entries()).exit_code == 0


@pytest.mark.parametrize("payload, path", [
    ('{"source": "crm", "user_ids": [1.0, 2], "fields": ["email"]}', "user_ids.0"),
    ('{"source": "crm", "user_ids": [1, 2], "fields": ["email"], "batch_size": 10.0}', "batch_size"),
    ('{"source": "crm", "user_ids": [1, 2], "fields": ["email"], "max_attempts": 3.0}', "max_attempts"),
    ('{"source": "crm", "user_ids": [1, 2], "fields": ["email"], "min_success_ratio": NaN}', "min_success_ratio"),
    ('{"source": "crm", "user_ids": [1, 9223372036854775808], "fields": ["email"]}', "user_ids.1"),
    ('{"source": "crm", "user_ids": [1, 2], "fields": ["email"], "sync_mode": "delta", '
     '"lookback_seconds": 60.0}', "lookback_seconds"),
], ids=["float-id", "float-batch-size", "float-attempts", "NaN-ratio", "2**63-id", "float-lookback"])
def test_propose_refuses_floats_for_integers_and_unstorable_numbers(tmp_path, payload, path):
    db = tmp_path / "w.db"
    sql(db, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    assert run(db, "status").exit_code == 0
    before = file_snapshot(db)
    refused = run(db, "propose", "user.data.sync", "--payload", payload, "--json")
    assert refused.exit_code == 5, refused.stderr
    assert refused.json["error"]["code"] in ("payload_invalid", "invalid_json")
    assert path in [d["path"] for d in refused.json["error"]["details"]]
    assert file_snapshot(db) == before


def test_large_float_id_lists_are_refused_too(tmp_path):
    """A list of 1,000+ ids takes jsonschema's fast lane (types.bulkcheck): a float among them still fails."""
    db = tmp_path / "w.db"
    sql(db, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    ids = json.dumps([*range(1, 1500), 1500.0])
    refused = run(db, "propose", "user.data.sync", "--payload",
                  f'{{"source": "crm", "user_ids": {ids}, "fields": ["email"]}}', "--json")
    assert refused.exit_code == 5
    assert [d["path"] for d in refused.json["error"]["details"]] == ["user_ids.1499"]
