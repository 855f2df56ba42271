"""R4 — source faults: sync against the real sample server (127.0.0.1) with each fault on, and all mixed.

For every scenario, in bulk mode (one request per batch) and per-user mode (one GET per user), and with
min_success_ratio 0 (every batch submitted, failures listed) and 1 (a batch with any failure released):

* the run ends (it runs on a thread that must finish within a bound);
* every user of the order is accounted for: synced, or in ``failed_users`` with its error class and a
  message; a batch that was not submitted was released with its error; nothing is silently dropped;
* the retries stay within the budget, counted at the server: requests <= fetch units x max_attempts
  (units are batches in bulk mode, users in per-user mode);
* after approve, synced users hold the source's values and failed users are untouched.

Waits (backoff, Retry-After) go through a recording sleeper, so a scenario costs only the real latency
of its slow and timed-out requests. One mixed scenario runs the real ``workctl sync`` CLI with real
(short) backoff sleeps.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from dataclasses import replace

import pytest


from workctl import Workctl
from workctl.clock import ManualClock
from workctl.config import Config
from workctl.sources.client import SourceClient
from workctl.sources.sample_server import Faults, SampleServer, sample_user
from workctl.agents.sync import Syncer, SyncOptions
from helpers import NOW, child_env, events, figure, lease_violations, make_users, users_rows, workctl_cmd

FIELDS = ["email", "phone", "company"]
MAX_ATTEMPTS = 4
TIMEOUT = 0.25
MISSING = frozenset({3, 17, 33, 58})
CLASSES = {"not_found", "rate_limited", "server_error", "timeout", "connection", "malformed", "unverified"}

SCENARIOS: dict[str, tuple[Faults, set[str]]] = {
    # name: (faults, the error classes a user may fail with)
    "clean": (Faults(), set()),
    "429 + Retry-After": (Faults(throttle_first=3, retry_after="2"), set()),
    "429 rate limit": (Faults(rate_limit=15, retry_after="1"), {"rate_limited"}),
    "429 Retry-After over the cap": (Faults(throttle_first=3, retry_after="3600"), {"rate_limited"}),
    "5xx bursts": (Faults(fail_first=4, burst_every=9, burst_length=3), {"server_error"}),
    "5xx random": (Faults(fail_rate=0.35, seed=11), {"server_error"}),
    "timeouts": (Faults(slow_rate=0.25, slow_latency=TIMEOUT * 2, seed=5), {"timeout"}),
    "resets": (Faults(drop_rate=0.3, seed=3), {"connection"}),
    "malformed JSON": (Faults(malformed_rate=0.3, seed=7), {"malformed"}),
    "slow responses": (Faults(latency=0.01, slow_rate=0.3, slow_latency=TIMEOUT / 3, seed=2), set()),
    "404s": (Faults(missing=MISSING), {"not_found"}),
    "mixed": (Faults(throttle_first=2, retry_after="1", fail_first=1, burst_every=13, burst_length=2,
                     fail_rate=0.1, slow_rate=0.1, slow_latency=TIMEOUT * 2, drop_rate=0.1, malformed_rate=0.1,
                     latency=0.005, missing=MISSING, seed=99),
              {"not_found", "rate_limited", "server_error", "timeout", "connection", "malformed"}),
}


class RecordingSleep:
    """Backoff and Retry-After waits are recorded, not slept (a monotonic clock that moves on sleep)."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(seconds)
            self.now += seconds


def run_scenario(tmp_path, name: str, *, bulk: bool, ratio: float, users: int = 60, batch: int = 10) -> dict:
    faults, allowed = SCENARIOS[name]
    db = tmp_path / "w.db"
    make_users(db, users, filled=True)
    before = users_rows(db, "email, phone, company")
    fake = RecordingSleep()
    with SampleServer(faults=faults) as server:
        source = {"base_url": f"{server.url}/crm", "max_attempts": MAX_ATTEMPTS, "timeout": TIMEOUT,
                  "retry_after_cap": 300, "concurrency": 6}
        if not bulk:
            source["bulk_path"] = ""
        config = Config(raw={"sources": {"crm": source}})
        clock = ManualClock(NOW)
        with Workctl(db, config=config, clock=clock) as wc:
            order = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, users + 1)),
                                                  "fields": FIELDS, "batch_size": batch,
                                                  "min_success_ratio": ratio})
            order_id = order["order"]["id"]

            def factory(cfg, on_wait):
                return SourceClient(cfg, sleep=fake.sleep, clock=fake.clock, rng=lambda: 0.5, on_wait=on_wait)

            syncer = Syncer(wc, SyncOptions(order_id=order_id, agent="faulty", workers=3), client_factory=factory,
                            heartbeat_every=30)
            outcome: dict = {}
            runner = threading.Thread(target=lambda: outcome.update(report=syncer.run().to_dict()))
            runner.start()
            runner.join(timeout=120)
            assert not runner.is_alive(), f"{name}: the sync run did not end"
            report = outcome["report"]
            requests_seen = len(server.log)
            shown = wc.show(order_id)
            submitted_all = all(it["state"] == "submitted" for it in shown["items"])
            diff = wc.approve(order_id)["diff"] if submitted_all else None

    batches = (users + batch - 1) // batch
    units = batches if bulk else users
    # -- the retry budget, counted at the server
    assert requests_seen <= units * MAX_ATTEMPTS, (name, requests_seen, units * MAX_ATTEMPTS)
    assert report["requests"] <= units * MAX_ATTEMPTS and report["retries"] <= report["requests"]
    assert all(wait <= 300 for wait in fake.sleeps)
    # -- nothing silently dropped: every batch was submitted or released, none lost
    # (a batch whose every user failed for transport reasons is released as source_unavailable, attempt not
    # counted, and trips the run's circuit breaker: the source's other batches are given back unfetched)
    items = report["items"]
    assert items["submitted"] + items["released"] + items["released_unavailable"] == batches and items["lost"] == 0
    failed = {f["user_id"]: f for f in report["failed_users"]}
    assert len(failed) == len(report["failed_users"]), "a user listed twice in failed_users"
    for entry in report["failed_users"]:
        assert entry["error_class"] in allowed, (name, entry)
        assert entry["error"] and entry["item_id"] and entry["order_id"] == order_id
    if name in ("404s", "mixed"):
        assert MISSING & set(range(1, users + 1)) <= set(failed)
    synced: set[int] = set()
    for item in shown["items"]:
        batch_users = set(item["input"]["user_ids"])
        if item["state"] == "submitted":
            result = item["result"]
            ok = {u["user_id"] for u in result["synced_users"]}
            bad = {u["user_id"] for u in result.get("failed_users", [])}
            assert ok | bad == batch_users and not ok & bad
            assert bad == batch_users & set(failed)  # the report lists exactly the result's failures
            assert all(u["error"] for u in result.get("failed_users", []))
            synced |= ok
        elif item["error"]["code"] == "source_unavailable":  # an outage: no attempt spent, backing off
            assert item["state"] == "queued" and item["attempts"] == 0 and item["retry_at"], item
        else:  # released with its error, counted, backing off: the next run takes it again
            assert item["state"] == "queued" and item["attempts"] == 1 and item["retry_at"], item
            assert item["error"]["code"] == "released_with_error"
            assert batch_users & set(failed), "a released batch must say which users failed"
    assert report["users"]["synced"] == len(synced)
    assert report["users"]["failed"] == len(failed)
    accounted = synced | set(failed)
    released_users = {u for it in shown["items"] if it["state"] != "submitted" for u in it["input"]["user_ids"]}
    assert accounted | released_users == set(range(1, users + 1))
    assert lease_violations(events(db)) == []
    # -- what reached the users table
    rows = users_rows(db, "email, phone, company")
    for uid in range(1, users + 1):
        if diff is not None and uid in synced:
            assert rows[uid] == tuple(sample_user("crm", uid)[f] for f in FIELDS), uid
        else:
            assert rows[uid] == before[uid], uid
    if ratio == 0 and not items["released_unavailable"]:  # every batch taken was submitted: the order applies
        assert diff is not None and diff["stats"]["failed"] == len(failed)
    return {"requests": requests_seen, "budget": units * MAX_ATTEMPTS, "retries": report["retries"],
            "synced": len(synced), "failed": len(failed), "released_batches": report["items"]["released"],
            "classes": dict(Counter(f["error_class"] for f in report["failed_users"])), "waits": list(fake.sleeps)}


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "per-user"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_fault_alone_and_mixed(tmp_path, name, bulk):
    figures = run_scenario(tmp_path, name, bulk=bulk, ratio=0)
    if name == "clean":
        assert figures["failed"] == 0 and figures["requests"] == (6 if bulk else 60)
    if name in ("429 + Retry-After", "slow responses"):
        assert figures["failed"] == 0 and (figures["retries"] > 0 or name == "slow responses")
    if name == "429 + Retry-After":  # exactly what Retry-After said, once per 429, no backoff on top
        assert figures["waits"] == [2.0] * 3
    del figures["waits"]
    if name == "404s":
        assert figures["classes"] == {"not_found": len(MISSING)}
    figure("R4", scenario=name, mode="bulk" if bulk else "per-user", ratio=0, **figures)


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "per-user"])
@pytest.mark.parametrize("name", ["mixed", "404s", "429 Retry-After over the cap"])
def test_strict_orders_release_failing_batches_and_say_why(tmp_path, name, bulk):
    figures = run_scenario(tmp_path, name, bulk=bulk, ratio=1.0)
    del figures["waits"]
    assert figures["released_batches"] >= 1
    figure("R4", scenario=name, mode="bulk" if bulk else "per-user", ratio=1, **figures)


def test_mixed_faults_through_the_real_cli(tmp_path):
    """The real ``workctl propose`` and ``workctl sync`` processes, real (short) backoff sleeps: each run
    ends, every user is synced or listed with its error, retries stay within the budget; runs repeat
    (time moved past the retry backoff with WORKCTL_NOW) until every batch is submitted or has failed
    for good, and an order whose batches were all submitted is approved once."""
    faults = replace(SCENARIOS["mixed"][0], retry_after="0")
    allowed = SCENARIOS["mixed"][1]
    db = tmp_path / "w.db"
    users, batch = 120, 20
    make_users(db, users, filled=True)
    payload = json.dumps({"source": "crm", "user_ids": list(range(1, users + 1)), "fields": FIELDS,
                          "batch_size": batch, "min_success_ratio": 0.75})
    rounds = []
    with SampleServer(faults=faults) as server:
        (tmp_path / "workctl.toml").write_text(
            f'[sources.crm]\nbase_url = "{server.url}/crm"\nmax_attempts = {MAX_ATTEMPTS}\ntimeout = {TIMEOUT}\n'
            'backoff_base = 0.01\nbackoff_cap = 0.05\nbulk_path = ""\n')
        proposed = subprocess.run(workctl_cmd(db, "propose", "user.data.sync", "--payload", payload, "--json"),
                                  capture_output=True, text=True, cwd=tmp_path, env=child_env(WORKCTL_NOW=NOW))
        assert proposed.returncode == 0, proposed.stderr
        order_id = json.loads(proposed.stdout)["order"]["id"]
        for now in [NOW, "2026-01-01T00:00:11Z", "2026-01-01T00:00:32Z"]:
            seen = len(server.log)
            done = subprocess.run(workctl_cmd(db, "sync", order_id, "--approve", "--json"), capture_output=True,
                                  text=True, cwd=tmp_path, timeout=120, env=child_env(WORKCTL_NOW=now))
            report = json.loads(done.stdout)
            assert done.returncode == (7 if report["items"]["released"] else 0), done.stderr
            taken = report["items"]["submitted"] + report["items"]["released"]
            assert report["items"]["lost"] == 0
            assert len(server.log) - seen <= taken * batch * MAX_ATTEMPTS  # per-user GETs within the budget
            assert {f["error_class"] for f in report["failed_users"]} <= allowed
            assert all(f["error"] for f in report["failed_users"])
            rounds.append({"now": now, "requests": len(server.log) - seen, "submitted": report["items"]["submitted"],
                           "released": report["items"]["released"], "failed_users": len(report["failed_users"])})
            if not report["items"]["released"]:
                break
    with Workctl(db, config=Config(), clock=ManualClock(NOW)) as wc:
        shown = wc.show(order_id)
    states = Counter(it["state"] for it in shown["items"])
    assert set(states) <= {"completed", "submitted", "queued", "failed"}, states
    for item in shown["items"]:
        if item["state"] in ("queued", "failed"):
            assert item["error"]["message"], item
    if shown["order"]["state"] == "completed":
        assert len(events(db, "order_id = ? AND event = 'applied'", (order_id,))) == 1
        synced = {u["user_id"] for it in shown["items"] for u in it["result"]["synced_users"]}
        rows = users_rows(db, "email, phone, company")
        assert all(rows[u] == tuple(sample_user("crm", u)[f] for f in FIELDS) for u in synced)
    assert lease_violations(events(db)) == []
    figure("R4-cli", scenario="mixed", users=users, rounds=rounds, final=shown["order"]["state"])
