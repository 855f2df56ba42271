"""R5 — bad input, second table: the kinds tests/test_cli_errors.py does not cover (oversized input,
stale and foreign lease tokens, expired leases, idempotency reuse on submit and reject, illegal
transitions of finished work, config and secret problems, targets and stores that are missing, corrupt,
too new, not writable, or not files). Together the two tables hold more than 100 cases.

Each case asserts the documented exit code, the machine code, a message naming what was wrong (on
stderr as ``workctl: error: …`` and in the ``--json`` error document), and that the store is unchanged:

* ``snapshot``: byte-for-byte equal main file after folding the WAL in (``helpers.snapshot``: the WAL is
  checkpointed before and after, so the comparison is of the main file's bytes plus a logical dump);
* ``bytes``: the raw file bytes, with no -wal/-journal file created (files workctl must not touch:
  corrupt, too new, not writable);
* ``none``: there is no store to compare (a path that is a directory or in a missing directory), and
  nothing is created there.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

import workctl.cli.jsoninput
from helpers import NOW, build_pinned, figure, file_snapshot, make_users, newer_store, result_for_users, run, run_process

SYNC = {"source": "crm", "user_ids": list(range(1, 101)), "fields": ["email", "phone", "company"]}
FUTURE = "2099-01-01T00:00:00Z"
LIMIT = 4096  # the input limit is 64 MiB; the oversized cases lower it (monkeypatch) to keep the test small


def ok(out):
    assert out.exit_code == 0, (out.stdout, out.stderr)
    return out.json if out.stdout.strip().startswith("{") else None


def build_world(folder: Path) -> dict:
    """One store, every situation the cases need (time pinned to NOW):

    * order S (user.data.sync, 2 items): item A checked out by agent-a, released, checked out again by
      agent-a (so its first token is stale), item B queued;
    * order T (task.batch, 2 tasks): T1 submitted by agent-t with idempotency key k-sub, T2 leased by agent-t;
    * order C (task.batch, 1 task): approved and completed;
    * order R (task.batch, 1 task): rejected with idempotency key k-rej.
    """
    db = folder / "w.db"
    make_users(db, 100)
    w: dict = {}
    s_order = ok(run(db, "propose", "user.data.sync", "--payload", json.dumps(SYNC), "--json"))
    w["S"], w["B"] = s_order["order"]["id"], s_order["items"][1]["id"]
    first = ok(run(db, "checkout", w["S"], "--agent", "agent-a", "--json"))["item"]
    ok(run(db, "release", first["id"], "--agent", "agent-a", "--lease-token", first["lease_token"]))
    again = ok(run(db, "checkout", w["S"], "--agent", "agent-a", "--json"))["item"]
    assert again["id"] == first["id"]
    w.update(A=first["id"], stale=first["lease_token"], token=again["lease_token"], users=again["input"]["user_ids"])

    t_order = ok(run(db, "propose", "task.batch", "--payload", json.dumps({"tasks": ["t1", "t2"]}), "--json"))
    w["T"] = t_order["order"]["id"]
    t1 = ok(run(db, "checkout", w["T"], "--agent", "agent-t", "--json"))["item"]
    ok(run(db, "submit", t1["id"], "--agent", "agent-t", "--lease-token", t1["lease_token"], "--result", '{"ok": 1}',
           "--idempotency-key", "k-sub"))
    t2 = ok(run(db, "checkout", w["T"], "--agent", "agent-t", "--json"))["item"]
    w.update(T1=t1["id"], T2=t2["id"], T2token=t2["lease_token"])

    c_order = ok(run(db, "propose", "task.batch", "--payload", json.dumps({"tasks": ["c"]}), "--json"))
    w["C"] = c_order["order"]["id"]
    c1 = ok(run(db, "checkout", w["C"], "--agent", "agent-c", "--json"))["item"]
    ok(run(db, "submit", c1["id"], "--agent", "agent-c", "--lease-token", c1["lease_token"], "--result", '{"ok": 1}'))
    ok(run(db, "approve", w["C"], "--idempotency-key", "k-app"))
    w["C1"] = c1["id"]

    r_order = ok(run(db, "propose", "task.batch", "--payload", json.dumps({"tasks": ["r"]}), "--json"))
    w["R"] = r_order["order"]["id"]
    r1 = ok(run(db, "checkout", w["R"], "--agent", "agent-r", "--json"))["item"]
    ok(run(db, "submit", r1["id"], "--agent", "agent-r", "--lease-token", r1["lease_token"], "--result", '{"ok": 1}'))
    ok(run(db, "reject", w["R"], "--reason", "not needed", "--idempotency-key", "k-rej"))
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return w


@pytest.fixture(scope="module")
def world_template(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world-template")
    return folder / "w.db", build_pinned(folder, build_world)


@pytest.fixture()
def world(world_template, tmp_path, monkeypatch):
    """A private copy of the template store for one case (building it per case would cost 0.5 s each)."""
    template, ids = world_template
    db = tmp_path / "w.db"
    shutil.copyfile(template, db)
    os.chmod(db, 0o600)
    monkeypatch.setenv("WORKCTL_NOW", NOW)  # the template's leases were taken at NOW and stay live
    return {**ids, "db": db, "tmp": tmp_path}


def result_for(w):
    return json.dumps(result_for_users(w["users"]))


def write(w, name, content: bytes | str):
    path = w["tmp"] / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def big_payload():
    return json.dumps({"tasks": ["x" * 100] * (LIMIT // 50)})


# (name, argv builder, exit code, machine code, words in the message, options)
# options: env (dict or callable w -> dict), stdin (callable w -> str), limit (lower the input limit)
WORLD_CASES = [
    # -- oversized input (the limit: workctl.cli.jsoninput.MAX_INPUT_BYTES, 64 MiB)
    ("propose: inline payload over the limit", lambda w: ["propose", "task.batch", "--payload", big_payload()],
     5, "input_too_large", "larger than", {"limit": True}),
    ("propose: payload file over the limit", lambda w: ["propose", "task.batch", "--payload",
                                                        "@" + write(w, "big.json", big_payload())],
     5, "input_too_large", "big.json", {"limit": True}),
    ("submit: result on stdin over the limit", lambda w: ["submit", w["T2"], "--agent", "agent-t", "--result", "-"],
     5, "input_too_large", "stdin", {"limit": True, "stdin": lambda w: big_payload()}),
    # -- malformed and wrongly typed input
    ("propose: payload file not UTF-8", lambda w: ["propose", "task.batch", "--payload",
                                                   "@" + write(w, "latin1.json", b'{"tasks": ["caf\xe9"]}')],
     5, "invalid_json", "not UTF-8", {}),
    ("propose: empty payload", lambda w: ["propose", "task.batch", "--payload", ""], 5, "invalid_json",
     "invalid JSON", {}),
    ("propose: payload on stdin not JSON", lambda w: ["propose", "task.batch", "--payload", "-"], 5, "invalid_json",
     "stdin", {"stdin": lambda w: "tasks: [1, 2]"}),
    ("propose: payload is an array", lambda w: ["propose", "task.batch", "--payload", "[1, 2]"], 5,
     "payload_invalid", "is not of type 'object'", {}),
    ("propose: user id beyond 64 bits", lambda w: ["propose", "user.data.sync", "--payload",
                                                   json.dumps({**SYNC, "user_ids": [2**63]})], 5,
     "invalid_json", "user_ids.0", {}),
    ("propose: user id zero", lambda w: ["propose", "user.data.sync", "--payload",
                                         json.dumps({**SYNC, "user_ids": [0, 1]})], 5, "payload_invalid",
     "user_ids.0", {}),
    ("propose: batch_size 0", lambda w: ["propose", "user.data.sync", "--payload",
                                         json.dumps({**SYNC, "batch_size": 0})], 5, "payload_invalid",
     "batch_size", {}),
    ("propose: min_success_ratio above 1", lambda w: ["propose", "user.data.sync", "--payload",
                                                      json.dumps({**SYNC, "min_success_ratio": 2})], 5,
     "payload_invalid", "min_success_ratio", {}),
    ("propose: max_attempts as a string", lambda w: ["propose", "user.data.sync", "--payload",
                                                     json.dumps({**SYNC, "max_attempts": "3"})], 5,
     "payload_invalid", "max_attempts", {}),
    ("propose: no tasks", lambda w: ["propose", "task.batch", "--payload", '{"tasks": []}'], 5, "payload_invalid",
     "tasks", {}),
    ("propose: role field", lambda w: ["propose", "user.data.sync", "--payload",
                                       json.dumps({**SYNC, "fields": ["email", "role"]})], 5, "field_not_allowed",
     "role", {}),
    # -- stale, foreign and expired leases
    ("submit: stale lease token (same agent, checked out again)",
     lambda w: ["submit", w["A"], "--agent", "agent-a", "--lease-token", w["stale"], "--result", result_for(w)],
     6, "stale_lease_token", "does not match the current lease", {}),
    ("release: stale lease token", lambda w: ["release", w["A"], "--agent", "agent-a", "--lease-token", w["stale"]],
     6, "stale_lease_token", "checked out again", {}),
    ("heartbeat: another item's lease token",
     lambda w: ["heartbeat", w["A"], "--agent", "agent-a", "--lease-token", w["T2token"]], 6, "stale_lease_token",
     "does not match", {}),
    ("submit: token from the environment is stale",
     lambda w: ["submit", w["A"], "--agent", "agent-a", "--result", result_for(w)], 6, "stale_lease_token",
     "does not match", {"env": lambda w: {"WORKCTL_LEASE_TOKEN": w["stale"]}}),
    ("heartbeat: expired lease", lambda w: ["heartbeat", w["A"], "--agent", "agent-a", "--lease-token", w["token"]],
     6, "lease_expired",
     "expired", {"env": {"WORKCTL_NOW": FUTURE}}),
    ("release: expired lease", lambda w: ["release", w["A"], "--agent", "agent-a", "--error", "late",
                                          "--lease-token", w["token"]], 6,
     "lease_expired", "expired", {"env": {"WORKCTL_NOW": FUTURE}}),
    ("submit: expired lease, right token",
     lambda w: ["submit", w["A"], "--agent", "agent-a", "--lease-token", w["token"], "--result", result_for(w)],
     6, "lease_expired", "check out again", {"env": {"WORKCTL_NOW": FUTURE}}),
    ("submit: agent id from the environment is not the holder",
     lambda w: ["submit", w["A"], "--lease-token", w["token"], "--result", result_for(w)], 6, "lease_held_by_other",
     "agent-a",
     {"env": {"WORKCTL_AGENT_ID": "agent-z"}}),
    # -- idempotency keys reused for a different request
    ("submit: idempotency key reused with another result",
     lambda w: ["submit", w["T1"], "--agent", "agent-t", "--lease-token", w["T2token"], "--result", '{"ok": 2}',
                "--idempotency-key", "k-sub"],
     6, "idempotency_mismatch", "different submit request", {}),
    ("submit: idempotency key reused by another agent",
     lambda w: ["submit", w["T1"], "--agent", "agent-x", "--lease-token", w["T2token"], "--result", '{"ok": 1}',
                "--idempotency-key", "k-sub"],
     6, "idempotency_mismatch", "different", {}),
    ("reject: idempotency key reused with another reason",
     lambda w: ["reject", w["R"], "--reason", "changed my mind", "--idempotency-key", "k-rej"], 6,
     "idempotency_mismatch", "different reject request", {}),
    ("reject: idempotency key reused with --requeue",
     lambda w: ["reject", w["R"], "--reason", "not needed", "--requeue", "--idempotency-key", "k-rej"], 6,
     "idempotency_mismatch", "different", {}),
    # -- illegal transitions of finished work
    ("approve: a completed order", lambda w: ["approve", w["C"]], 6, "order_not_submitted", "'completed'", {}),
    ("approve: a rejected order", lambda w: ["approve", w["R"]], 6, "order_not_submitted", "'rejected'", {}),
    ("reject: a completed order", lambda w: ["reject", w["C"], "--reason", "too late"], 6, "order_not_submitted",
     "'completed'", {}),
    ("reject --requeue: a rejected order", lambda w: ["reject", w["R"], "--reason", "again", "--requeue"], 6,
     "order_not_submitted", "'rejected'", {}),
    ("retry: a completed item", lambda w: ["retry", w["C1"]], 6, "not_retryable", "completed", {}),
    ("retry: a submitted item", lambda w: ["retry", w["T1"]], 6, "not_retryable", "submitted", {}),
    ("release: a submitted item", lambda w: ["release", w["T1"], "--agent", "agent-t", "--lease-token", w["T2token"]],
     6, "not_leased",
     "submitted", {}),
    ("submit: a completed item again", lambda w: ["submit", w["C1"], "--agent", "agent-c", "--lease-token",
                                                  w["T2token"], "--result", "{}"], 6,
     "not_leased", "completed", {}),
    ("checkout: a completed order", lambda w: ["checkout", w["C"], "--agent", "a"], 3, "no_items_available",
     "no items available", {}),
    ("approve --dry-run: an order still in progress", lambda w: ["approve", w["S"], "--dry-run"], 6,
     "order_not_submitted", "in_progress", {}),
    # -- unknown ids and wrong kinds of order
    ("sync: unknown order", lambda w: ["sync", "no-such-order"], 4, "order_not_found", "no-such-order", {}),
    ("sync: a task.batch order", lambda w: ["sync", w["T"]], 5, "wrong_order_type", "task.batch", {}),
    ("run: unknown order", lambda w: ["run", "no-such-order", "--exec", "cat"], 4, "order_not_found",
     "no-such-order", {}),
    ("retry --order: unknown order", lambda w: ["retry", "--order", "no-such-order"], 4, "order_not_found",
     "no-such-order", {}),
    ("reject: unknown order", lambda w: ["reject", "no-such-order", "--reason", "x"], 4, "order_not_found",
     "no-such-order", {}),
    # -- usage errors raised by the commands themselves
    ("retry: both an item and --order", lambda w: ["retry", w["C1"], "--order", w["C"]], 2, "usage",
     "exactly one", {}),
    ("retry: neither an item nor --order", lambda w: ["retry"], 2, "usage", "exactly one", {}),
    ("run: without --exec", lambda w: ["run"], 2, "usage", "--exec", {}),
    ("sync: --source without --users", lambda w: ["sync", "--source", "crm"], 2, "usage", "--users", {}),
    ("sync: --users range backwards", lambda w: ["sync", "--source", "crm", "--users", "9-3"], 5,
     "invalid_users", "backwards", {"env": {"WORKCTL_SOURCE_CRM_URL": "http://127.0.0.1:9/crm"}}),
    ("sync: --users not numbers", lambda w: ["sync", "--source", "crm", "--users", "1,two"], 5, "invalid_users",
     "two", {"env": {"WORKCTL_SOURCE_CRM_URL": "http://127.0.0.1:9/crm"}}),
    ("sync: --users file missing", lambda w: ["sync", "--source", "crm", "--users", "@/nonexistent/ids.txt"], 5,
     "input_unreadable", "/nonexistent/ids.txt", {"env": {"WORKCTL_SOURCE_CRM_URL": "http://127.0.0.1:9/crm"}}),
    # -- config, sources and secrets
    ("propose: explicit config missing", lambda w: ["--config", str(w["tmp"] / "nope.toml"), "propose",
                                                    "task.batch", "--payload", '{"tasks": [1]}'], 5,
     "config_missing", "nope.toml", {}),
    ("checkout: WORKCTL_CONFIG names a missing file", lambda w: ["checkout", "--agent", "a"], 5, "config_missing",
     "gone.toml", {"env": lambda w: {"WORKCTL_CONFIG": str(w["tmp"] / "gone.toml")}}),
    ("status: config is not TOML", lambda w: ["--config", write(w, "bad.toml", "[lease\nttl = "), "status"], 5,
     "config_invalid", "bad.toml", {}),
    ("approve: config value of the wrong type",
     lambda w: ["--config", write(w, "typed.toml", '[lease]\nttl_seconds = "ten"\n'), "approve", w["S"]], 5,
     "config_invalid", "ttl_seconds", {}),
    ("propose: deny_fields not a list", lambda w: [
        "--config", write(w, "deny.toml", '[types."user.data.sync"]\ndeny_fields = "email"\n'), "propose",
        "user.data.sync", "--payload", json.dumps(SYNC)], 5, "config_invalid", "deny_fields", {}),
    ("sync: source not configured", lambda w: ["sync", w["S"]], 5, "source_not_configured", "WORKCTL_SOURCE_CRM_URL",
     {}),
    ("sync: source secret missing", lambda w: [
        "--config", write(w, "secret.toml", '[sources.crm]\nbase_url = "http://127.0.0.1:9/crm"\nauth = "bearer"\n'
                                            'token_env = "WORKCTL_TEST_ABSENT_TOKEN"\n'), "sync", w["S"]], 5,
     "secret_missing", "WORKCTL_TEST_ABSENT_TOKEN", {}),
    ("sources check: secret missing", lambda w: [
        "--config", write(w, "secret2.toml", '[sources.crm]\nbase_url = "http://127.0.0.1:9/crm"\nauth = "header"\n'
                                             'token_env = "WORKCTL_TEST_ABSENT_TOKEN"\n'), "sources", "check", "crm"],
     5, "secret_missing", "WORKCTL_TEST_ABSENT_TOKEN", {}),
    ("sources check: base_url not http", lambda w: [
        "--config", write(w, "scheme.toml", '[sources.crm]\nbase_url = "file:///etc/passwd"\n'), "sources", "check",
        "crm"], 5, "source_invalid", "http", {}),
    ("sources check: unknown source setting", lambda w: [
        "--config", write(w, "unknown.toml", '[sources.crm]\nbase_url = "http://127.0.0.1:9/crm"\npassword = "x"\n'),
        "sources", "check", "crm"], 5, "source_invalid", "password", {}),
    ("propose: configured target database missing", lambda w: [
        "--config", write(w, "target.toml", '[target]\ndb = "missing-app.db"\n'), "propose", "user.data.sync",
        "--payload", json.dumps(SYNC)], 5, "target_missing", "missing-app.db", {}),
    ("propose: WORKCTL_TARGET_DB missing", lambda w: ["propose", "user.data.sync", "--payload", json.dumps(SYNC)],
     5, "target_missing", "gone-app.db", {"env": lambda w: {"WORKCTL_TARGET_DB": str(w["tmp"] / "gone-app.db")}}),
    ("sync --source: WORKCTL_TARGET_DB missing", lambda w: ["sync", "--source", "crm", "--users", "all"], 5,
     "target_missing", "gone-app.db", {"env": lambda w: {"WORKCTL_TARGET_DB": str(w["tmp"] / "gone-app.db"),
                                                         "WORKCTL_SOURCE_CRM_URL": "http://127.0.0.1:9/crm"}}),
]


def check_error(out, exit_code, code, words):
    assert out.exit_code == exit_code, (out.exit_code, out.stdout, out.stderr)
    error = out.json["error"]
    assert error["code"] == code, error
    assert words in error["message"], error["message"]
    assert out.stderr.startswith("workctl: error: ") and words in out.stderr, out.stderr


@pytest.mark.parametrize("name, argv, exit_code, code, words, options", WORLD_CASES, ids=[c[0] for c in WORLD_CASES])
def test_bad_input_against_a_busy_store(world, monkeypatch, name, argv, exit_code, code, words, options):
    if options.get("limit"):
        monkeypatch.setattr(workctl.cli.jsoninput, "MAX_INPUT_BYTES", LIMIT)
    monkeypatch.delenv("WORKCTL_TEST_ABSENT_TOKEN", raising=False)
    env = options.get("env")
    env = env(world) if callable(env) else env
    stdin = options["stdin"](world) if "stdin" in options else None
    args = argv(world)
    before = file_snapshot(world["db"])
    files_before = sorted(p.name for p in world["tmp"].iterdir())
    out = run(world["db"], *args, "--json", env=env, input=stdin)
    check_error(out, exit_code, code, words)
    assert file_snapshot(world["db"]) == before
    created = set(sorted(p.name for p in world["tmp"].iterdir())) - set(files_before)
    assert not {n for n in created if not n.startswith("w.db")}, created  # no stray target/store files


def test_the_input_limit_is_64_mib_and_checked_before_parsing(tmp_path):
    assert workctl.cli.jsoninput.MAX_INPUT_BYTES == 64 * 1024 * 1024
    # one byte over the limit is refused without being parsed: it is not even valid JSON
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:
        handle.write(b"[" + b" " * (workctl.cli.jsoninput.MAX_INPUT_BYTES))
    db = tmp_path / "w.db"
    out = run_process(db, "propose", "task.batch", "--payload", f"@{big}", "--json")
    check_error(out, 5, "input_too_large", "64 MiB")
    assert not db.exists()  # refused before the store was even opened
    big.unlink()


# -- stores workctl must refuse without touching them -----------------------------------------------------
def corrupt_store(tmp_path: Path) -> Path:
    db = tmp_path / "corrupt.db"
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(4096 * 3))  # a valid-looking header, garbage after it
    return db


def files_of(db: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name)}


COMMANDS = {
    "propose": lambda: ["propose", "task.batch", "--payload", '{"tasks": [1]}'],
    "checkout": lambda: ["checkout", "--agent", "a"],
    "submit": lambda: ["submit", "some-item", "--agent", "a", "--result", "{}"],
    "approve": lambda: ["approve", "some-order"],
    "maintain": lambda: ["maintain"],
    "status": lambda: ["status"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("kind", ["corrupt", "too new"])
def test_a_store_workctl_must_not_touch_is_refused_byte_for_byte(tmp_path, kind, command):
    db = corrupt_store(tmp_path) if kind == "corrupt" else newer_store(tmp_path / "future.db")
    before = files_of(db)
    out = run(db, *COMMANDS[command](), "--json")
    if kind == "corrupt":
        check_error(out, 8, "store_corrupt", "corrupt.db")
    else:
        check_error(out, 8, "store_too_new", "newer workctl")
    assert files_of(db) == before  # the same bytes, and no -wal or -journal appeared


@pytest.fixture()
def immutable_store(tmp_path):
    """A store marked immutable (chattr +i): not writable even for root. Skips where unsupported."""
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr")
    db = tmp_path / "ro.db"
    make_users(db, 10)
    order = ok(run(db, "propose", "task.batch", "--payload", '{"tasks": [1, 2]}', "--json"))
    item = ok(run(db, "checkout", "--agent", "a", "--json"))["item"]
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for extra in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        extra.unlink(missing_ok=True)
    done = subprocess.run(["chattr", "+i", str(db)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i unsupported here: {done.stderr.decode().strip()}")
    if os.access(db, os.W_OK) and os.geteuid() != 0:
        pytest.skip("the file stayed writable")
    yield {"db": db, "order": order["order"]["id"], "item": item["id"], "token": item["lease_token"]}
    subprocess.run(["chattr", "-i", str(db)], capture_output=True)


READ_ONLY_COMMANDS = {
    "propose": lambda s: ["propose", "task.batch", "--payload", '{"tasks": [3]}'],
    "checkout": lambda s: ["checkout", "--agent", "b"],
    "heartbeat": lambda s: ["heartbeat", s["item"], "--agent", "a", "--lease-token", s["token"]],
    "submit": lambda s: ["submit", s["item"], "--agent", "a", "--lease-token", s["token"], "--result", "{}"],
    "maintain": lambda s: ["maintain"],
}


@pytest.mark.parametrize("command", list(READ_ONLY_COMMANDS))
def test_a_store_that_is_not_writable_is_exit_8(immutable_store, command):
    db = immutable_store["db"]
    before = files_of(db)
    out = run(db, *READ_ONLY_COMMANDS[command](immutable_store), "--json")
    check_error(out, 8, "store_read_only", "read-only")
    assert "ro.db" in out.json["error"]["message"]
    assert files_of(db)["ro.db"] == before["ro.db"]


@pytest.mark.parametrize("where", ["a directory", "a missing directory"])
def test_a_store_path_that_cannot_be_a_store(tmp_path, where):
    db = tmp_path / "dir.db" if where == "a directory" else tmp_path / "missing" / "w.db"
    if where == "a directory":
        db.mkdir()
    out = run(db, "status", "--json")
    check_error(out, 8, "store_unavailable" if where == "a directory" else "store_missing", str(db))
    assert sorted(p.name for p in tmp_path.iterdir()) == (["dir.db"] if where == "a directory" else [])


def test_a_users_table_missing_from_the_store(tmp_path):
    db = tmp_path / "w.db"
    assert run(db, "init").exit_code == 0
    before = file_snapshot(db)
    out = run(db, "propose", "user.data.sync", "--payload", json.dumps(SYNC), "--json")
    check_error(out, 5, "no_users_table", "users")
    assert file_snapshot(db) == before


def test_usage_errors_from_the_parser_are_one_line_and_exit_2(tmp_path):
    """Click's own parse errors, through the real console script (one process per case)."""
    db = tmp_path / "w.db"
    cases = [(["propose", "task.batch", "--payload", "{}", "--priority", "high"], "priority"),
             (["checkout", "--ttl", "0"], "--ttl"),
             (["status", "--interval", "0.01"], "--interval"),
             (["sync", "--batch-size", "5000"], "--batch-size")]
    for argv, words in cases:
        out = run_process(db, *argv, "--json")
        assert out.exit_code == 2, (argv, out.stderr)
        assert out.stderr.startswith("workctl: error: ") and words in out.stderr, out.stderr
        assert json.loads(out.stdout)["error"]["code"] == "usage"
    assert not db.exists()  # a usage error never opens (or creates) the store


def test_case_count():
    from test_cli_errors import CASES

    corrupt_or_new = len(COMMANDS) * 2
    total = len(CASES) + len(WORLD_CASES) + corrupt_or_new + len(READ_ONLY_COMMANDS) + 2 + 1 + 1 + 4
    assert len(WORLD_CASES) >= 60
    figure("R5", table_cases=len(CASES) + len(WORLD_CASES), store_cases=corrupt_or_new + len(READ_ONLY_COMMANDS) + 3,
           parser_usage_cases=4, oversized_real_limit=1, total=total)
