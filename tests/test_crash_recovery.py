"""R2 and R3 — crashes: real processes killed with SIGKILL (kill -9) at random points and at named points.

R2 is the crashed approve, R3 the crashed agents.

(a, R2) ``approve`` of a large order (20,000 users in CI, 50,000 under ``-m slow``) killed after a random
    delay, and at every named crash point (WORKCTL_TEST_CRASH_AT, see ``orders._crash_point``), with
    the users table in the store itself and in a separate target file. After each kill the users table
    is either untouched or fully updated, and a second approve finishes the order exactly once: one
    marker row, one 'applied' event, one provenance row per change, and a hand edit made after the
    first apply survives the second approve.
(b, R3) An agent killed while it holds a lease: the item is re-issued after the TTL (time moved with
    WORKCTL_NOW, never slept), each attempt counted, failed at max_attempts and dead-lettered by
    maintain; the dead agent's late submit with its old lease token is refused.
(c, R3) ``workctl sync`` killed mid-batch (the sample server answers slowly, so batches are in flight):
    after a restart nothing is lost and nothing is applied twice.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest


from workctl import Workctl
from workctl.clock import ManualClock, after, parse
from workctl.config import Config
from workctl.errors import Conflict, IllegalTransition
from workctl.store.target import APPLIED_MARKER as MARKER_TABLE
from workctl.sources.sample_server import Faults, SampleServer, sample_user
from workctl.types import OrderType, get_type
from helpers import (NOW, chain_problems, child_env, count, events, figure, go, kill9, lease_violations, make_users,
                     per_item_counts, python_cmd, result_for_item, start_ready_processes, table_exists,
                     users_rows, workctl_cmd)

FIELDS = ["email", "phone", "company"]
SEED = int(os.environ.get("WORKCTL_CRASH_SEED", "0")) or random.SystemRandom().randrange(1, 2**31)

# An approver in its own process: set up (open the store, load the type), say ready, wait for go,
# approve. The kill is timed from 'go', so the random delay falls on the approve itself.
APPROVER = """
import json, sys
from workctl import Workctl
from workctl.config import Config
from workctl.types import get_type
db, order_id, target = sys.argv[1:4]
wc = Workctl(db, config=Config(target_db=target or None))
wc.session
get_type("user.data.sync")
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(wc.approve(order_id)["order"]), flush=True)
"""


# -- (a) approve -----------------------------------------------------------------------------------
class ApproveWorld:
    """A template store with one large user.data.sync order, every item submitted, waiting for approve;
    each trial works on a fresh copy of the files."""

    def __init__(self, root: Path, users: int, *, separate: bool):
        self.root, self.users, self.separate = root, users, separate
        root.mkdir(parents=True, exist_ok=True)
        self.template_store = root / "template-w.db"
        self.template_app = root / "template-app.db" if separate else None
        target = self.template_app or self.template_store
        make_users(target, users, filled=True)
        config = Config(target_db=str(self.template_app) if separate else None)
        with Workctl(self.template_store, config=config, clock=ManualClock(NOW)) as wc:
            order = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, users + 1)),
                                                  "fields": FIELDS, "batch_size": 1000})
            self.order_id = order["order"]["id"]
            for _ in order["items"]:
                item = wc.checkout(self.order_id, agent="loader")["item"]
                wc.submit(item["id"], result_for_item(item["input"]), agent="loader", lease_token=item["lease_token"])
        for path in (self.template_store, self.template_app):
            if path is not None:
                conn = sqlite3.connect(path)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.close()
        self.before = users_rows(target, "email, phone, company")
        self.after = {uid: tuple(f"{f}-{uid}-new" for f in FIELDS) for uid in self.before}
        self.trials = 0

    def fresh(self) -> tuple[Path, Path]:
        """Copies of the template for one trial: (store, target)."""
        self.trials += 1
        folder = self.root / f"trial-{self.trials}"
        folder.mkdir()
        store = folder / "w.db"
        shutil.copyfile(self.template_store, store)
        os.chmod(store, 0o600)
        if self.template_app is None:
            return store, store
        app = folder / "app.db"
        shutil.copyfile(self.template_app, app)
        return store, app

    def config(self, target: Path) -> Config:
        return Config(target_db=str(target) if self.separate else None)

    def state(self, store: Path, target: Path) -> tuple[str, str]:
        """(order state in the store, 'untouched' | 'applied') — anything in between fails the trial."""
        users = users_rows(target, "email, phone, company")
        if users == self.before:
            applied = "untouched"
        elif users == self.after:
            applied = "applied"
        else:
            changed = sum(1 for uid, row in users.items() if row != self.before[uid])
            raise AssertionError(f"users table half applied: {changed} of {self.users} rows changed")
        markers = count(target, f"SELECT count(*) FROM {MARKER_TABLE} WHERE order_id = ?", (self.order_id,)) \
            if table_exists(target, MARKER_TABLE) else 0
        assert markers == (1 if applied == "applied" else 0), (applied, markers)
        order_state = count(store, "SELECT state = 'completed' FROM orders WHERE id = ?", (self.order_id,))
        state = "completed" if order_state else "submitted"
        if state == "completed":
            assert applied == "applied"
        if not self.separate:  # one transaction: the store and the users table move together
            assert (state, applied) in (("submitted", "untouched"), ("completed", "applied")), (state, applied)
        return state, applied

    def finish_and_check(self, store: Path, target: Path) -> str:
        """After a kill: integrity, all-or-nothing, then a second approve that completes exactly once."""
        for path in {store, target}:
            conn = sqlite3.connect(path)
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            conn.close()
        state, applied = self.state(store, target)
        outcome = f"{state}/{applied}"
        if applied == "applied":
            # a hand edit after the real apply: a second apply would overwrite it
            conn = sqlite3.connect(target)
            conn.execute("UPDATE users SET email = 'edited-by-hand' WHERE id = 1")
            conn.commit()
            conn.close()
        with Workctl(store, config=self.config(target), clock=ManualClock(NOW)) as wc:
            if state == "completed":
                with pytest.raises(IllegalTransition) as info:
                    wc.approve(self.order_id)
                assert info.value.code == "order_not_submitted"
            else:
                assert wc.approve(self.order_id)["order"]["state"] == "completed"
            with pytest.raises(IllegalTransition):
                wc.approve(self.order_id)
            diff = wc.show(self.order_id)["order"]["diff"]
        users = users_rows(target, "email, phone, company")
        expected = dict(self.after)
        if applied == "applied":
            expected[1] = ("edited-by-hand", *expected[1][1:])
        assert users == expected
        assert diff["stats"]["updated"] == self.users and len(diff["changes"]) == self.users * len(FIELDS)
        assert count(target, f"SELECT count(*) FROM {MARKER_TABLE}") == 1
        assert [e["event"] for e in events(store, "order_id = ? AND entity = 'order' AND event IN "
                                                 "('approved', 'applied', 'completed')", (self.order_id,))] == \
            ["approved", "applied", "completed"]
        if type(get_type("user.data.sync")).record_applied is not OrderType.record_applied:
            rows = count(store, "SELECT count(*) FROM provenance WHERE order_id = ?", (self.order_id,))
            distinct = count(store, "SELECT count(*) FROM (SELECT DISTINCT user_id, field FROM provenance "
                                    "WHERE order_id = ?)", (self.order_id,))
            assert rows == distinct == len(diff["changes"])
        assert chain_problems(store) == []
        return outcome

    def approve_process(self, store: Path, target: Path, *, cli: bool, crash_at: str | None = None
                        ) -> subprocess.Popen[str]:
        extra = {"WORKCTL_NOW": NOW}
        if crash_at:
            extra["WORKCTL_TEST_CRASH_AT"] = crash_at
        if self.separate:
            extra["WORKCTL_TARGET_DB"] = str(target)
        env = child_env(**extra)
        if cli:
            return subprocess.Popen(workctl_cmd(store, "approve", self.order_id, "--json"),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=store.parent,
                                    env=env, start_new_session=True)
        [proc] = start_ready_processes([python_cmd(APPROVER, str(store), self.order_id,
                                                   str(target) if self.separate else "")],
                                       cwd=store.parent, env=env)
        go([proc])
        return proc

    def calibrate(self, *, cli: bool) -> float:
        """Seconds an uninterrupted approve takes (from start for the CLI, from 'go' for the library)."""
        store, target = self.fresh()
        started = time.monotonic()
        proc = self.approve_process(store, target, cli=cli)
        if not cli:
            started = time.monotonic()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        seconds = time.monotonic() - started
        assert self.finish_and_check(store, target) == "completed/applied"
        return seconds


def random_kill_trials(world: ApproveWorld, trials: int) -> Counter[str]:
    rng = random.Random(SEED)
    windows = {cli: world.calibrate(cli=cli) for cli in (False, True)}
    outcomes: Counter[str] = Counter()
    for n in range(trials):
        cli = n % 2 == 1
        delay = rng.uniform(0, windows[cli] * 1.1)
        store, target = world.fresh()
        proc = world.approve_process(store, target, cli=cli)
        time.sleep(delay)  # the randomisation of the kill point, not a wait for time to pass
        kill9(proc)
        try:
            outcome = world.finish_and_check(store, target)
        except AssertionError as exc:
            raise AssertionError(f"trial {n} (seed {SEED}, {'cli' if cli else 'library'}, "
                                 f"kill after {delay:.3f} s): {exc}") from exc
        outcomes[outcome] += 1
    return outcomes


# Where each named crash point leaves things: (order state in the store, users table).
CRASH_POINTS_SAME = {"after_apply": ("submitted", "untouched"), "before_store_commit": ("submitted", "untouched"),
                     "after_store_commit": ("completed", "applied")}
CRASH_POINTS_SEPARATE = {"after_apply": ("submitted", "untouched"),
                         "after_target_commit": ("submitted", "applied"),
                         "before_store_commit": ("submitted", "applied"),
                         "after_store_commit": ("completed", "applied")}


@pytest.mark.parametrize("separate", [False, True], ids=["same-file", "separate-target"])
def test_approve_killed_at_every_named_crash_point(tmp_path, separate):
    world = ApproveWorld(tmp_path, 2_000, separate=separate)
    points = CRASH_POINTS_SEPARATE if separate else CRASH_POINTS_SAME
    for point, (state, applied) in points.items():
        store, target = world.fresh()
        proc = world.approve_process(store, target, cli=True, crash_at=point)
        proc.communicate(timeout=120)
        assert proc.returncode == -9, f"{point}: the crash hook did not fire"
        assert world.state(store, target) == (state, applied), point
        assert world.finish_and_check(store, target).startswith(state), point


def approve_kill_figures(name: str, world: ApproveWorld, trials: int, outcomes: Counter[str]) -> None:
    figure(name, users=world.users, separate_target=world.separate, trials=trials, seed=SEED,
           outcomes=dict(outcomes), failures=0)


def test_approve_killed_at_random_points(tmp_path):
    """CI size: the store holds the users table (one transaction); the separate target is covered by the
    named crash points here and by the random trials under -m slow."""
    world = ApproveWorld(tmp_path, 20_000, separate=False)
    trials = 6
    outcomes = random_kill_trials(world, trials)
    assert sum(outcomes.values()) == trials
    approve_kill_figures("R2-ci", world, trials, outcomes)


@pytest.mark.slow
@pytest.mark.parametrize("separate", [False, True], ids=["same-file", "separate-target"])
def test_approve_killed_at_random_points_full(tmp_path, separate):
    world = ApproveWorld(tmp_path, 50_000, separate=separate)
    trials = 30
    outcomes = random_kill_trials(world, trials)
    # the random window covered both sides of the commit
    assert any(o.endswith("untouched") for o in outcomes) and any(o.endswith("applied") for o in outcomes), outcomes
    approve_kill_figures("R2-full", world, trials, outcomes)


# -- (b) an agent killed while it holds a lease ------------------------------------------------------
def read_line(path: Path, timeout: float = 60) -> str:
    """One line from a FIFO, waiting for its writer (a child process) up to ``timeout`` seconds."""
    fd = os.open(path, os.O_RDWR)  # holding a write end too: no EOF before the child writes, no blocking open
    try:
        data = b""
        deadline = time.monotonic() + timeout
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0, "the agent never reported its lease"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data += os.read(fd, 4096)
        return data.decode().strip()
    finally:
        os.close(fd)


def agent_run_process(db: Path, fifo: Path, agent: str, now: str) -> subprocess.Popen[str]:
    """A real ``workctl run`` agent whose command reports its lease and then works 'forever'."""
    command = f'printf "%s %s\\n" "$WORKCTL_ITEM_ID" "$WORKCTL_LEASE_TOKEN" > {fifo}; exec sleep 600'
    return subprocess.Popen(workctl_cmd(db, "run", "--exec", command, "--agent", agent, "--ttl", "60", "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=db.parent,
                            env=child_env(WORKCTL_NOW=now), start_new_session=True)


CHECKOUT_AND_HANG = """
import json, sys
from workctl import Workctl
from workctl.config import Config
wc = Workctl(sys.argv[1], config=Config())
wc.session
print("ready", flush=True)
sys.stdin.readline()
item = wc.checkout(agent=sys.argv[2], ttl=60)["item"]
print(item["id"], item["lease_token"], flush=True)
sys.stdin.readline()  # 'working' until killed
"""


def test_agent_killed_holding_a_lease_is_reissued_then_dead_lettered(tmp_path):
    db = tmp_path / "w.db"
    start = parse(NOW)
    with Workctl(db, config=Config(), clock=ManualClock(start)) as wc:
        order = wc.propose("task.batch", {"tasks": ["only one"], "max_attempts": 3})
    item_id = order["items"][0]["id"]
    fifo = tmp_path / "lease.fifo"
    os.mkfifo(fifo)
    held: list[tuple[str, str, str]] = []  # (agent, token, leased at)

    def at(seconds: float) -> str:
        return after(start, seconds)

    # attempt 1: a real `workctl run` agent, killed (with its command) while it works on the item
    proc = agent_run_process(db, fifo, "dead-1", at(0))
    got_item, token = read_line(fifo).split()
    kill9(proc)
    assert got_item == item_id
    held.append(("dead-1", token, at(0)))

    # within the TTL nobody else gets it; 61 s later (the TTL is 60 s) the next agent does
    early = subprocess.run(workctl_cmd(db, "checkout", "--agent", "other", "--json"), capture_output=True,
                           text=True, env=child_env(WORKCTL_NOW=at(59)))
    assert early.returncode == 3, early.stderr

    # attempt 2: an agent using the library, killed while it holds the lease
    [proc] = start_ready_processes([python_cmd(CHECKOUT_AND_HANG, str(db), "dead-2")], cwd=tmp_path,
                                   env=child_env(WORKCTL_NOW=at(61)))
    go([proc])
    got_item, token = proc.stdout.readline().split()
    kill9(proc)
    assert got_item == item_id
    held.append(("dead-2", token, at(61)))

    # attempt 3: the first agent's id again (restarted after the crash), killed again
    proc = agent_run_process(db, fifo, "dead-1", at(122))
    got_item, token = read_line(fifo).split()
    kill9(proc)
    assert got_item == item_id
    held.append(("dead-1", token, at(122)))

    with Workctl(db, config=Config(), clock=ManualClock(parse(at(130)))) as wc:
        row = wc.status(order["order"]["id"])["items"][0]
        assert (row["state"], row["attempts"], row["leased_by"]) == ("leased", 3, "dead-1")
        # the dead agent's late writes with the first lease's token: refused (same agent id, new lease)
        for call in (lambda: wc.submit(item_id, {"late": True}, agent="dead-1", lease_token=held[0][1]),
                     lambda: wc.heartbeat(item_id, agent="dead-1", lease_token=held[0][1]),
                     lambda: wc.release(item_id, agent="dead-1", lease_token=held[0][1])):
            with pytest.raises(Conflict) as info:
                call()
            assert info.value.code == "stale_lease_token"
        with pytest.raises(Conflict) as info:
            wc.submit(item_id, {"late": True}, agent="dead-2", lease_token=held[1][1])
        assert info.value.code == "lease_held_by_other"

    # past the third lease's TTL: maintain fails the item (3 of 3 attempts used) and dead-letters it
    with Workctl(db, config=Config(), clock=ManualClock(parse(at(183)))) as wc:
        done = wc.maintain()
        assert (done["leases_reclaimed"], done["items_failed"], done["items_dead_lettered"]) == (0, 1, 1)
        shown = wc.show(order["order"]["id"])
    assert shown["order"]["state"] == "dead_lettered"
    assert (shown["items"][0]["state"], shown["items"][0]["attempts"]) == ("dead_lettered", 3)
    assert shown["items"][0]["error"]["code"] == "max_attempts_exceeded"
    assert shown["items"][0]["error"]["last_agent"] == "dead-1"

    # every dead agent's late submit, with its own old token, through the real CLI: refused, nothing written
    before = events(db)
    for agent, token, _ in held:
        late = subprocess.run(workctl_cmd(db, "submit", item_id, "--agent", agent, "--lease-token", token,
                                          "--result", '{"late": true}', "--json"),
                              capture_output=True, text=True, env=child_env(WORKCTL_NOW=at(200)))
        assert late.returncode == 6, late.stderr
        assert json.loads(late.stdout)["error"]["code"] == "not_leased"
        assert "dead_lettered" in late.stderr
    assert events(db) == before

    trail = events(db, "item_id = ?", (item_id,))
    assert [(e["event"], e["actor_id"]) for e in trail if e["event"] in ("leased", "lease_expired", "failed",
                                                                          "dead_lettered")] == [
        ("leased", "dead-1"), ("lease_expired", "workctl"), ("leased", "dead-2"), ("lease_expired", "workctl"),
        ("leased", "dead-1"), ("failed", "workctl"), ("dead_lettered", "workctl")]
    assert [json.loads(e["payload"])["attempt"] for e in trail if e["event"] == "leased"] == [1, 2, 3]
    assert [e["created_at"] for e in trail if e["event"] == "leased"] == [h[2] for h in held]
    assert lease_violations(events(db)) == []
    assert chain_problems(db) == []


# -- (c) sync killed mid-batch ------------------------------------------------------------------------
def sync_kill_trial(tmp_path: Path, server: SampleServer, rng: random.Random, n: int, *, users: int = 240,
                    batch: int = 10) -> dict:
    folder = tmp_path / f"sync-{n}"
    folder.mkdir()
    db = folder / "w.db"
    make_users(db, users, filled=True)
    with Workctl(db, config=Config(), clock=ManualClock(NOW)) as wc:
        order_id = wc.propose("user.data.sync", {"source": "crm", "user_ids": list(range(1, users + 1)),
                                                 "fields": FIELDS, "batch_size": batch})["order"]["id"]
    batches = users // batch
    before = users_rows(db, "email, phone, company")
    env = child_env(WORKCTL_NOW=NOW, WORKCTL_SOURCE_CRM_URL=f"{server.url}/crm")
    seen = len(server.log)
    kill_after = rng.randrange(1, batches - 2)  # batches whose request has reached the server
    proc = subprocess.Popen(workctl_cmd(db, "sync", order_id, "--workers", "3", "--ttl", "60", "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while len(server.log) - seen < kill_after and proc.poll() is None:  # wait for a state, not for time
        assert time.monotonic() < deadline, "sync never reached the server"
        time.sleep(0.005)
    time.sleep(rng.uniform(0, server.faults.latency))  # land anywhere inside a request or a submit
    kill9(proc)

    # what the kill left: some batches submitted, some leased by the dead process, the rest queued
    with Workctl(db, config=Config(), clock=ManualClock(NOW)) as wc:
        states = Counter(it["state"] for it in wc.status(order_id)["items"])
    assert set(states) <= {"queued", "leased", "submitted"}, states
    assert users_rows(db, "email, phone, company") == before  # nothing is applied before approve

    # restart once the dead run's leases have expired: it finishes the rest and approves
    restart = subprocess.run(workctl_cmd(db, "sync", order_id, "--approve", "--json"), capture_output=True,
                             text=True, cwd=folder, timeout=120,
                             env={**env, "WORKCTL_NOW": after(parse(NOW), 61)})
    assert restart.returncode == 0, restart.stderr
    report = json.loads(restart.stdout)
    assert report["items"]["submitted"] == batches - states["submitted"]
    assert report["failed_users"] == []

    with Workctl(db, config=Config(), clock=ManualClock(NOW)) as wc:
        shown = wc.show(order_id)
    assert shown["order"]["state"] == "completed"
    trail = events(db)
    counts = per_item_counts(trail)
    assert all(c["submitted"] == 1 and c["completed"] == 1 for c in counts.values())  # each batch once
    assert sum(c["lease_expired"] for c in counts.values()) == states["leased"]  # the dead run's leases
    assert lease_violations(trail) == [] and chain_problems(db) == []
    # every user exactly once across the results, and in the users table with the source's values
    synced = Counter(u["user_id"] for it in shown["items"] for u in it["result"]["synced_users"])
    assert synced == Counter(range(1, users + 1))
    expected = {uid: tuple(sample_user("crm", uid)[f] for f in FIELDS) for uid in range(1, users + 1)}
    assert users_rows(db, "email, phone, company") == expected
    assert len([e for e in trail if e["event"] == "applied"]) == 1
    assert shown["order"]["diff"]["stats"]["updated"] == users
    return dict(states)


def sync_kill_trials(tmp_path: Path, trials: int) -> list[dict]:
    rng = random.Random(SEED)
    left = []
    with SampleServer(faults=Faults(latency=0.05)) as server:
        for n in range(trials):
            try:
                left.append(sync_kill_trial(tmp_path, server, rng, n))
            except AssertionError as exc:
                raise AssertionError(f"sync kill trial {n} (seed {SEED}): {exc}") from exc
    return left


def test_sync_killed_mid_batch_loses_nothing_and_applies_once(tmp_path):
    left = sync_kill_trials(tmp_path, 3)
    assert any(states.get("leased") for states in left), f"no kill caught a batch in flight: {left}"
    figure("R3-sync-ci", trials=3, seed=SEED, left_by_kill=left, failures=0)


@pytest.mark.slow
def test_sync_killed_mid_batch_full(tmp_path):
    left = sync_kill_trials(tmp_path, 15)
    assert sum(1 for states in left if states.get("leased")) >= 5, left
    figure("R3-sync-full", trials=15, seed=SEED, left_by_kill=left, failures=0)
