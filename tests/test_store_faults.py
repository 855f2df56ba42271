"""Store faults, each with its own exit-8 code and a message that says what to do: a missing store (only
creating commands create one), a store replaced or deleted under a running process, a full disk, a
read-only directory; and the store's mode wherever its path leads."""

from __future__ import annotations

import json
import os
import resource
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from workctl import Workctl
from workctl.config import Config
from workctl.errors import StoreError
from helpers import child_env, count, file_snapshot, free_port, run, workctl_cmd

ITEM = "00000000-0000-4000-8000-000000000000"
# Every command that opens the store but must not create it, with arguments that would otherwise be valid.
NON_CREATING = {
    "status": ["status"],
    "status --json": ["status", "--json"],
    "orders": ["orders"],
    "show": ["show", ITEM],
    "log": ["log", ITEM],
    "checkout": ["checkout"],
    "heartbeat": ["heartbeat", ITEM, "--lease-token", "t"],
    "release": ["release", ITEM, "--lease-token", "t"],
    "submit": ["submit", ITEM, "--lease-token", "t", "--result", "{}"],
    "approve": ["approve", ITEM, "--yes"],
    "reject": ["reject", ITEM, "--reason", "no", "--yes"],
    "cancel": ["cancel", ITEM, "--yes"],
    "retry": ["retry", ITEM],
    "maintain": ["maintain"],
    "failures": ["failures"],
    "diff": ["diff", ITEM],
    "revert": ["revert", ITEM, "--yes"],
    "why": ["why", "1"],
    "sync": ["sync"],
    "run": ["run", "--exec", "cat"],
    "tokens list": ["tokens", "list"],
    "tokens create": ["tokens", "create", "--scope", "agent"],
    "tokens revoke": ["tokens", "revoke", "ci"],
}


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("command", list(NON_CREATING))
def test_a_command_that_does_not_create_work_refuses_a_missing_store(tmp_path, command):
    db = tmp_path / "typo.db"
    out = run(db, *NON_CREATING[command], "--json")
    assert out.exit_code == 8, out.stdout + out.stderr
    error = json.loads(out.stdout)["error"]
    assert error["code"] == "store_missing"
    assert str(db) in error["message"] and "init" in error["message"]
    assert listing(tmp_path) == []  # no store, no -wal, no -shm


def test_store_missing_through_real_processes_with_a_relative_path(tmp_path):
    """Cron's working directory: a relative --db is named by its absolute path, and nothing is created
    (the fast path's checkout and status --json, and Typer's sync)."""
    env = child_env()
    for argv in (["checkout", "--json"], ["status", "--json"], ["sync", "--json"]):
        proc = subprocess.run(workctl_cmd("rel.db", *argv), capture_output=True, text=True, cwd=tmp_path, env=env,
                              timeout=60)
        assert proc.returncode == 8, proc.stderr
        assert json.loads(proc.stdout)["error"]["code"] == "store_missing"
        assert str(tmp_path / "rel.db") in proc.stderr
    assert listing(tmp_path) == []


@pytest.mark.parametrize("argv", [["serve", "--port", "{port}"], ["export"]], ids=["serve", "export"])
def test_serve_and_export_refuse_a_missing_store_without_starting(tmp_path, argv):
    """No --json on these two: the refusal is the message on stderr, as a real process (a serve that did
    not refuse would start listening and never return: the timeout would say so)."""
    argv = [a.format(port=free_port()) for a in argv]
    proc = subprocess.run(workctl_cmd("typo.db", *argv), capture_output=True, text=True, cwd=tmp_path,
                          env=child_env(), timeout=60)
    assert proc.returncode == 8, proc.stdout + proc.stderr
    assert f"no workctl store at {tmp_path / 'typo.db'}" in proc.stderr and "init" in proc.stderr
    assert proc.stdout == "" and listing(tmp_path) == []


def test_init_creates_the_store_once_and_says_where(tmp_path):
    proc = subprocess.run(workctl_cmd("w.db", "init", "--json"), capture_output=True, text=True, cwd=tmp_path,
                          env=child_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    store = json.loads(proc.stdout)["store"]
    assert store["path"] == str(tmp_path / "w.db") and store["created"] is True
    assert stat.S_IMODE((tmp_path / "w.db").stat().st_mode) == 0o600
    again = run(tmp_path / "w.db", "init", "--json")
    assert again.exit_code == 0 and again.json["store"]["created"] is False
    assert run(tmp_path / "w.db", "status", "--json").exit_code == 0


def test_creating_commands_create_the_store(tmp_path):
    out = run(tmp_path / "p.db", "propose", "task.batch", "--payload", '{"tasks": [1]}', "--json")
    assert out.exit_code == 0 and (tmp_path / "p.db").exists()


def test_the_library_creates_only_when_asked(tmp_path):
    db = tmp_path / "lib.db"
    with Workctl(db, config=Config()) as wc:
        with pytest.raises(StoreError) as info:
            wc.status()
        assert info.value.code == "store_missing"
        assert not db.exists()
        wc.propose("task.batch", {"tasks": [1]})  # a creating operation
        assert wc.status()["orders"]["queued"] == 1
    with Workctl(tmp_path / "other.db", config=Config(), create=True) as wc:
        assert wc.status()["orders"]["queued"] == 0


def test_a_store_created_through_a_dangling_symlink_is_private(tmp_path):
    (tmp_path / "real").mkdir()
    link = tmp_path / "link.db"
    link.symlink_to(tmp_path / "real" / "store.db")  # dangling: the target does not exist yet
    old = os.umask(0o022)
    try:
        assert run(link, "init").exit_code == 0
        assert run(link, "propose", "task.batch", "--payload", '{"tasks": [1, 2]}').exit_code == 0
        conn = sqlite3.connect(str(link))  # keep -wal and -shm in place while looking at them
        conn.execute("SELECT count(*) FROM orders").fetchone()
        files = sorted((tmp_path / "real").iterdir())
        assert [p.name for p in files][:1] == ["store.db"]
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
        conn.close()
    finally:
        os.umask(old)
    assert link.is_symlink()


def _store_with_an_order(db: Path) -> str:
    out = run(db, "propose", "task.batch", "--payload", '{"tasks": [1]}', "--json")
    assert out.exit_code == 0, out.stderr
    return out.json["order"]["id"]


def test_a_replaced_store_refuses_the_next_write(tmp_path):
    db = tmp_path / "w.db"
    _store_with_an_order(db)
    with Workctl(db, config=Config()) as wc:
        wc.status()  # open
        shutil.copy(db, tmp_path / "restored.db")
        os.replace(tmp_path / "restored.db", db)  # a restore from backup while this process runs
        before = file_snapshot(db)
        with pytest.raises(StoreError) as info:
            wc.checkout(agent="a")
        assert info.value.code == "store_replaced" and str(db) in info.value.message
    assert file_snapshot(db) == before


def test_a_store_deleted_under_a_running_agent_is_exit_8(tmp_path):
    """`run --exec` holds the store open; its command deletes the store (an operator's cleanup); the
    submit that follows refuses instead of writing into the deleted inode."""
    db = tmp_path / "w.db"
    _store_with_an_order(db)
    command = f"rm -f {db}; cat"
    proc = subprocess.run(workctl_cmd(db, "run", "--exec", command, "--json"), capture_output=True, text=True,
                          cwd=tmp_path, env=child_env(), timeout=60)
    assert proc.returncode == 8, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["error"]["code"] == "store_replaced"
    assert "deleted" in proc.stderr
    assert not db.exists()


def _limited(limit: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes get EFBIG

    return preexec


def test_a_full_disk_is_store_full_and_the_store_is_intact(tmp_path):
    db = tmp_path / "w.db"
    _store_with_an_order(db)
    before = file_snapshot(db)
    size = db.stat().st_size
    payload = tmp_path / "big.json"  # ~1 MB of item rows: far more than the limit leaves room for
    payload.write_text(json.dumps({"tasks": [{"n": i, "pad": "x" * 300} for i in range(3000)]}))
    proc = subprocess.run(workctl_cmd(db, "propose", "task.batch", "--payload", f"@{payload}", "--json"),
                          capture_output=True, text=True, cwd=tmp_path, env=child_env(), timeout=60,
                          preexec_fn=_limited(size + 64 * 1024))
    assert proc.returncode == 8, proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert error["code"] == "store_full"
    assert "no space left" in error["message"] and "Free some space" in error["message"]
    assert file_snapshot(db) == before
    assert count(db, "SELECT count(*) FROM orders") == 1
    assert run(db, "status", "--json").exit_code == 0


@pytest.fixture
def read_only_dir(tmp_path):
    """Make a directory read-only: chmod for a normal user; for root (who ignores modes) an immutable
    directory (chattr +i), where files can be written but none created. Skips where neither works."""
    made: list[Path] = []

    def apply(directory: Path) -> None:
        if os.geteuid() != 0:
            directory.chmod(0o555)
        else:
            if shutil.which("chattr") is None:
                pytest.skip("root needs chattr for a read-only directory")
            done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True)
            if done.returncode != 0:
                pytest.skip(f"chattr +i unsupported here: {done.stderr.decode().strip()}")
        made.append(directory)

    yield apply
    for directory in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(directory)], capture_output=True)
        directory.chmod(0o755)


def test_a_read_only_directory_is_store_read_only_and_the_store_is_intact(tmp_path, read_only_dir):
    home = tmp_path / "ro"
    home.mkdir()
    db = home / "w.db"
    _store_with_an_order(db)
    file_snapshot(db)  # folds the WAL in and removes -wal and -shm: SQLite must create them again
    before = db.read_bytes()
    assert sorted(p.name for p in home.iterdir()) == ["w.db"]
    read_only_dir(home)
    for argv in (["propose", "task.batch", "--payload", '{"tasks": [2]}'], ["checkout"]):
        proc = subprocess.run(workctl_cmd(db, *argv, "--json"), capture_output=True, text=True, cwd=tmp_path,
                              env=child_env(), timeout=60)
        assert proc.returncode == 8, proc.stderr
        error = json.loads(proc.stdout)["error"]
        assert error["code"] == "store_read_only", error
        assert str(db) in error["message"] and "writable" in error["message"]
    assert sorted(p.name for p in home.iterdir()) == ["w.db"]
    assert db.read_bytes() == before


def test_sync_creates_the_store_when_it_proposes(tmp_path):
    """sync --source is a creating command: with the users in a separate target, a missing store is made."""
    from helpers import make_users
    from workctl.sources.sample_server import SampleServer

    target = tmp_path / "app.db"
    make_users(target, 3)
    with SampleServer() as server:
        config = tmp_path / "workctl.toml"
        config.write_text(f'[target]\ndb = "{target}"\n[sources.crm]\nbase_url = "{server.url}/crm"\n')
        out = run(tmp_path / "new.db", "--config", str(config), "sync", "--source", "crm", "--users", "all",
                  "--fields", "email", "--approve", "--json")
    assert out.exit_code == 0, out.stderr
    assert stat.S_IMODE((tmp_path / "new.db").stat().st_mode) == 0o600
    assert count(target, "SELECT count(*) FROM users WHERE email LIKE '%@example.com'") == 3


def test_a_store_symlink_pointed_at_another_file_is_replaced(tmp_path):
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    _store_with_an_order(first)
    _store_with_an_order(second)
    link = tmp_path / "store.db"
    link.symlink_to(first)
    with Workctl(link, config=Config()) as wc:
        wc.status()
        link.unlink()
        link.symlink_to(second)
        with pytest.raises(StoreError) as info:
            wc.checkout(agent="a")
    assert info.value.code == "store_replaced"
    assert count(first, "SELECT count(*) FROM items WHERE state = 'leased'") == 0
