"""Unattended runs you can trust, through the CLI as real processes: honest exit codes for sync and run,
outages that spend no attempts, resume instead of duplicates, overlapping runs, cancel, guarded
auto-approve, filters that refuse unknown values, a stale same-agent submit, strict config."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

from workctl.sources.sample_server import Faults, SampleServer
from helpers import child_env, count, file_snapshot, free_port, make_users, query, run, run_process, workctl_cmd

NOW = "2026-03-01T12:00:00Z"


def at(minutes: int) -> str:
    return f"2026-03-01T{12 + minutes // 60:02d}:{minutes % 60:02d}:00Z"


def source_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    """crm at ``url``, with fast client retries (so a dead source costs milliseconds, not seconds)."""
    config = tmp_path / "workctl.toml"
    config.write_text(f'[sources.crm]\nbase_url = "{url}/crm"\nmax_attempts = 2\nbackoff_base = 0.01\n'
                      f'backoff_cap = 0.02\ntimeout = 2\n{extra}')
    return config


# -- 4 and 5: the cron line against a dead source --------------------------------------------------------------
def test_the_cron_line_against_a_dead_source_keeps_one_order_spends_no_attempts_and_exits_7(tmp_path):
    db = tmp_path / "w.db"
    make_users(db, 120, filled=True)
    port = free_port()  # nothing listens here: connection refused
    config = source_config(tmp_path, f"http://127.0.0.1:{port}")
    cron = ["--config", str(config), "sync", "--source", "crm", "--users", "all", "--fields", "email",
            "--approve", "--json"]
    for n in range(5):
        # Minutes apart (pinned clock): each run's backoff is over, so each run tries the source again.
        out = run_process(db, *cron, env={**child_env(), "WORKCTL_NOW": at(n)})
        assert out.exit_code == 7, out.stderr
        document = json.loads(out.stdout)
        assert document["error"]["code"] == "source_unavailable", document["error"]
        assert "crm" in document["error"]["message"] and "crm" in out.stderr
        assert document["resumed"] is (n > 0)
        # The breaker: the first batch tripped it; the others were given back without a request.
        assert document["items"]["released_unavailable"] == 3 and document["items"]["released"] == 0
    assert count(db, "SELECT count(*) FROM orders") == 1
    assert query(db, "SELECT state, attempts FROM items ORDER BY seq") == [("queued", 0)] * 3
    assert query(db, "SELECT state FROM orders") == [("in_progress",)]
    # Within the backoff, a run that takes nothing still says the source is down.
    again = run_process(db, *cron, env={**child_env(), "WORKCTL_NOW": at(4)})
    assert again.exit_code == 7 and json.loads(again.stdout)["error"]["code"] == "source_unavailable"
    # The users of the released batches are in the ledger, with their class.
    failures = run(db, "failures", "--class", "connection", "--json")
    assert failures.exit_code == 0 and {f["user_id"] for f in failures.json["failures"]} >= {1, 50, 51}

    with SampleServer(port=port):  # the source is back
        out = run_process(db, *cron, env={**child_env(), "WORKCTL_NOW": at(10)})
    assert out.exit_code == 0, out.stderr
    document = json.loads(out.stdout)
    assert document["resumed"] is True and document["approved"] and "error" not in document
    assert query(db, "SELECT state FROM orders") == [("completed",)]
    assert query(db, "SELECT DISTINCT attempts FROM items") == [(1,)]  # one attempt each: the one that worked
    assert count(db, "SELECT count(*) FROM users WHERE email LIKE '%@example.com'") == 120


@pytest.mark.parametrize("faults, error_class", [
    (Faults(fail_rate=1.0), "server_error"),                      # 5xx for every request, after retries
    (Faults(slow_rate=1.0, slow_latency=1.0), "timeout"),          # no answer within the 0.3 s timeout
], ids=["5xx", "timeout"])
def test_a_source_answering_5xx_or_timing_out_for_everyone_is_an_outage_too(tmp_path, faults, error_class):
    """Not only a refused connection: a source that answers 5xx, or nothing in time, for every user of the
    batch is unavailable. The run exits 7 naming it, the batches are given back without spending an
    attempt, and the users are in the ledger with their class."""
    db = tmp_path / "w.db"
    make_users(db, 60, filled=True)
    with SampleServer(faults=faults) as server:
        config = source_config(tmp_path, server.url).read_text().replace("timeout = 2", "timeout = 0.3")
        (tmp_path / "workctl.toml").write_text(config)
        out = run_process(db, "--config", str(tmp_path / "workctl.toml"), "sync", "--source", "crm", "--users",
                          "all", "--fields", "email", "--batch-size", "20", "--json",
                          env={**child_env(), "WORKCTL_NOW": NOW})
    assert out.exit_code == 7, out.stderr
    document = json.loads(out.stdout)
    assert document["error"]["code"] == "source_unavailable" and "crm" in document["error"]["message"]
    assert document["items"]["released_unavailable"] == 3 and document["items"]["released"] == 0
    assert query(db, "SELECT state, attempts FROM items ORDER BY seq") == [("queued", 0)] * 3
    failures = run(db, "failures", "--class", error_class, "--json")
    assert failures.exit_code == 0 and {f["user_id"] for f in failures.json["failures"]} >= set(range(1, 21))


def test_only_failures_the_batch_can_be_blamed_for_spend_attempts(tmp_path):
    """A source that answers, but not for these users (404s), is the batch's problem: the attempt counts."""
    db = tmp_path / "w.db"
    make_users(db, 4)
    with SampleServer(faults=Faults(missing=frozenset({1, 2, 3, 4}))) as server:
        config = source_config(tmp_path, server.url)
        out = run_process(db, "--config", str(config), "sync", "--source", "crm", "--users", "1-4", "--fields",
                          "email", "--json", env={**child_env(), "WORKCTL_NOW": NOW})
    assert out.exit_code == 7 and json.loads(out.stdout)["error"]["code"] == "sync_incomplete"
    assert query(db, "SELECT attempts FROM items") == [(1,)]


def test_sync_resumes_the_open_order_of_the_same_scope_and_new_forces_another(tmp_path):
    db = tmp_path / "w.db"
    make_users(db, 10)
    with SampleServer() as server:
        config = source_config(tmp_path, server.url)
        base = ["--config", str(config), "sync", "--source", "crm", "--users", "1-10", "--fields", "email"]
        first = run(db, *base, "--json")  # submitted, not approved: the order stays open
        assert first.exit_code == 0, first.stderr
        order_id = first.json["orders"][0]
        assert query(db, "SELECT state FROM orders") == [("submitted",)]
        again = run(db, *base)
        assert again.exit_code == 0 and f"resumed order {order_id}" in again.stdout
        assert count(db, "SELECT count(*) FROM orders") == 1
        other_fields = run(db, "--config", str(config), "sync", "--source", "crm", "--users", "1-10", "--fields",
                           "email,phone", "--json")
        forced = run(db, *base, "--new", "--json")
        assert other_fields.json["resumed"] is False and forced.json["resumed"] is False
    assert count(db, "SELECT count(*) FROM orders") == 3
    assert len({r[0] for r in query(db, "SELECT scope_key FROM orders")}) == 2


def test_two_overlapping_syncs_on_the_same_scope_fetch_each_user_once(tmp_path):
    db = tmp_path / "w.db"
    make_users(db, 300)
    with SampleServer(faults=Faults(latency=0.05)) as server:
        config = source_config(tmp_path, server.url)
        argv = workctl_cmd(db, "--config", str(config), "sync", "--source", "crm", "--users", "all", "--fields",
                           "email", "--workers", "2", "--json")
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                  env=child_env()) for _ in range(2)]
        outs = [proc.communicate(timeout=120) for proc in procs]
        fetched = [int(u) for entry in server.log.entries if "ids=" in entry["path"]
                   for u in entry["path"].split("ids=")[1].split("&")[0].replace("%2C", ",").split(",")]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    assert count(db, "SELECT count(*) FROM orders") == 1
    assert sorted(fetched) == list(range(1, 301))  # every user exactly once, across both runs
    reports = [json.loads(out) for out, _ in outs]
    assert sum(r["items"]["submitted"] for r in reports) == 6


# -- 3: honest exits and filters ---------------------------------------------------------------------------
def test_run_where_every_command_fails_exits_7_and_so_does_every_later_run_until_someone_acts(tmp_path):
    db = tmp_path / "w.db"
    out = run(db, "propose", "task.batch", "--payload", json.dumps({"tasks": [1, 2], "max_attempts": 1}), "--json")
    order_id = out.json["order"]["id"]
    failed = run_process(db, "run", "--exec", "exit 3", "--json")
    assert failed.exit_code == 7 and json.loads(failed.stdout)["error"]["code"] == "run_incomplete"
    assert query(db, "SELECT state FROM orders") == [("failed",)]
    later = run_process(db, "run", "--exec", "cat", "--json")  # nothing to take, but the order is failed
    assert later.exit_code == 7
    error = json.loads(later.stdout)["error"]
    assert error["code"] == "order_failed" and f"workctl retry --order {order_id}" in error["message"]
    assert f"workctl cancel {order_id}" in later.stderr
    assert run(db, "cancel", order_id).exit_code == 0
    assert run_process(db, "run", "--exec", "cat").exit_code == 0  # an operator acted


@pytest.mark.parametrize("argv, option, listed", [
    (["orders", "--state", "submited"], "--state", "submitted"),
    (["orders", "--type", "user.data.snyc"], "--type", "user.data.sync"),
    (["failures", "--class", "timout"], "--class", "timeout"),
    (["failures", "--source", "erp"], "--source", "crm"),
])
def test_an_unknown_filter_value_is_exit_2_listing_the_valid_ones(tmp_path, argv, option, listed):
    db = tmp_path / "w.db"
    assert run(db, "init").exit_code == 0
    out = run_process(db, *argv, "--json")  # as a script sees it
    assert out.exit_code == 2, out.stderr
    error = out.json["error"]
    assert error["code"] == "invalid_choice" and option in error["message"] and listed in error["message"]


# -- 2: a stale process with the same agent id ---------------------------------------------------------------
def test_a_stale_same_agent_submit_without_the_current_token_changes_nothing(tmp_path):
    db = tmp_path / "w.db"
    make_users(db, 5)
    run(db, "propose", "user.data.sync", "--payload", json.dumps({"source": "crm", "user_ids": [1, 2, 3, 4, 5],
                                                                 "fields": ["email"]}))
    env = {**child_env(), "WORKCTL_AGENT_ID": "cron@host", "WORKCTL_NOW": NOW}
    old = json.loads(run_process(db, "checkout", "--json", env=env).stdout)["item"]
    # The lease expires; another cron process with the same default agent id takes the item again.
    new = json.loads(run_process(db, "checkout", "--json", env={**env, "WORKCTL_NOW": at(11)}).stdout)["item"]
    assert new["id"] == old["id"] and new["lease_token"] != old["lease_token"]
    result = json.dumps({"success": True, "synced_users": [{"user_id": u, "data": {"email": "stale@x"},
                                                           "verified": True} for u in range(1, 6)]})
    before = file_snapshot(db)
    late = {**env, "WORKCTL_NOW": at(12)}
    no_token = run_process(db, "submit", old["id"], "--result", result, "--json", env=late)
    assert no_token.exit_code == 2 and json.loads(no_token.stdout)["error"]["code"] == "lease_token_required"
    assert "WORKCTL_LEASE_TOKEN" in no_token.stderr
    stale = run_process(db, "submit", old["id"], "--result", result, "--json",
                        env={**late, "WORKCTL_LEASE_TOKEN": old["lease_token"]})
    assert stale.exit_code == 6 and json.loads(stale.stdout)["error"]["code"] == "stale_lease_token"
    assert file_snapshot(db) == before
    current = run_process(db, "submit", old["id"], "--result", result, "--json",
                          env={**late, "WORKCTL_LEASE_TOKEN": new["lease_token"]})
    assert current.exit_code == 0, current.stderr


# -- 6: cancel -------------------------------------------------------------------------------------------
def test_late_heartbeats_and_submits_on_a_cancelled_order_exit_6(tmp_path):
    db = tmp_path / "w.db"
    order_id = run(db, "propose", "task.batch", "--payload", '{"tasks": [1, 2]}', "--json").json["order"]["id"]
    item = json.loads(run_process(db, "checkout", "--json").stdout)["item"]
    cancelled = run_process(db, "cancel", order_id, "--reason", "proposed by mistake", "--json")
    assert cancelled.exit_code == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["items"] == {"cancelled": 2, "leased": 1}
    before = file_snapshot(db)
    env = {**child_env(), "WORKCTL_LEASE_TOKEN": item["lease_token"]}
    for argv in (["heartbeat", item["id"]], ["submit", item["id"], "--result", "{}"], ["release", item["id"]]):
        out = run_process(db, *argv, "--json", env=env)
        assert out.exit_code == 6 and json.loads(out.stdout)["error"]["code"] == "order_cancelled", argv
    assert run_process(db, "checkout", "--json").exit_code == 3
    assert file_snapshot(db) == before
    again = run(db, "cancel", order_id, "--json")
    assert again.exit_code == 6 and again.json["error"]["code"] == "not_cancellable"
    trail = [(e["event"], e["to"]) for e in run(db, "log", order_id, "--json").json["events"]]
    assert trail[-1] == ("cancelled", "cancelled") and trail.count(("cancelled", "cancelled")) == 3


def test_cancel_during_a_running_sync(tmp_path):
    db = tmp_path / "w.db"
    make_users(db, 200)
    with SampleServer(faults=Faults(latency=0.4)) as server:
        config = source_config(tmp_path, server.url)
        order_id = run(db, "--config", str(config), "propose", "user.data.sync", "--payload",
                       json.dumps({"source": "crm", "user_ids": list(range(1, 201)), "fields": ["email"],
                                   "batch_size": 20}), "--json").json["order"]["id"]
        proc = subprocess.Popen(workctl_cmd(db, "--config", str(config), "sync", order_id, "--workers", "1",
                                            "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=tmp_path, env=child_env())
        deadline = time.monotonic() + 30
        while count(db, "SELECT count(*) FROM items WHERE state = 'submitted'") < 1:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        assert run(db, "cancel", order_id, "--reason", "wrong users").exit_code == 0
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err  # the operator's cancel is not the run's failure
    report = json.loads(out)
    assert report["items"]["submitted"] < 10 and report["items"]["cancelled"] <= 1
    assert query(db, "SELECT state FROM orders") == [("cancelled",)]
    assert query(db, "SELECT DISTINCT state FROM items") == [("cancelled",)]
    cancel_event = query(db, "SELECT max(id) FROM events WHERE event = 'cancelled' AND entity = 'order'")[0][0]
    assert query(db, "SELECT count(*) FROM events WHERE id > ? AND event IN ('leased', 'submitted')",
                 (cancel_event,)) == [(0,)]  # nothing was taken or submitted after the cancel


def _in_a_terminal(argv: list[str], answer: str, cwd: Path) -> tuple[int, str]:
    """Run argv with stdin and stdout on a pseudo-terminal, answer the first question, return (exit, screen)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec workctl on the terminal
        os.chdir(cwd)
        os.execve(argv[0], argv, child_env())
    screen = b""
    answered = False
    while True:
        ready, _, _ = select.select([fd], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
        if not answered and b"[y/N]" in screen:
            os.write(fd, answer.encode() + b"\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), screen.decode(errors="replace")


def test_cancel_asks_on_a_terminal_and_a_no_changes_nothing(tmp_path):
    db = tmp_path / "w.db"
    order_id = run(db, "propose", "task.batch", "--payload", '{"tasks": [1, 2, 3]}', "--json").json["order"]["id"]
    before = file_snapshot(db)
    code, screen = _in_a_terminal(workctl_cmd(db, "cancel", order_id), "n", tmp_path)
    assert code == 130 and "3 queued" in screen and "[y/N]" in screen and "nothing was done" in screen
    assert file_snapshot(db) == before
    code, screen = _in_a_terminal(workctl_cmd(db, "cancel", order_id), "y", tmp_path)
    assert code == 0 and "is cancelled" in screen
    assert query(db, "SELECT state FROM orders") == [("cancelled",)]


def test_a_final_reject_asks_on_a_terminal_and_yes_skips_the_question(tmp_path):
    db = tmp_path / "w.db"
    order_id = run(db, "propose", "task.batch", "--payload", '{"tasks": [1]}', "--json").json["order"]["id"]
    assert run(db, "run", "--exec", "cat").exit_code == 0
    code, screen = _in_a_terminal(workctl_cmd(db, "reject", order_id, "--reason", "no"), "", tmp_path)
    assert code == 130 and "for good" in screen
    code, screen = _in_a_terminal(workctl_cmd(db, "reject", order_id, "--reason", "no", "--yes"), "", tmp_path)
    assert code == 0 and "[y/N]" not in screen
    assert query(db, "SELECT state FROM orders") == [("rejected",)]


# -- 8: guarded auto-approve ------------------------------------------------------------------------------
def test_a_rule_holds_an_auto_approve_and_the_order_stays_submitted(tmp_path):
    db = tmp_path / "w.db"
    make_users(db, 10, filled=True)
    with SampleServer() as server:
        config = source_config(tmp_path, server.url, "[approve]\nmax_changed_users = 3\n")
        cron = ["--config", str(config), "sync", "--source", "crm", "--users", "1-10", "--fields", "email",
                "--approve", "--json"]
        out = run_process(db, *cron)
        assert out.exit_code == 6, out.stderr
        error = json.loads(out.stdout)["error"]
        assert error["code"] == "approval_held" and "max_changed_users" in error["message"]
        assert "10 users" in error["message"] and "= 3" in error["message"]
        assert query(db, "SELECT state FROM orders") == [("submitted",)]
        assert count(db, "SELECT count(*) FROM users WHERE email LIKE '%@example.com'") == 0
        # The next cron run resumes the held order and holds it again: still exit 6, still not applied.
        again = run_process(db, *cron)
        assert again.exit_code == 6 and json.loads(again.stdout)["resumed"] is True
        assert count(db, "SELECT count(*) FROM events WHERE event = 'approval_held'") == 2
        # A person approves it.
        order_id = json.loads(out.stdout)["orders"][0]
        assert run(db, "approve", order_id).exit_code == 0


def test_never_auto_fields_holds_and_run_approve_passes_a_clean_order(tmp_path):
    db = tmp_path / "w.db"
    make_users(db, 4, filled=True)
    with SampleServer() as server:
        config = source_config(tmp_path, server.url, '[approve]\nnever_auto_fields = ["phone"]\n'
                                                     "max_changed_ratio = 1.0\n")
        held = run(db, "--config", str(config), "sync", "--source", "crm", "--users", "1-4", "--fields", "email,phone",
                   "--approve", "--json")
        assert held.exit_code == 6 and held.json["held"][0]["rule"] == "never_auto_fields"
        assert held.json["held"][0]["actual"] == ["phone"]
        passed = run(db, "--config", str(config), "sync", "--source", "crm", "--users", "1-4", "--fields", "email",
                     "--approve", "--json")
        assert passed.exit_code == 0 and passed.json["approved"]
    order = run(db, "propose", "task.batch", "--payload", '{"tasks": [1]}', "--json").json["order"]["id"]
    ran = run(db, "--config", str(config), "run", order, "--exec", "cat", "--approve", "--json")
    assert ran.exit_code == 0 and ran.json["approved"] == [order]


# -- config, maintain --dry-run --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("[lease]\nttl_secnds = 5\n", "did you mean 'ttl_seconds'"),
    ("[aprove]\nmax_changed_users = 5\n", "did you mean 'approve'"),
    ("[approve]\nmax_changed_ratio = 2\n", "max_changed_ratio"),
    ("[approve]\nmax_changed_user = 2\n", "did you mean 'max_changed_users'"),
])
def test_an_unknown_or_bad_config_key_is_refused(tmp_path, text, words):
    db = tmp_path / "w.db"
    assert run(db, "init").exit_code == 0
    (tmp_path / "workctl.toml").write_text(text)
    out = run(db, "--config", str(tmp_path / "workctl.toml"), "status", "--json")
    assert out.exit_code == 5 and out.json["error"]["code"] == "config_invalid"
    assert words in out.json["error"]["message"]


@pytest.mark.parametrize("text, words", [
    ('[types."user.data.sync"]\nlookbak_seconds = 60\n', "did you mean 'lookback_seconds'"),
    ('[types."task.batch"]\nbatch_size = 5\n', "this type reads no settings"),
])
def test_a_typo_in_an_order_types_config_table_is_refused_before_anything_is_written(tmp_path, text, words):
    db = tmp_path / "w.db"
    assert run(db, "init").exit_code == 0
    (tmp_path / "workctl.toml").write_text(text)
    before = file_snapshot(db)
    kind = "user.data.sync" if "user.data" in text else "task.batch"
    payload = '{"source": "crm", "user_ids": [1], "fields": ["email"]}' if kind == "user.data.sync" else '{"tasks": [1]}'
    out = run(db, "--config", str(tmp_path / "workctl.toml"), "propose", kind, "--payload", payload, "--json")
    assert out.exit_code == 5 and out.json["error"]["code"] == "config_invalid", out.stderr
    assert words in out.json["error"]["message"]
    assert file_snapshot(db) == before


def test_a_typo_in_a_source_table_is_named_not_reported_as_unconfigured(tmp_path):
    (tmp_path / "workctl.toml").write_text('[sources.crm]\nurl = "http://127.0.0.1:9"\n')
    out = run(tmp_path / "w.db", "--config", str(tmp_path / "workctl.toml"), "sources", "list", "--json")
    assert "unknown settings url" in out.stdout and "base_url" in out.stdout


def test_maintain_dry_run_reports_exactly_what_it_would_do_and_changes_nothing(tmp_path):
    db = tmp_path / "w.db"
    run(db, "propose", "task.batch", "--payload", '{"tasks": [1, 2]}')
    run(db, "checkout", "--json", env={"WORKCTL_NOW": NOW})
    before = file_snapshot(db)
    dry = run_process(db, "maintain", "--dry-run", "--json", env={**child_env(), "WORKCTL_NOW": at(11)})
    assert dry.exit_code == 0 and dry.json["dry_run"] is True and dry.json["leases_reclaimed"] == 1, dry.stderr
    assert file_snapshot(db) == before
    real = run_process(db, "maintain", "--json", env={**child_env(), "WORKCTL_NOW": at(11)})
    assert real.json["leases_reclaimed"] == 1


def _synced_order(tmp_path: Path, *extra: str) -> tuple[Path, str]:
    """A store whose order synced users 1-3's email from the sample source (``extra``: e.g. --approve)."""
    db = tmp_path / "w.db"
    make_users(db, 3, filled=True)
    with SampleServer() as server:
        config = source_config(tmp_path, server.url)
        out = run(db, "--config", str(config), "sync", "--source", "crm", "--users", "1-3", "--fields", "email",
                  *extra, "--json")
    assert out.exit_code == 0, out.stderr
    return db, out.json["orders"][0]


def test_approve_shows_the_diff_and_asks_on_a_terminal(tmp_path):
    db, order_id = _synced_order(tmp_path)
    before = file_snapshot(db)
    code, screen = _in_a_terminal(workctl_cmd(db, "approve", order_id), "n", tmp_path)
    assert code == 130 and "Would apply" in screen and "user1@example.com" in screen and "[y/N]" in screen
    assert file_snapshot(db) == before
    code, screen = _in_a_terminal(workctl_cmd(db, "approve", order_id, "-y"), "", tmp_path)
    assert code == 0 and "[y/N]" not in screen and "is completed" in screen


def test_revert_asks_on_a_terminal_and_a_no_changes_nothing(tmp_path):
    db, order_id = _synced_order(tmp_path, "--approve")
    before = file_snapshot(db)
    code, screen = _in_a_terminal(workctl_cmd(db, "revert", order_id), "n", tmp_path)
    assert code == 130 and "would restore 3 of 3 recorded changes" in screen and "[y/N]" in screen
    assert "nothing was done" in screen
    assert file_snapshot(db) == before
    code, screen = _in_a_terminal(workctl_cmd(db, "revert", order_id), "y", tmp_path)
    assert code == 0 and "restored 3 of 3" in screen
    assert count(db, "SELECT count(*) FROM users WHERE email LIKE '%@example.com'") == 0
