"""workctl sync against the real sample server on 127.0.0.1 (no mocked transport).

Waits go through an injected sleeper that records them (and advances a fake monotonic clock for the
token bucket), so tests observe every backoff and Retry-After instead of sleeping through it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

import pytest

from workctl import Workctl
from workctl.clock import ManualClock
from workctl.config import Config
from workctl.sources.client import SourceClient
from workctl.sources.config import load_source
from workctl.sources.sample_server import Faults, SampleServer, sample_user
from workctl.agents.sync import Syncer, SyncOptions
from helpers import make_users, run, taken

FIELDS = ["email", "phone", "company"]


class FakeTime:
    """A monotonic clock that only moves when someone sleeps: waits are recorded, not endured."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_world(tmp_path, server, *, users=150, source_settings=None):
    db = tmp_path / "w.db"
    make_users(db, users)
    config = Config(raw={"sources": {"crm": {"base_url": f"{server.url}/crm", **(source_settings or {})}}})
    return db, config


def propose(wc, ids, **extra):
    return wc.propose("user.data.sync", {"source": "crm", "user_ids": ids, "fields": FIELDS, **extra})["order"]["id"]


def syncer(wc, fake, *, approve=False, order_id=None, concurrency=None, on_client=None):
    def factory(config, on_wait):
        client = SourceClient(config, sleep=fake.sleep, clock=fake.clock, rng=lambda: 0.5, on_wait=on_wait)
        if on_client:
            on_client(client)
        return client
    return Syncer(wc, SyncOptions(order_id=order_id, agent="sync-test", approve=approve, concurrency=concurrency),
                  client_factory=factory, heartbeat_every=30)


def users_table(db):
    conn = sqlite3.connect(db)
    rows = {r[0]: r[1:] for r in conn.execute("SELECT id, email, phone, company FROM users")}
    conn.close()
    return rows


def test_clean_sync_of_150_users_end_to_end(tmp_path):
    with SampleServer() as server:
        db, config = make_world(tmp_path, server)
        with Workctl(db, config=config) as wc:
            order_id = propose(wc, list(range(1, 151)))
            report = syncer(wc, FakeTime(), approve=True).run().to_dict()
            assert wc.show(order_id)["order"]["state"] == "completed"
        assert len(server.log) == 3  # the bulk endpoint: one request per batch
    assert taken(report["items"]) == {"submitted": 3, "released": 0, "lost": 0}
    assert report["users"]["synced"] == 150 and report["users"]["failed"] == 0
    assert report["approved"][0]["diff"]["after"] == {"updated_count": 150}
    rows = users_table(db)
    expected = sample_user("crm", 42)
    assert rows[42] == (expected["email"], expected["phone"], expected["company"])


def test_per_user_requests_when_no_bulk_endpoint(tmp_path):
    with SampleServer() as server:
        db, config = make_world(tmp_path, server, users=20, source_settings={"bulk_path": ""})
        with Workctl(db, config=config) as wc:
            propose(wc, list(range(1, 21)))
            report = syncer(wc, FakeTime()).run().to_dict()
        assert len(server.log) == 20 and all("/crm/users/" in e["path"] for e in server.log.entries)
    assert report["users"]["synced"] == 20


def test_429_with_retry_after_is_honoured(tmp_path):
    fake = FakeTime()
    with SampleServer(faults=Faults(throttle_first=2, retry_after="7")) as server:
        db, config = make_world(tmp_path, server, users=100)
        with Workctl(db, config=config) as wc:
            propose(wc, list(range(1, 101)))
            report = syncer(wc, fake).run().to_dict()
    # The client waits exactly what Retry-After says (no jitter, no backoff) and then succeeds.
    assert report["users"]["synced"] == 100
    assert fake.sleeps == [7.0, 7.0]
    assert report["retries"] == 2


def test_retry_after_as_an_http_date(tmp_path):
    from datetime import datetime, timezone
    from email.utils import format_datetime

    fake = FakeTime()
    wall = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
    header = format_datetime(datetime(2026, 6, 1, 12, 0, 30, tzinfo=timezone.utc), usegmt=True)
    with SampleServer(faults=Faults(throttle_first=1, retry_after=header)) as server:
        config = load_source("crm", {"sources": {"crm": {"base_url": f"{server.url}/crm"}}})
        client = SourceClient(config, sleep=fake.sleep, clock=fake.clock, wall=lambda: wall)
        outcomes = client.fetch_batch([1, 2])
        client.close()
    assert [o.ok for o in outcomes] == [True, True]
    assert fake.sleeps == [30.0]


def test_retry_after_beyond_the_cap_fails_users_as_rate_limited(tmp_path):
    fake = FakeTime()
    with SampleServer(faults=Faults(throttle_first=1, retry_after="3600")) as server:
        db, config = make_world(tmp_path, server, users=50, source_settings={"retry_after_cap": 300})
        with Workctl(db, config=config) as wc:
            propose(wc, list(range(1, 51)), min_success_ratio=0)
            report = syncer(wc, fake).run().to_dict()
    assert report["users"]["failed"] == 50
    assert report["users"]["failed_by_class"] == {"rate_limited": 50}
    assert "3600" in report["failed_users"][0]["error"] and "cap" in report["failed_users"][0]["error"]
    assert fake.sleeps == []  # it did not wait an hour


def test_5xx_then_success(tmp_path):
    fake = FakeTime()
    with SampleServer(faults=Faults(fail_first=3)) as server:
        db, config = make_world(tmp_path, server, users=50)
        with Workctl(db, config=config) as wc:
            propose(wc, list(range(1, 51)))
            report = syncer(wc, fake).run().to_dict()
    assert report["users"]["synced"] == 50 and report["retries"] == 3
    # Full jitter with rng=0.5: 0.5 * base * 2^(n-1) for attempts 1..3.
    assert fake.sleeps == [0.5, 1.0, 2.0]


def test_retries_stay_within_the_budget_then_the_user_fails(tmp_path):
    fake = FakeTime()
    with SampleServer(faults=Faults(fail_rate=1.0)) as server:
        db, config = make_world(tmp_path, server, users=10, source_settings={"max_attempts": 4, "bulk_path": ""})
        with Workctl(db, config=config) as wc:
            propose(wc, list(range(1, 11)), min_success_ratio=0)
            report = syncer(wc, fake).run().to_dict()
        assert len(server.log) == 10 * 4
    assert report["users"]["failed_by_class"] == {"server_error": 10}
    assert "gave up after 4 attempts" in report["failed_users"][0]["error"]
    assert max(fake.sleeps) <= 60


def test_timeouts(tmp_path):
    fake = FakeTime()
    with SampleServer(faults=Faults(latency=0.3)) as server:
        db, config = make_world(tmp_path, server, users=3,
                                source_settings={"timeout": 0.05, "max_attempts": 2, "bulk_path": ""})
        with Workctl(db, config=config) as wc:
            propose(wc, [1, 2, 3], min_success_ratio=0)
            report = syncer(wc, fake).run().to_dict()
    assert report["users"]["failed_by_class"] == {"timeout": 3}
    assert report["retries"] == 3


@pytest.mark.parametrize("fault", [Faults(malformed_rate=0.2, seed=7), Faults(drop_rate=0.2, seed=3)],
                         ids=["malformed_json", "dropped_connections"])
def test_transient_faults_are_retried(tmp_path, fault):
    fake = FakeTime()
    with SampleServer(faults=fault) as server:
        db, config = make_world(tmp_path, server, users=30, source_settings={"bulk_path": "", "max_attempts": 8})
        with Workctl(db, config=config) as wc:
            propose(wc, list(range(1, 31)))
            report = syncer(wc, fake).run().to_dict()
    assert report["users"]["synced"] == 30 and report["retries"] > 0


def test_unknown_users_are_listed_in_failed_users(tmp_path):
    with SampleServer(faults=Faults(missing=frozenset({7, 13}))) as server:
        db, config = make_world(tmp_path, server, users=50)
        with Workctl(db, config=config) as wc:
            order_id = propose(wc, list(range(1, 51)), min_success_ratio=0.9)
            report = syncer(wc, FakeTime(), approve=True).run().to_dict()
            result = wc.show(order_id)["items"][0]["result"]
    assert sorted((f["user_id"], f["error_class"]) for f in report["failed_users"]) == [(7, "not_found"),
                                                                                        (13, "not_found")]
    assert {f["user_id"] for f in result["failed_users"]} == {7, 13}
    assert report["approved"][0]["diff"]["after"] == {"updated_count": 48}
    rows = users_table(db)
    assert rows[7] == (None, None, None) and rows[8][0] == "user8@example.com"


def test_strict_order_releases_a_failing_batch_with_the_error(tmp_path):
    clock = ManualClock("2026-03-01T00:00:00Z")
    with SampleServer(faults=Faults(missing=frozenset({5}))) as server:
        db, config = make_world(tmp_path, server, users=10)
        with Workctl(db, config=config, clock=clock) as wc:
            order_id = propose(wc, list(range(1, 11)), max_attempts=2)
            first = syncer(wc, FakeTime()).run().to_dict()
            waiting = wc.show(order_id)
            # The released batch backs off instead of being retried in a tight loop by the same run.
            assert taken(first["items"]) == {"submitted": 0, "released": 1, "lost": 0}
            assert waiting["order"]["state"] == "in_progress"
            assert waiting["items"][0]["state"] == "queued" and waiting["items"][0]["retry_at"] == \
                "2026-03-01T00:00:10.000000Z"
            assert syncer(wc, FakeTime()).run().to_dict()["items"]["released"] == 0  # still backing off
            clock.advance(10)
            second = syncer(wc, FakeTime()).run().to_dict()
            detail = wc.show(order_id)
    assert second["items"]["released"] == 1
    assert [f["user_id"] for f in first["failed_users"]] == [5]
    assert detail["order"]["state"] == "failed" and detail["items"][0]["state"] == "failed"
    assert "min_success_ratio" in detail["items"][0]["error"]["message"]


def test_rate_limit_respected(tmp_path):
    fake = FakeTime()
    starts: list[float] = []

    def watch(client):
        acquire = client.bucket.acquire

        def recording():
            waited = acquire()
            starts.append(fake.now)
            return waited
        client.bucket.acquire = recording

    with SampleServer() as server:
        db, config = make_world(tmp_path, server, users=40,
                                source_settings={"bulk_path": "", "rate_limit": 5, "burst": 2, "concurrency": 1})
        with Workctl(db, config=config) as wc:
            propose(wc, list(range(1, 41)))
            syncer(wc, fake, on_client=watch).run()
    assert len(starts) == 40
    for i, start in enumerate(starts):
        in_window = [t for t in starts[i:] if t < start + 1.0]
        assert len(in_window) <= 5 + 2  # rate + burst in any one-second window
    overall = (len(starts) - 2) / (starts[-1] - starts[0])
    assert overall <= 5.0 + 1e-9


def test_concurrency_cap_respected(tmp_path):
    with SampleServer(faults=Faults(latency=0.02)) as server:
        db, config = make_world(tmp_path, server, users=40, source_settings={"bulk_path": "", "concurrency": 3})
        with Workctl(db, config=config) as wc:
            propose(wc, list(range(1, 41)))
            report = syncer(wc, FakeTime()).run().to_dict()
        assert 1 < server.max_in_flight <= 3
    assert report["users"]["synced"] == 40


def test_missing_source_config_fails_before_any_lease(tmp_path):
    db = tmp_path / "w.db"
    make_users(db, 10)
    with Workctl(db, config=Config(raw={})) as wc:
        order_id = propose(wc, list(range(1, 11)))
    out = run(db, "sync", order_id, "--json")
    assert out.exit_code == 5 and out.json["error"]["code"] == "source_not_configured"
    with Workctl(db) as wc:
        assert wc.status(order_id)["items"][0]["state"] == "queued"
        assert wc.status()["leases"]["held"] == 0


def test_missing_secret_fails_before_any_lease(tmp_path, monkeypatch):
    monkeypatch.delenv("CRM_TOKEN", raising=False)
    with SampleServer() as server:
        db = tmp_path / "w.db"
        make_users(db, 10)
        (tmp_path / "workctl.toml").write_text(
            f'[sources.crm]\nbase_url = "{server.url}/crm"\nauth = "bearer"\ntoken_env = "CRM_TOKEN"\n')
        cfg = str(tmp_path / "workctl.toml")
        with Workctl(db, config=Config(raw={})) as wc:
            order_id = propose(wc, list(range(1, 11)))
        out = run(db, "--config", cfg, "sync", "--json")
        assert out.exit_code == 5 and out.json["error"]["code"] == "secret_missing"
        assert "CRM_TOKEN" in out.json["error"]["message"]
        with Workctl(db) as wc:
            assert wc.status(order_id)["progress"]["done"] == 0 and wc.status()["leases"]["held"] == 0


def test_source_token_never_leaks(tmp_path, monkeypatch):
    token = "sentinel-TOKEN-9f8e7d6c5b4a"
    monkeypatch.setenv("CRM_TOKEN", token)
    with SampleServer(faults=Faults(token=token, missing=frozenset({3}))) as server:
        db = tmp_path / "w.db"
        make_users(db, 60)
        (tmp_path / "workctl.toml").write_text(
            f'[sources.crm]\nbase_url = "{server.url}/crm"\nauth = "bearer"\ntoken_env = "CRM_TOKEN"\n')
        cfg = str(tmp_path / "workctl.toml")
        payload = json.dumps({"source": "crm", "user_ids": list(range(1, 61)), "fields": FIELDS,
                              "min_success_ratio": 0.5})
        outputs = [run(db, "--config", cfg, "propose", "user.data.sync", "--payload", payload, "--json")]
        outputs.append(run(db, "--config", cfg, "sync", "--approve", "--json"))
        outputs.append(run(db, "--config", cfg, "sync", "--approve"))
        outputs.append(run(db, "--config", cfg, "sources", "list", "--json"))
        outputs.append(run(db, "--config", cfg, "sources", "check", "crm", "--json"))
        order_id = outputs[0].json["order"]["id"]
        outputs.append(run(db, "--config", cfg, "log", order_id, "--json"))
        outputs.append(run(db, "--config", cfg, "show", order_id, "--json"))
        assert all(e["auth"] == f"Bearer {token}" for e in server.log.entries)  # it was really used
    assert outputs[1].exit_code == 0, outputs[1].stderr
    assert outputs[1].json["users"]["synced"] == 59
    for out in outputs:
        assert token not in out.stdout and token not in out.stderr
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for path in tmp_path.iterdir():
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_wrong_token_is_an_auth_failure_with_exit_7_on_check(tmp_path, monkeypatch):
    monkeypatch.setenv("CRM_TOKEN", "not-the-right-one")
    with SampleServer(faults=Faults(token="the-right-one")) as server:
        (tmp_path / "workctl.toml").write_text(
            f'[sources.crm]\nbase_url = "{server.url}/crm"\nauth = "bearer"\ntoken_env = "CRM_TOKEN"\n')
        out = run(tmp_path / "w.db", "--config", str(tmp_path / "workctl.toml"), "sources", "check", "crm", "--json")
    assert out.exit_code == 7 and out.json["error"]["code"] == "source_auth"
    assert "not-the-right-one" not in out.stdout + out.stderr


def test_unreachable_source_check_is_exit_7(tmp_path):
    with SampleServer() as server:
        url = server.url
    (tmp_path / "workctl.toml").write_text(f'[sources.crm]\nbase_url = "{url}/crm"\ntimeout = 2\n')
    out = run(tmp_path / "w.db", "--config", str(tmp_path / "workctl.toml"), "sources", "check", "crm", "--json")
    assert out.exit_code == 7 and out.json["error"]["code"] == "source_unreachable"


def test_cron_one_liner_proposes_syncs_and_approves(tmp_path, monkeypatch):
    with SampleServer() as server:
        monkeypatch.setenv("WORKCTL_SOURCE_CRM_URL", f"{server.url}/crm")
        db = tmp_path / "w.db"
        make_users(db, 120)
        ids = tmp_path / "ids.txt"
        ids.write_text("\n".join(str(i) for i in range(1, 121)))
        out = run(db, "sync", "--source", "crm", "--users", f"@{ids}", "--fields", "email,phone", "--approve",
                  "--json")
        assert out.exit_code == 0, out.stderr
        assert out.json["users"]["synced"] == 120 and out.json["approved"][0]["diff"]["after"]["updated_count"] == 120
        again = run(db, "sync", "--source", "crm", "--users", "all", "--approve", "--quiet")
        assert again.exit_code == 0, again.stderr
    rows = users_table(db)
    assert rows[120][0] == "user120@example.com"


def test_nothing_to_do_is_exit_0(tmp_path):
    assert run(tmp_path / "w.db", "init").exit_code == 0
    out = run(tmp_path / "w.db", "sync", "--json")
    assert out.exit_code == 0 and out.json["items"]["submitted"] == 0


def test_lost_lease_drops_the_result(tmp_path):
    """A heartbeat that finds the lease gone makes the loop drop the batch instead of submitting."""
    with SampleServer() as server:
        db, config = make_world(tmp_path, server, users=50)
        with Workctl(db, config=config) as wc:
            order_id = propose(wc, list(range(1, 51)))
            s = syncer(wc, FakeTime())
            original = s.client

            def stealing_client(source):
                client = original(source)
                fetch = client.fetch_batch

                def fetch_then_lose(user_ids, **kw):
                    outcomes = fetch(user_ids, **kw)
                    # Another agent takes the item over (as after an expiry) while we fetched.
                    conn = sqlite3.connect(db)
                    conn.execute("UPDATE items SET lease_token = 'stolen' WHERE order_id = ?", (order_id,))
                    conn.commit()
                    conn.close()
                    return outcomes
                client.fetch_batch = fetch_then_lose
                return client
            s.client = stealing_client
            s.options = replace(s.options, max_items=1)
            report = s.run().to_dict()
            assert wc.show(order_id)["items"][0]["state"] == "leased"
    assert report["items"]["lost"] == 1 and report["items"]["submitted"] == 0
    assert "lost" in report["messages"][0]


def test_incomplete_sync_exits_7_with_the_report_and_the_error(tmp_path, monkeypatch):
    with SampleServer(faults=Faults(missing=frozenset({4}))) as server:
        monkeypatch.setenv("WORKCTL_SOURCE_CRM_URL", f"{server.url}/crm")
        db = tmp_path / "w.db"
        make_users(db, 100)
        out = run(db, "sync", "--source", "crm", "--users", "1-100", "--fields", "email", "--json")
    assert out.exit_code == 7
    document = out.json
    assert document["error"]["code"] == "sync_incomplete"
    assert taken(document["items"]) == {"submitted": 1, "released": 1, "lost": 0}
    assert document["failed_users"][0]["user_id"] == 4
    assert "workctl: error: 1 of the items this run took were not submitted" in out.stderr
