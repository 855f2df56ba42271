"""The seed's variations 1, 2, 4 and 5 end to end through the CLI, against the sample server on
127.0.0.1: partial failures and the error ledger, field mapping, delta sync with its cursor, and
webhooks through the outbox (with a receiving server that verifies every signature). The crash
tests kill real ``workctl approve`` processes with SIGKILL at named points (WORKCTL_TEST_CRASH_AT).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


from workctl.sources.sample_server import Faults, SampleServer, sample_user, updated_at
from workctl.core.outbox import verify
from helpers import make_users, query, run, run_process

SECRET = "whsec-sentinel-5f4e3d2c1b0a"


def events(db: Path, order_id: str, *names: str) -> list[dict[str, Any]]:
    rows = query(db, "SELECT event, entity, payload FROM events WHERE order_id = ? ORDER BY id", (order_id,))
    return [{"event": e, "entity": ent, "payload": json.loads(p) if p else None}
            for e, ent, p in rows if not names or e in names]


def watermarks(db: Path) -> dict[tuple[str, str, int], str]:
    """{(source, fields, user): synced_through} of the delta watermarks, times as ISO text."""
    from workctl.types.user_data_sync.delta import from_micros
    from workctl.clock import iso

    return {(src, fields, user): iso(from_micros(through)) for src, fields, user, through in query(
        db, "SELECT s.source, s.fields, w.user_id, w.synced_through FROM sync_watermarks w "
            "JOIN sync_scopes s ON s.id = w.scope_id ORDER BY s.source, s.fields, w.user_id")}


def propose(db: Path, payload: dict[str, Any], *args: str, env: dict[str, str] | None = None):
    return run(db, *args, "propose", "user.data.sync", "--payload", json.dumps(payload), "--json", env=env)


# -- 1. partial failures, the error ledger, retry of exactly the failed users -----------------------
def test_partial_failures_go_to_the_ledger_and_retry_failed_syncs_exactly_them(tmp_path, monkeypatch):
    db = tmp_path / "w.db"
    make_users(db, 50)
    with SampleServer(faults=Faults(missing=frozenset({7, 13}))) as server:
        monkeypatch.setenv("WORKCTL_SOURCE_CRM_URL", f"{server.url}/crm")
        proposed = propose(db, {"source": "crm", "user_ids": list(range(1, 51)), "fields": ["email", "company"],
                                "batch_size": 25, "min_success_ratio": 0.9})
        order_id = proposed.json["order"]["id"]
        synced = run(db, "sync", order_id, "--approve", "--json")
        assert synced.exit_code == 0, synced.stderr
        assert synced.json["users"] == {"synced": 48, "failed": 2, "failed_by_class": {"not_found": 2}, "unchanged": 0}

        ledger = run(db, "failures", order_id, "--json")
        assert ledger.exit_code == 0
        rows = ledger.json["failures"]
        assert [(f["user_id"], f["source"], f["error_class"], f["attempt"]) for f in rows] == \
            [(7, "crm", "not_found", 1), (13, "crm", "not_found", 1)]
        assert rows[0]["message"].startswith("not_found: ") and rows[0]["order_id"] == order_id
        assert len(run(db, "failures", "--nl", "--source", "crm").stdout.splitlines()) == 2
        human = run(db, "failures", order_id)
        assert "2 failed users (not_found 2)" in human.stdout and f"--retry-failed {order_id}" in human.stdout
        # Written by the submit that carried them: same item, same time as its 'submitted' event.
        item_of_7 = query(db, "SELECT item_id, created_at FROM sync_failures WHERE user_id = 7")[0]
        assert query(db, "SELECT created_at FROM events WHERE item_id = ? AND event = 'submitted'",
                     (item_of_7[0],))[0][0] == item_of_7[1]
        assert query(db, "SELECT email FROM users WHERE id IN (7, 8) ORDER BY id") == \
            [(None,), ("user8@example.com",)]

        server.faults.missing = frozenset()  # the source has them now
        retried = run(db, "sync", "--retry-failed", order_id, "--approve", "--json")
        assert retried.exit_code == 0, retried.stderr
        retry_id = retried.json["orders"][0]
        payload = run(db, "show", retry_id, "--json").json["order"]["payload"]
        assert payload["user_ids"] == [7, 13] and payload["retry_of"] == order_id
        assert (payload["fields"], payload["batch_size"], payload["min_success_ratio"]) == (["email", "company"], 25, 0.9)
        assert retried.json["approved"][0]["diff"]["stats"]["updated"] == 2
        # Nothing left to retry: they were synced by the retry.
        again = run(db, "sync", "--retry-failed", order_id, "--json")
        assert again.exit_code == 6 and again.json["error"]["code"] == "not_retryable"
    assert query(db, "SELECT id, email, company FROM users WHERE id IN (7, 13) ORDER BY id") == [
        (u, sample_user("crm", u)["email"], sample_user("crm", u)["company"]) for u in (7, 13)]
    assert [e["event"] for e in events(db, retry_id, "proposed", "completed") if e["entity"] == "order"] == \
        ["proposed", "completed"]
    assert run(db, "failures", retry_id, "--json").json["failures"] == []
    assert run(db, "failures", "no-such-order", "--json").exit_code == 4


def test_a_batch_below_the_ratio_is_not_submitted_but_its_failed_users_are_in_the_ledger(tmp_path, monkeypatch):
    db = tmp_path / "w.db"
    make_users(db, 10)
    with SampleServer(faults=Faults(missing=frozenset({3}))) as server:
        monkeypatch.setenv("WORKCTL_SOURCE_CRM_URL", f"{server.url}/crm")
        out = run(db, "sync", "--source", "crm", "--users", "1-10", "--fields", "email", "--json")
    assert out.exit_code == 7 and out.json["failed_users"][0]["user_id"] == 3
    # Released with the refusal, the batch's failed user is in `workctl failures` with its class.
    assert query(db, "SELECT user_id, error_class FROM sync_failures") == [(3, "not_found")]


# -- 2. field mapping -------------------------------------------------------------------------------
def test_the_orders_field_map_wins_over_the_sources_and_bad_targets_are_refused(tmp_path):
    db = tmp_path / "w.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT, work_email TEXT, "
                 "employer TEXT, password TEXT)")
    conn.executemany("INSERT INTO users (id, email) VALUES (?, ?)", [(i, f"keep{i}@local") for i in range(1, 6)])
    conn.commit()
    conn.close()
    with SampleServer() as server:
        config = tmp_path / "workctl.toml"
        # The source maps company -> name; the order maps company -> employer, which wins.
        config.write_text(f'[sources.crm]\nbase_url = "{server.url}/crm"\nfield_map = {{ company = "name" }}\n')
        cfg = ("--config", str(config))
        refused = propose(db, {"source": "crm", "user_ids": [1], "fields": ["work_email"],
                               "field_map": {"email": "password", "phone": "nope"}}, *cfg)
        assert refused.exit_code == 5 and refused.json["error"]["code"] == "field_not_allowed"
        assert [d["path"] for d in refused.json["error"]["details"]] == ["field_map.email", "field_map.phone"]

        proposed = propose(db, {"source": "crm", "user_ids": [1, 2, 3, 4, 5], "batch_size": 3,
                                "fields": ["work_email", "employer", "name"],
                                "field_map": {"email": "work_email", "company": "employer"}}, *cfg)
        assert proposed.exit_code == 0, proposed.stderr
        order_id = proposed.json["order"]["id"]
        assert all(it["input"]["field_map"] == {"email": "work_email", "company": "employer"}
                   for it in proposed.json["items"])
        synced = run(db, *cfg, "sync", order_id, "--approve", "--json")
        assert synced.exit_code == 0, synced.stderr
    rows = query(db, "SELECT id, name, email, work_email, employer FROM users ORDER BY id")
    assert rows == [(u, sample_user("crm", u)["name"], f"keep{u}@local", sample_user("crm", u)["email"],
                     sample_user("crm", u)["company"]) for u in range(1, 6)]
    applied = run(db, "show", order_id, "--json").json["order"]["diff"]
    assert {c["field"] for c in applied["changes"]} == {"name", "work_email", "employer"}
    # The applied event names the diff (stored once, in orders.diff) instead of carrying a copy.
    assert events(db, order_id, "applied")[0]["payload"]["diff"] == {
        "summary": applied["summary"], "stats": applied["stats"], "changes": len(applied["changes"]),
        "stored_in": "orders.diff"}
    assert [e["event"] for e in events(db, order_id, "completed") if e["entity"] == "order"] == ["completed"]


# -- 3. delta sync ------------------------------------------------------------------------------------
def test_delta_sync_fetches_only_changed_users_and_moves_the_cursor_only_on_apply(tmp_path, monkeypatch):
    db = tmp_path / "w.db"
    make_users(db, 20)
    feb1 = "2026-02-01T00:00:00.000000Z"
    changed = [u for u in range(1, 21) if updated_at("crm", u).isoformat() > "2026-02-01T00:00:00"]
    unchanged = [u for u in range(1, 21) if u not in changed]
    assert changed and unchanged
    with SampleServer() as server:
        monkeypatch.setenv("WORKCTL_SOURCE_CRM_URL", f"{server.url}/crm")

        def delta(now: str, *extra: str):
            return run(db, "sync", "--source", "crm", "--delta", "--fields", "email", "--json", *extra,
                       env={"WORKCTL_NOW": now})

        # No cursor yet: the first delta order fetches everyone and, once applied, sets the cursor.
        first = delta(feb1, "--approve")
        assert first.exit_code == 0, first.stderr
        assert first.json["users"]["synced"] == 20 and "updated_since" not in server.log.entries[-1]["path"]
        first_id = first.json["orders"][0]
        assert watermarks(db) == {("crm", '["email"]', u): feb1 for u in range(1, 21)}
        assert events(db, first_id, "watermarks_advanced")[0]["payload"] == {
            "source": "crm", "fields": ["email"], "to": feb1, "users": 20, "not_covered": 0}

        stale_changed, stale_unchanged = changed[0], unchanged[0]
        conn = sqlite3.connect(db)
        conn.execute("UPDATE users SET email = 'stale' WHERE id IN (?, ?)", (stale_changed, stale_unchanged))
        conn.commit()
        conn.close()

        # A rejected delta order never moves the cursor.
        pending = delta("2026-02-10T00:00:00Z")
        assert pending.exit_code == 0, pending.stderr
        assert run(db, "reject", pending.json["orders"][0], "--reason", "not now").exit_code == 0
        assert set(watermarks(db).values()) == {feb1}

        second = delta("2026-02-20T00:00:00Z", "--approve")
        assert second.exit_code == 0, second.stderr
        assert "updated_since=2026-02-01T00%3A00%3A00.000000Z" in server.log.entries[-1]["path"]
        report = second.json
        assert report["users"]["synced"] == len(changed) and report["users"]["unchanged"] == len(unchanged)
        second_id = report["orders"][0]
        item = run(db, "show", second_id, "--json").json["items"][0]
        assert item["input"]["sync_mode"] == "delta" and item["input"]["since"] == feb1
        assert sorted(u["user_id"] for u in item["result"]["unchanged_users"]) == unchanged
        # The explicit since of a full order is refused; so is a since that is not a date-time.
        bad = propose(db, {"source": "crm", "user_ids": [1], "since": "2026-01-01T00:00:00Z"})
        assert bad.exit_code == 5 and bad.json["error"]["details"][0]["path"] == "since"
        assert propose(db, {"source": "crm", "user_ids": [1], "sync_mode": "delta", "since": "yesterday"}).exit_code == 5
    assert watermarks(db) == {("crm", '["email"]', u): "2026-02-20T00:00:00.000000Z" for u in range(1, 21)}
    # The changed user was fetched and repaired; the unchanged one was not fetched, so it stays stale.
    assert query(db, "SELECT email FROM users WHERE id = ?", (stale_changed,)) == [(f"user{stale_changed}@example.com",)]
    assert query(db, "SELECT email FROM users WHERE id = ?", (stale_unchanged,)) == [("stale",)]
    advanced = events(db, second_id, "watermarks_advanced")[0]["payload"]
    assert advanced == {"source": "crm", "fields": ["email"], "to": "2026-02-20T00:00:00.000000Z", "users": 20,
                        "not_covered": 0}


def test_a_delta_item_without_since_cannot_claim_unchanged_users(tmp_path):
    db = tmp_path / "w.db"
    make_users(db, 2)
    order_id = propose(db, {"source": "crm", "user_ids": [1, 2], "fields": ["email"]}).json["order"]["id"]
    item = run(db, "checkout", order_id, "--agent", "a", "--json").json["item"]
    result = {"success": True, "synced_users": [{"user_id": 1, "data": {"email": "x@y"}, "verified": True}],
              "unchanged_users": [{"user_id": 2}]}
    out = run(db, "submit", item["id"], "--agent", "a", "--lease-token", item["lease_token"], "--result",
              json.dumps(result), "--json")
    assert out.exit_code == 5 and out.json["error"]["details"][0]["path"] == "unchanged_users"


# -- 4. webhooks and cache invalidation ---------------------------------------------------------------
class Receiver:
    """A webhook endpoint on loopback: records every delivery; answers with the queued statuses, then 200."""

    def __init__(self):
        self.deliveries: list[dict[str, Any]] = []
        self.statuses: dict[str, list[int]] = {}
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    queue = receiver.statuses.get(self.path, [])
                    status = queue.pop(0) if queue else 200
                    receiver.deliveries.append({"path": self.path, "body": body, "status": status,
                                                "headers": {k.lower(): v for k, v in self.headers.items()}})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def ok(self, path: str | None = None) -> list[dict[str, Any]]:
        return [d for d in self.deliveries if d["status"] == 200 and (path is None or d["path"] == path)]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def webhook_config(tmp_path: Path, server: SampleServer, receiver: Receiver) -> tuple[str, str]:
    config = tmp_path / "workctl.toml"
    config.write_text(f"""
[sources.crm]
base_url = "{server.url}/crm"

[[webhooks]]
name = "app"
url = "{receiver.url}/hooks?token=url-secret"
events = ["order.applied", "user.updated"]
secret_env = "WH_SECRET"
tags = ["profiles"]

[[webhooks]]
name = "cache-purge"
url = "{receiver.url}/purge"
secret_env = "WH_SECRET"
backoff_seconds = 60
""")
    return "--config", str(config)


def assert_signed(delivery: dict[str, Any]) -> dict[str, Any]:
    """Verify a delivery's Standard Webhooks signature (and that tampering breaks it); return its data,
    flattened with the event type, timestamp and message id for the assertions below."""
    body, headers = delivery["body"], delivery["headers"]
    assert verify(SECRET, headers, body)
    assert not verify(SECRET, headers, body.replace(b'"order.applied"', b'"order.tampered"').replace(b"user.", b"usr."))
    assert not verify("another-secret", headers, body)
    document = json.loads(body)
    assert set(document) == {"type", "timestamp", "data"}
    return {**document["data"], "event": document["type"], "timestamp": document["timestamp"],
            "id": headers["webhook-id"]}


def test_webhooks_are_signed_sent_after_apply_retried_with_backoff_and_carry_cache_tags(tmp_path, monkeypatch):
    monkeypatch.setenv("WH_SECRET", SECRET)
    db = tmp_path / "w.db"
    make_users(db, 5)
    now = "2026-03-01T12:00:00Z"
    with SampleServer() as server, Receiver() as receiver:
        cfg = webhook_config(tmp_path, server, receiver)
        receiver.statuses["/purge"] = [500]  # the cache endpoint fails once
        out = run(db, *cfg, "sync", "--source", "crm", "--users", "1-5", "--fields", "email", "--approve", "--json",
                  env={"WORKCTL_NOW": now})
        assert out.exit_code == 0, out.stderr
        order_id = out.json["orders"][0]
        # The apply committed whatever the webhooks did.
        assert query(db, "SELECT count(*) FROM users WHERE email LIKE '%@example.com'") == [(5,)]
        app = [assert_signed(d) for d in receiver.ok("/hooks?token=url-secret")]
        assert [d["event"] for d in app] == ["order.applied"] + ["user.updated"] * 5
        applied = app[0]
        assert (applied["order_id"], applied["order_type"], applied["source"], applied["users_synced"]) == \
            (order_id, "user.data.sync", "crm", 5)
        assert applied["changed_user_ids"] == [1, 2, 3, 4, 5] and applied["tags"] == ["users", "profiles"]
        assert applied["timestamp"] == "2026-03-01T12:00:00.000000Z"
        assert [(u["user_id"], u["fields"], u["tags"][-1]) for u in app[1:]] == \
            [(u, ["email"], f"user.{u}") for u in range(1, 6)]
        assert receiver.ok("/purge") == [] and [d["status"] for d in receiver.deliveries if d["path"] == "/purge"] == [500]

        # maintain re-sends what is pending, but only once its backoff (60 s) is over.
        early = run(db, *cfg, "maintain", "--json", env={"WORKCTL_NOW": "2026-03-01T12:00:30Z"})
        assert early.json["webhooks"] == {"sent": 0, "failed": 0, "pending": 1}
        later = run(db, *cfg, "maintain", "--json", env={"WORKCTL_NOW": "2026-03-01T12:01:01Z"})
        assert later.json["webhooks"] == {"sent": 1, "failed": 0, "pending": 0}
        purge = assert_signed(receiver.ok("/purge")[0])
        assert purge["event"] == "order.applied" and purge["tags"] == ["users"]
        assert purge["changed_user_ids"] == [1, 2, 3, 4, 5]
        assert run(db, *cfg, "maintain", "--json").json["webhooks"]["sent"] == 0
        assert len(receiver.deliveries) == 8  # 6 to the app, 2 attempts at the cache endpoint

    attempts = events(db, order_id, "webhook_delivered", "webhook_failed")
    assert [(e["event"], e["payload"]["webhook"]) for e in attempts].count(("webhook_delivered", "app")) == 6
    failed = [e["payload"] for e in attempts if e["event"] == "webhook_failed"]
    assert failed == [{"outbox_id": failed[0]["outbox_id"], "webhook": "cache-purge", "url": f"{receiver.url}/purge",
                       "event": "order.applied", "attempt": 1, "status": 500, "ms": failed[0]["ms"],
                       "error": "http_500: the webhook answered HTTP 500",
                       "next_attempt_at": "2026-03-01T12:01:00.000000Z"}]
    assert attempts[-1]["event"] == "webhook_delivered" and attempts[-1]["payload"]["attempt"] == 2
    assert query(db, "SELECT state, count(*) FROM outbox GROUP BY state") == [("sent", 7)]
    log = json.dumps(events(db, order_id))
    assert "url-secret" not in log  # the URL's query is never shown
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert SECRET.encode() not in db.read_bytes()


def test_a_malformed_webhook_config_is_refused_before_anything_is_applied(tmp_path, monkeypatch):
    db = tmp_path / "w.db"
    make_users(db, 3)
    with SampleServer() as server:
        monkeypatch.setenv("WORKCTL_SOURCE_CRM_URL", f"{server.url}/crm")
        order_id = run(db, "sync", "--source", "crm", "--users", "1-3", "--json").json["orders"][0]
    config = tmp_path / "bad.toml"
    config.write_text('[[webhooks]]\nurl = "http://127.0.0.1:9/x"\nevents = ["order.deleted"]\n')
    out = run(db, "--config", str(config), "approve", order_id, "--json")
    assert out.exit_code == 5 and out.json["error"]["code"] == "config_invalid"
    assert run(db, "show", order_id, "--json").json["order"]["state"] == "submitted"


# -- crash tests: real processes killed with SIGKILL ---------------------------------------------------
def test_kill_between_the_apply_commit_and_the_send_then_maintain_delivers_exactly_once(tmp_path, monkeypatch):
    monkeypatch.setenv("WH_SECRET", SECRET)
    db = tmp_path / "w.db"
    make_users(db, 3)
    with SampleServer() as server, Receiver() as receiver:
        cfg = webhook_config(tmp_path, server, receiver)
        order_id = run(db, *cfg, "sync", "--source", "crm", "--users", "1-3", "--fields", "email",
                       "--json").json["orders"][0]
        crashed = run_process(db, *cfg, "approve", order_id, env={"WORKCTL_TEST_CRASH_AT": "after_store_commit"})
        assert crashed.exit_code == -signal.SIGKILL, crashed.stderr
        assert receiver.deliveries == []
        # The apply and its outbox rows committed together; nothing was sent.
        assert run(db, "show", order_id, "--json").json["order"]["state"] == "completed"
        assert query(db, "SELECT event, state FROM outbox ORDER BY id") == \
            [("order.applied", "pending")] + [("user.updated", "pending")] * 3 + [("order.applied", "pending")]

        first = run_process(db, *cfg, "maintain", "--json")
        assert first.exit_code == 0, first.stderr
        assert json.loads(first.stdout)["webhooks"] == {"sent": 5, "failed": 0, "pending": 0}
        second = run(db, *cfg, "maintain", "--json")
        assert second.json["webhooks"] == {"sent": 0, "failed": 0, "pending": 0}
        documents = [assert_signed(d) for d in receiver.deliveries]
    assert len(documents) == 5 and len({d["id"] for d in documents}) == 5  # each notification exactly once
    assert sorted((d["event"], d.get("user_id")) for d in documents) == \
        [("order.applied", None), ("order.applied", None), ("user.updated", 1), ("user.updated", 2), ("user.updated", 3)]
    assert len(events(db, order_id, "webhook_delivered")) == 5


def test_kill_in_the_middle_of_apply_moves_no_cursor_and_applies_nothing(tmp_path, monkeypatch):
    db = tmp_path / "w.db"
    make_users(db, 4)
    with SampleServer() as server:
        monkeypatch.setenv("WORKCTL_SOURCE_CRM_URL", f"{server.url}/crm")
        env = {"WORKCTL_NOW": "2026-02-01T00:00:00Z"}
        order_id = run(db, "sync", "--source", "crm", "--delta", "--fields", "email", "--json",
                       env=env).json["orders"][0]
        before = query(db, "SELECT * FROM users ORDER BY id")
        crashed = run_process(db, "approve", order_id, env={**env, "WORKCTL_TEST_CRASH_AT": "before_store_commit"})
        assert crashed.exit_code == -signal.SIGKILL, crashed.stderr
        assert query(db, "SELECT count(*) FROM sync_watermarks") == [(0,)]
        assert query(db, "SELECT * FROM users ORDER BY id") == before
        assert run(db, "show", order_id, "--json").json["order"]["state"] == "submitted"
        assert events(db, order_id, "watermarks_advanced", "applied") == []
        healed = run(db, "approve", order_id, "--json", env=env)
        assert healed.exit_code == 0, healed.stderr
    assert watermarks(db) == {("crm", '["email"]', u): "2026-02-01T00:00:00.000000Z" for u in range(1, 5)}
    assert query(db, "SELECT email FROM users WHERE id = 4") == [("user4@example.com",)]


# -- smaller contracts ---------------------------------------------------------------------------------
def test_per_user_delta_fetches_get_304_for_unchanged_users_and_keep_the_order_map():
    from workctl.sources.client import SourceClient
    from workctl.sources.config import load_source

    since = "2026-02-01T00:00:00Z"
    with SampleServer() as server:
        config = load_source("crm", {"sources": {"crm": {"base_url": f"{server.url}/crm", "bulk_path": "",
                                                         "field_map": {"company": "name"}}}})
        with SourceClient(config, sleep=lambda s: None) as client:
            outcomes = client.fetch_batch([5, 6], since=since, field_map={"company": "employer"})
        assert all("updated_since=2026-02-01T00%3A00%3A00Z" in e["path"] for e in server.log.entries)
    assert [(o.user_id, o.unchanged) for o in outcomes] == [(5, True), (6, False)]
    assert outcomes[1].data["employer"] == sample_user("crm", 6)["company"]
    assert outcomes[1].data["name"] == sample_user("crm", 6)["name"]  # not the source map's company


def test_a_delta_order_with_an_explicit_since_moves_no_watermark(tmp_path, monkeypatch):
    db = tmp_path / "w.db"
    make_users(db, 3)
    with SampleServer() as server:
        monkeypatch.setenv("WORKCTL_SOURCE_CRM_URL", f"{server.url}/crm")
        env = {"WORKCTL_NOW": "2026-02-01T00:00:00Z"}
        assert run(db, "sync", "--source", "crm", "--delta", "--approve", "--json", env=env).exit_code == 0
        later = run(db, "sync", "--source", "crm", "--since", "2026-02-15T00:00:00Z", "--approve", "--json",
                    env={"WORKCTL_NOW": "2026-03-01T00:00:00Z"})
        assert later.exit_code == 0, later.stderr
    kept = events(db, later.json["orders"][0], "watermarks_kept", "watermarks_advanced")
    assert [e["event"] for e in kept] == ["watermarks_kept"] and "ad-hoc window" in kept[0]["payload"]["kept"]
    assert set(watermarks(db).values()) == {"2026-02-01T00:00:00.000000Z"}


def test_a_webhook_that_keeps_failing_gives_up_after_max_attempts(tmp_path, monkeypatch):
    monkeypatch.setenv("WH_SECRET", SECRET)
    db = tmp_path / "w.db"
    make_users(db, 2)
    with SampleServer() as server, Receiver() as receiver:
        receiver.statuses["/down"] = [503, 503]
        config = tmp_path / "workctl.toml"
        config.write_text(f'[sources.crm]\nbase_url = "{server.url}/crm"\n[[webhooks]]\nurl = "{receiver.url}/down"\n'
                          'secret_env = "WH_SECRET"\nmax_attempts = 2\nbackoff_seconds = 0\n')
        out = run(db, "--config", str(config), "sync", "--source", "crm", "--users", "1-2", "--approve", "--json")
        assert out.exit_code == 0 and out.json["approved"]
        assert run(db, "--config", str(config), "maintain", "--json").json["webhooks"] == \
            {"sent": 0, "failed": 1, "pending": 0}
        assert len(receiver.deliveries) == 2
    assert query(db, "SELECT state, attempts, last_error FROM outbox") == \
        [("failed", 2, "http_503: the webhook answered HTTP 503")]
    last = events(db, out.json["orders"][0], "webhook_failed")[-1]["payload"]
    assert last["gave_up"] is True and last["attempt"] == 2


def test_a_revert_notifies_like_an_apply_so_caches_are_purged_again(tmp_path, monkeypatch):
    monkeypatch.setenv("WH_SECRET", SECRET)
    db = tmp_path / "w.db"
    make_users(db, 3)
    with SampleServer() as server, Receiver() as receiver:
        config = tmp_path / "workctl.toml"
        config.write_text(f"""
[sources.crm]
base_url = "{server.url}/crm"

[[webhooks]]
name = "cache-purge"
url = "{receiver.url}/purge"
events = ["order.applied", "order.reverted", "user.updated"]
secret_env = "WH_SECRET"
""")
        cfg = ("--config", str(config))
        synced = run(db, *cfg, "sync", "--source", "crm", "--users", "1-3", "--fields", "email", "--approve", "--json")
        assert synced.exit_code == 0, synced.stderr
        order_id = synced.json["orders"][0]
        reverted = run(db, *cfg, "revert", order_id, "--json")
        assert reverted.exit_code == 0, reverted.stderr
        assert reverted.json["webhooks"]["sent"] == 4
        bodies = [assert_signed(d) for d in receiver.ok("/purge")]
    assert [b["event"] for b in bodies] == ["order.applied"] + ["user.updated"] * 3 + \
        ["order.reverted"] + ["user.updated"] * 3
    assert bodies[4]["changed_user_ids"] == [1, 2, 3] and bodies[4]["tags"] == ["users"]
    assert query(db, "SELECT count(*) FROM users WHERE email IS NULL") == [(3,)]
