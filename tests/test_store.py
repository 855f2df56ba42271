"""Opening the store: file mode, pragmas, migrations, and refusing files workctl must not touch."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from workctl import Workctl
from workctl.config import Config
from workctl.errors import ExitCode, StoreError
from workctl.store.sqlite_migrations import MIGRATION_NAMES, MIGRATION_SET
from workctl.store.sqlite import BUSY_TIMEOUT_MS, connect


def close_cleanly(path: Path) -> None:
    """Fold the WAL into the main file, so the main file's bytes are the whole database."""
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def sidecars(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "-"))


def test_new_store_file_is_private(db_path):
    conn = connect(db_path, create=True)
    conn.execute("CREATE TABLE t (x)")  # make sure the -wal and -shm exist too
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    for name in sidecars(db_path):
        assert stat.S_IMODE((db_path.parent / name).stat().st_mode) == 0o600, name
    conn.close()


def test_new_store_is_private_even_with_a_permissive_umask(db_path):
    old = os.umask(0)
    try:
        connect(db_path, create=True).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


def test_pragmas(db_path):
    conn = connect(db_path, create=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 30_000
    assert BUSY_TIMEOUT_MS >= 30_000
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.isolation_level is None  # autocommit: transactions are explicit BEGIN IMMEDIATE
    conn.close()


def test_the_facade_connection_has_the_same_settings(db_path, make_wc):
    conn = make_wc().session.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 30_000
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_foreign_keys_are_enforced(db_path):
    conn = connect(db_path, create=True)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO items (id, order_id, seq, type, state, max_attempts, updated_at) "
                     "VALUES ('i', 'no-such-order', 0, 't', 'queued', 1, 'x')")
    conn.close()


def test_migrations_are_recorded(db_path):
    conn = connect(db_path, create=True)
    conn.row_factory = None
    recorded = conn.execute("SELECT migration_set, name FROM _sqlite_migrations ORDER BY id").fetchall()
    assert recorded == [(MIGRATION_SET, name) for name in MIGRATION_NAMES]
    assert MIGRATION_NAMES[0] == "m001_initial"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"orders", "items", "events", "idempotency_keys", "_sqlite_migrations"} <= tables
    conn.close()


def test_reopening_is_a_no_op(db_path):
    connect(db_path, create=True).close()
    close_cleanly(db_path)
    before = db_path.read_bytes()
    for _ in range(3):
        conn = connect(db_path, create=True)
        assert conn.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0] == len(MIGRATION_NAMES)
        conn.close()
    close_cleanly(db_path)
    assert db_path.read_bytes() == before


def test_a_store_in_a_missing_directory(tmp_path):
    with pytest.raises(StoreError) as info:
        connect(tmp_path / "nope" / "w.db", create=True)
    assert (info.value.code, info.value.exit_code) == ("store_missing", 8)
    assert not (tmp_path / "nope").exists()


def test_a_directory_is_not_a_store(tmp_path):
    with pytest.raises(StoreError) as info:
        connect(tmp_path, create=True)
    assert info.value.exit_code == 8


@pytest.mark.parametrize("size", [100, 4096, 65536])
def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(db_path, make_wc, size):
    garbage = os.urandom(size)
    assert not garbage.startswith(b"SQLite format 3\x00")
    db_path.write_bytes(garbage)
    with pytest.raises(StoreError) as info:
        connect(db_path, create=True)
    assert (info.value.code, info.value.exit_code) == ("store_corrupt", ExitCode.STORE)
    assert info.value.exit_code == 8
    with pytest.raises(StoreError) as info:  # the same through the library facade
        make_wc().status()
    assert info.value.exit_code == 8
    assert db_path.read_bytes() == garbage
    assert sidecars(db_path) == []


def test_a_text_file_is_refused(db_path):
    db_path.write_text("orders:\n  - not a database\n" * 20)
    before = db_path.read_bytes()
    with pytest.raises(StoreError) as info:
        connect(db_path, create=True)
    assert info.value.exit_code == 8
    assert db_path.read_bytes() == before


def _add_future_migration(path: Path) -> None:
    conn = sqlite3.connect(str(path))
    conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES (?, ?, ?)",
                 (MIGRATION_SET, "m999_future", "2030-01-01 00:00:00+00:00"))
    conn.commit()
    conn.close()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_database_from_a_newer_workctl_is_refused_untouched(db_path, make_wc, journal):
    connect(db_path, create=True).close()
    _add_future_migration(db_path)
    conn = sqlite3.connect(str(db_path))
    conn.execute(f"PRAGMA journal_mode = {journal}")  # 'delete': the header must not be switched to WAL
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before, files_before = db_path.read_bytes(), sidecars(db_path)

    with pytest.raises(StoreError) as info:
        connect(db_path, create=True)
    assert (info.value.code, info.value.exit_code) == ("store_too_new", 8)
    assert "m999_future" in info.value.message and "upgrade workctl" in info.value.message
    with pytest.raises(StoreError) as info:
        make_wc().propose("task.batch", {"tasks": [1]})
    assert info.value.code == "store_too_new"

    close_cleanly(db_path)
    assert db_path.read_bytes() == before
    assert sidecars(db_path) == files_before
    conn = sqlite3.connect(str(db_path))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == journal
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
    conn.close()


def test_another_migration_set_in_the_same_file_is_not_ours_to_judge(db_path):
    connect(db_path, create=True).close()
    conn = sqlite3.connect(str(db_path))
    conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('app', 'm042_x', 'now')")
    conn.commit()
    conn.close()
    connect(db_path, create=True).close()


def test_an_existing_application_database_is_adopted(db_path, users_db):
    """A plain SQLite file with other tables (say, the app's users) gets the workctl schema added."""
    users_db(db_path, 3)
    conn = connect(db_path, create=True)
    assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 3
    assert conn.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0] == len(MIGRATION_NAMES)
    conn.close()


def _read_only_checks(db_path: Path, make_wc) -> None:
    before = db_path.read_bytes()
    wc = make_wc()
    with pytest.raises(StoreError) as info:
        wc.propose("task.batch", {"tasks": [1]})
    assert (info.value.code, info.value.exit_code) == ("store_read_only", 8)
    assert "read-only" in info.value.message
    wc.close()
    assert db_path.read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_store_is_exit_8(db_path, make_wc):
    connect(db_path, create=True).close()
    close_cleanly(db_path)
    db_path.chmod(0o400)
    try:
        _read_only_checks(db_path, make_wc)
    finally:
        db_path.chmod(0o600)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_new_file_is_exit_8(db_path, make_wc):
    db_path.touch(mode=0o400)
    with pytest.raises(StoreError) as info:
        make_wc().status()
    assert info.value.exit_code == 8
    assert db_path.read_bytes() == b""


@pytest.fixture
def immutable(db_path):
    """Mark the store immutable (chattr +i): read-only even for root. Skips where that is unsupported."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr (the permission test covers non-root)")

    def apply() -> None:
        done = subprocess.run(["chattr", "+i", str(db_path)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"chattr +i unsupported here: {done.stderr.decode().strip()}")

    yield apply
    subprocess.run(["chattr", "-i", str(db_path)], capture_output=True)


def test_a_read_only_store_is_exit_8_even_for_root(db_path, make_wc, immutable):
    connect(db_path, create=True).close()
    close_cleanly(db_path)
    immutable()
    _read_only_checks(db_path, make_wc)


def test_locked_past_the_busy_timeout_is_exit_8(db_path):
    connect(db_path, create=True).close()
    blocker = sqlite3.connect(str(db_path), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        wc = Workctl(db_path, config=Config())
        wc.session.conn.execute("PRAGMA busy_timeout = 20")
        with pytest.raises(StoreError) as info:
            wc.propose("task.batch", {"tasks": [1]})
        assert (info.value.code, info.value.exit_code) == ("store_locked", 8)
        wc.close()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
