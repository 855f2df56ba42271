"""A model of what approve, revert and delta sync must do, checked against random histories (hypothesis).

Each example is a real store on disk, a real source on 127.0.0.1 whose users change over time, and the
real fetch loop (``Workctl.sync``). Steps, in any order: the source changes users; someone edits the
users table outside workctl; an order (full or delta, over a random subset of users and fields) is
proposed, fetched and approved; an applied order is reverted; time passes. After every step:

(a) the users table equals a simple model (dicts of values, compared as the columns store them: the
    source sends scores as numbers or as numeric strings), and approve records a provenance row for
    exactly the fields whose stored value changed;
(b) no user changed at the source after its last applied sync of those fields is missed by the next
    delta covering it (its batch's window starts no later than that sync's order was created);
(c) a revert never overwrites a later writer: it restores exactly the fields its order still holds
    (no later standing order wrote them, no local edit changed them).

The default run is small enough for the suite; ``-m slow`` runs many more histories.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from workctl import Workctl
from workctl.agents.sync import SyncOptions
from workctl.clock import ManualClock, iso, parse
from workctl.config import Config

USERS = (1, 2, 3, 4, 5, 6)
FIELDS = ("email", "score")
FIELD_SETS = (("email",), ("score",), ("email", "score"))


class ChangingSource:
    """A source (the sample server's bulk protocol) whose records the test changes, each change stamped."""

    def __init__(self) -> None:
        self.records: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()
        source = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                query = parse_qs(urlsplit(self.path).query)
                ids = [int(i) for i in ",".join(query.get("ids", [])).split(",") if i]
                since = parse(query["updated_since"][0]) if "updated_since" in query else None
                with source.lock:
                    known = {i: dict(source.records[i]) for i in ids if i in source.records}
                changed = [r for r in known.values() if since is None or parse(r["updated_at"]) > since]
                body: dict[str, Any] = {"data": changed, "missing": [i for i in ids if i not in known]}
                if since is not None:
                    body["unchanged"] = [i for i, r in known.items() if r not in changed]
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/crm"

    def change(self, user_id: int, values: dict[str, Any], at: datetime) -> None:
        with self.lock:
            record = self.records.setdefault(user_id, {"id": user_id, "email": f"first{user_id}@src", "score": 0})
            record.update(values, updated_at=iso(at))

    def updated_at(self, user_id: int) -> datetime:
        return parse(self.records[user_id]["updated_at"])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def stored(field: str, value: Any) -> Any:
    """The model's own idea of the column's storage: score is INTEGER (so '3' is 3), email TEXT."""
    return int(value) if field == "score" and value is not None else value


class ApplyModel(RuleBasedStateMachine):
    orders = Bundle("orders")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="workctl-model-"))
        self.db = self.dir / "w.db"
        conn = sqlite3.connect(self.db)
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, score INTEGER)")
        conn.executemany("INSERT INTO users (id) VALUES (?)", [(u,) for u in USERS])
        conn.commit()
        conn.close()
        self.source = ChangingSource()
        self.clock = ManualClock("2026-01-01T00:00:00Z")
        for user in USERS:
            self.source.change(user, {}, self.clock())
        self.clock.advance(1)
        self.wc = Workctl(self.db, config=Config(raw={"sources": {"crm": {"base_url": self.source.url}}}),
                          clock=self.clock, user="model")
        self.values: dict[tuple[int, str], Any] = {(u, f): None for u in USERS for f in FIELDS}
        # Per field: what wrote it, oldest first — ["sync", order, old, new, standing] | ["local"] | ["revert", order]
        self.history: dict[tuple[int, str], list[list[Any]]] = {key: [] for key in self.values}
        self.synced_at: dict[tuple[int, str], datetime] = {}   # last applied sync's order creation, per field

    def teardown(self) -> None:
        self.wc.close()
        self.source.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the world changes ---------------------------------------------------------------------------
    @rule(users=st.sets(st.sampled_from(USERS), min_size=1, max_size=3),
          email=st.sampled_from(["a@x", "b@x", "c@x"]), score=st.sampled_from([0, 1, 2, "1", "2", "3"]),
          fields=st.sampled_from(FIELD_SETS))
    def source_changes(self, users: set[int], email: str, score: Any, fields: tuple[str, ...]) -> None:
        values = {"email": email, "score": score}
        for user in users:
            self.source.change(user, {f: values[f] for f in fields}, self.clock())
        self.clock.advance(1)

    @rule(user=st.sampled_from(USERS), field=st.sampled_from(FIELDS))
    def local_edit(self, user: int, field: str) -> None:
        value = "local@app" if field == "email" else 9
        conn = sqlite3.connect(self.db)
        conn.execute(f"UPDATE users SET {field} = ? WHERE id = ?", (value, user))
        conn.commit()
        conn.close()
        self.values[(user, field)] = stored(field, value)
        self.history[(user, field)].append(["local"])
        self.clock.advance(1)

    @rule(seconds=st.integers(1, 3600))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)

    # -- orders ----------------------------------------------------------------------------------------
    @rule(target=orders, mode=st.sampled_from(["delta", "delta", "full"]),
          users=st.sets(st.sampled_from(USERS), min_size=1), fields=st.sampled_from(FIELD_SETS),
          batch_size=st.integers(1, 4))
    def sync(self, mode: str, users: set[int], fields: tuple[str, ...], batch_size: int) -> str:
        created = self.clock()
        payload = {"source": "crm", "user_ids": sorted(users), "fields": list(fields), "batch_size": batch_size,
                   "sync_mode": mode}
        order_id = self.wc.propose("user.data.sync", payload)["order"]["id"]
        self.clock.advance(1)
        report = self.wc.sync(SyncOptions(order_id=order_id, agent="model-agent"))
        assert report["items"]["released"] == 0, report
        items = self.wc.show(order_id)["items"]
        self._check_windows(mode, fields, items)
        before = self._provenance_count()
        self.clock.advance(1)
        diff = self.wc.approve(order_id)["diff"]
        expected = self._apply(order_id, fields, items, created)
        assert sorted((c["user_id"], c["field"], c["new"]) for c in diff["changes"]) == expected
        assert self._provenance_count() - before == len(expected)   # a provenance row per real change only
        self.clock.advance(1)
        return order_id

    def _check_windows(self, mode: str, fields: tuple[str, ...], items: list[dict[str, Any]]) -> None:
        """(b): a delta batch asks for changes since no later than its users' last applied sync."""
        for item in items:
            since = item["input"].get("since")
            assert (since is not None) <= (mode == "delta")
            if since is None:
                continue
            for user in item["input"]["user_ids"]:
                synced = [self.synced_at.get((user, f)) for f in fields]
                assert None not in synced, (user, since, "a window for a user never synced")
                assert parse(since) <= min(synced), (user, since, synced)  # type: ignore[type-var]
                if self.source.updated_at(user) > min(synced):  # type: ignore[type-var]
                    fetched = {e["user_id"] for e in item["result"]["synced_users"]}
                    assert user in fetched, (user, "changed at the source since its last sync, not fetched")

    def _apply(self, order_id: str, fields: tuple[str, ...], items: list[dict[str, Any]],
               created: datetime) -> list[tuple[int, str, Any]]:
        """The model's apply: every fetched value that differs as stored is written; returns the changes."""
        changes = []
        for item in items:
            result = item["result"]
            for entry in result["synced_users"]:
                for field, value in entry["data"].items():
                    key = (entry["user_id"], field)
                    new = stored(field, value)
                    if new != self.values[key]:
                        self.history[key].append(["sync", order_id, self.values[key], new, True])
                        self.values[key] = new
                        changes.append((entry["user_id"], field, new))
                    self.synced_at[key] = max(self.synced_at.get(key, created), created)
            for entry in result.get("unchanged_users", []):
                for field in fields:
                    key = (entry["user_id"], field)
                    self.synced_at[key] = max(self.synced_at.get(key, created), created)
        return sorted(changes)

    @rule(order_id=consumes(orders))
    def revert(self, order_id: str) -> None:
        """(c): restored exactly where the order is still the last writer; never over a later one."""
        expected = []
        for key, entries in self.history.items():
            mine = [i for i, e in enumerate(entries) if e[0] == "sync" and e[1] == order_id and e[4]]
            if not mine:
                continue
            entry = entries[mine[-1]]
            later = entries[mine[-1] + 1:]
            if any(e[0] == "sync" and e[4] for e in later) or self.values[key] != entry[3]:
                continue  # a later standing order, or an edit outside workctl: never overwritten
            expected.append((key, entry))
        result = self.wc.revert(order_id)
        restored = sorted((c["user_id"], c["field"]) for c in result["restored"])
        assert restored == sorted(key for key, _ in expected), (restored, expected)
        for skipped in result["skipped"]:
            assert skipped["reason"] == "changed_since" and skipped["changed_by"], skipped
        for key, entry in expected:
            entry[4] = False
            self.values[key] = entry[2]
            self.history[key].append(["revert", order_id])
        self.clock.advance(1)

    # -- (a) ---------------------------------------------------------------------------------------------
    @invariant()
    def users_table_equals_the_model(self) -> None:
        conn = sqlite3.connect(self.db)
        try:
            table = {(u, f): v for u, email, score in conn.execute("SELECT id, email, score FROM users")
                     for f, v in (("email", email), ("score", score))}
        finally:
            conn.close()
        assert table == self.values

    def _provenance_count(self) -> int:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute("SELECT count(*) FROM provenance").fetchone()[0]
        finally:
            conn.close()


COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], stateful_step_count=12)


@pytest.fixture(params=[False, True], ids=["provenance-in-the-lock", "provenance-staged"])
def staged(request, monkeypatch) -> None:
    """Every order small enough to write its provenance inside the lock, or every one staged ahead of it."""
    if request.param:
        import workctl.types.user_data_sync.apply as applying

        monkeypatch.setattr(applying, "STAGE_ABOVE", 0)


def test_apply_revert_and_delta_against_a_model(staged) -> None:
    run_model(max_examples=8)


@pytest.mark.slow
def test_apply_revert_and_delta_against_a_model_at_length(staged) -> None:
    run_model(max_examples=200, stateful_step_count=30)


def run_model(**overrides: Any) -> None:
    ApplyModel.TestCase.settings = settings(**{**COMMON, **overrides})  # type: ignore[arg-type]
    ApplyModel.TestCase().runTest()
