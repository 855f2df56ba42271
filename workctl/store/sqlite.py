"""Opening the SQLite store: create (0600), refuse what we must not touch, migrate, configure.

Every connection is in autocommit mode (``isolation_level=None``): transactions are explicit and
write transactions always start with ``BEGIN IMMEDIATE`` (see ``write_tx``), because a deferred
``BEGIN`` that later upgrades to a write fails at once with 'database is locked' and ignores the
busy timeout.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import StoreError
from .sqlite_migrations import MIGRATION_NAMES, MIGRATION_SET

BUSY_TIMEOUT_MS = 30_000

# Threads of one process that write to the same file queue on a Python lock before BEGIN IMMEDIATE:
# SQLite's busy handler polls with sleeps of 1-100 ms, which wastes most of a contended lock's time;
# a lock hands over at once. Other processes still meet SQLite's own locking.
_WRITE_LOCKS: dict[str, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


class Connection(sqlite3.Connection):
    write_lock: threading.Lock | None = None


def _write_lock(path: Path) -> threading.Lock:
    key = os.path.realpath(path)
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(key, threading.Lock())
DEFAULT_DB = "workctl.db"


def default_db_path() -> str:
    return os.environ.get("WORKCTL_DB") or DEFAULT_DB


def translate(exc: sqlite3.Error, path: str | os.PathLike[str]) -> StoreError:
    """A sqlite3 error as a StoreError whose message says what happened to which file."""
    text = str(exc)
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        return StoreError(
            f"database {path} is locked: another process held the write lock for more than "
            f"{BUSY_TIMEOUT_MS // 1000} s; retry the command",
            code="database_locked",
        )
    if "readonly" in lowered or "read-only" in lowered:
        return StoreError(f"database {path} is read-only: {text}", code="database_read_only")
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return StoreError(f"{path} is not a usable workctl database: {text}", code="database_corrupt")
    if "unable to open" in lowered:
        return StoreError(f"cannot open database {path}: {text}", code="database_unavailable")
    return StoreError(f"database {path}: {text}", code="store_error")


def _create_private(path: Path) -> None:
    """Create an empty database file readable by its owner only (SQLite gives -wal/-shm the same mode)."""
    if not path.parent.exists():
        raise StoreError(f"cannot create database {path}: directory {path.parent} does not exist",
                         code="database_unavailable")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return  # another process won the race to create it; fine
    except OSError as exc:
        raise StoreError(f"cannot create database {path}: {exc.strerror}", code="database_unavailable") from exc
    os.close(fd)


def connect(path: str | os.PathLike[str], *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the store; raise StoreError for anything we must refuse."""
    db_path = Path(path)
    if not db_path.exists():
        _create_private(db_path)
    elif db_path.is_dir():
        raise StoreError(f"database path {db_path} is a directory", code="database_unavailable")
    try:
        conn = sqlite3.connect(str(db_path), timeout=busy_timeout_ms / 1000, isolation_level=None,
                               check_same_thread=False, factory=Connection)
        conn.write_lock = _write_lock(db_path)
    except sqlite3.Error as exc:
        raise translate(exc, db_path) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        pending = _check_schema(conn, db_path)
        # Only now, once we know the file is ours, may we write to it (WAL changes the header).
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            _enable_wal(conn, busy_timeout_ms)
        conn.execute("PRAGMA foreign_keys = ON")
        # WAL + NORMAL survives any process crash (kill -9); approve raises it to FULL for its commit.
        conn.execute("PRAGMA synchronous = NORMAL")
        if pending:
            _migrate(conn)
    except StoreError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise translate(exc, db_path) from exc
    return conn


def _enable_wal(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Switch a new file to WAL, waiting out other processes doing the same.

    The switch takes a shared lock and then needs an exclusive one; when another process opening the same
    new file holds its own shared lock and wants to escalate too, SQLite answers SQLITE_BUSY at once
    (deadlock avoidance) without calling the busy handler. So retry, within the busy timeout.
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _check_schema(conn: sqlite3.Connection, path: Path) -> bool:
    """Read-only look at the file: refuse non-databases and newer schemas; return True if migrations are pending."""
    try:
        has_table = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlite_migrations'"
        ).fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a SQLite database (or is corrupt): {exc}; refusing to touch it",
                         code="database_corrupt") from exc
    if not has_table:
        return True
    applied = {row[0] for row in conn.execute(
        "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", (MIGRATION_SET,))}
    unknown = applied - set(MIGRATION_NAMES)
    if unknown:
        raise StoreError(
            f"{path} was created by a newer workctl (unknown migrations: {', '.join(sorted(unknown))}); "
            "upgrade workctl to use it. The file was not modified.",
            code="database_too_new",
        )
    return len(applied) < len(MIGRATION_NAMES)


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply pending migrations under the write lock, so concurrent first opens cannot race."""
    from sqlite_utils import Database

    from .sqlite_migrations import build

    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-check under the lock: another process may have migrated while we waited.
        migrations = build()
        db = Database(conn)
        if migrations.pending(db):
            migrations.apply(db)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextmanager
def write_tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taking the write lock up front (busy_timeout applies to the wait)."""
    lock = getattr(conn, "write_lock", None)
    if lock is not None:
        lock.acquire()
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")
    finally:
        if lock is not None:
            lock.release()
