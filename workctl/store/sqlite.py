"""Opening the SQLite store: create (0600), refuse what we must not touch, migrate, configure.

Every connection is in autocommit mode (``isolation_level=None``): transactions are explicit and
write transactions always start with ``BEGIN IMMEDIATE`` (see ``write_tx``), because a deferred
``BEGIN`` that later upgrades to a write fails at once with 'database is locked' and ignores the
busy timeout.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import StoreError
from .sqlite_migrations import MIGRATION_NAMES, MIGRATION_SET

BUSY_TIMEOUT_MS = 30_000

# Threads of one process that write to the same file queue on a Python lock before BEGIN IMMEDIATE:
# SQLite's busy handler polls with sleeps of 1-100 ms, which wastes most of a contended lock's time;
# a lock hands over at once. Other processes still meet SQLite's own locking.
_WRITE_LOCKS: dict[str, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


class Connection(sqlite3.Connection):
    """A store connection (the interface ``store/base.py`` describes): SQL with ``?`` placeholders,
    ``transaction()`` for writes, ``durable()`` for the commit that must survive power loss, and the
    backend's hot path and error translation."""

    write_lock: threading.Lock | None = None
    store_path: str | None = None
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file when it was opened
    dialect = "sqlite"
    driver_errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    @property
    def hot(self) -> Any:
        from . import sqlite_hotpath

        return sqlite_hotpath

    @property
    def location(self) -> str:
        return self.store_path or "?"

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return write_tx(self)

    @contextmanager
    def durable(self) -> Iterator[None]:
        """The commit inside is synced to disk (synchronous FULL), not only to the WAL."""
        self.execute("PRAGMA synchronous = FULL")
        try:
            yield
        finally:
            self.execute("PRAGMA synchronous = NORMAL")

    def translate(self, exc: Exception) -> StoreError:
        assert isinstance(exc, sqlite3.Error)
        return translate(exc, self.location)

    def describe(self) -> dict[str, object]:
        return describe_store(self)

    def stream(self, sql: str, parameters: Any = ()) -> Iterator[Any]:
        """Rows one by one (SQLite's cursor already reads lazily)."""
        return iter(self.execute(sql, parameters))

    def follow_identity(self, table: str, column: str) -> None:
        """Nothing to do: an INTEGER PRIMARY KEY continues from the largest id present."""

    def exclusive(self, name: str) -> None:
        """Nothing to do: a SQLite write transaction (BEGIN IMMEDIATE) excludes every other writer."""

    def in_list(self, values: Iterable[Any]) -> tuple[str, Any]:
        """``IN (…)`` over a list of values as one parameter (a JSON array, expanded by json_each)."""
        from ..jsonio import dumps

        return "IN (SELECT value FROM json_each(?))", dumps(list(values))


def _write_lock(path: Path) -> threading.Lock:
    key = os.path.realpath(path)
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(key, threading.Lock())

# SQLite's primary result codes (sqlite3 exceptions carry them as ``sqlite_errorcode``; the low byte is
# the primary code, the rest the extended one).
_SQLITE_READONLY, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR = 8, 5, 6, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26


def absolute(path: str | os.PathLike[str]) -> str:
    """The path as messages show it: absolute (cron's working directory is rarely the one you think)."""
    return os.path.abspath(os.fspath(path))


def _primary(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _no_room(path: str) -> bool:
    """After a failed write: is the disk (or this process's file-size limit) out of room for the store?"""
    import resource

    directory = os.path.dirname(path) or "."
    try:
        disk = os.statvfs(directory)
        if disk.f_bavail * disk.f_frsize < 1024 * 1024:
            return True
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            largest = max((os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p)), default=0)
            return largest + 256 * 1024 >= soft
    except OSError:
        return False
    return False


def store_full(path: str) -> StoreError:
    return StoreError(f"no space left for the store {path}: the disk (or this process's file-size limit) is "
                      "full; nothing was written. Free some space and run the command again",
                      code="store_full")


def store_read_only(path: str, detail: str = "") -> StoreError:
    return StoreError(f"the store {path} cannot be written{f' ({detail})' if detail else ''}: the file, its "
                      f"-wal/-shm or its directory is read-only for this user (SQLite writes {os.path.basename(path)}"
                      "-wal and -shm next to it); make them writable, or run as the store's owner",
                      code="store_read_only")


def translate(exc: sqlite3.Error, path: str | os.PathLike[str]) -> StoreError:
    """A sqlite3 error as a StoreError whose message says what happened to which file, and what to do."""
    where = absolute(path)
    text = str(exc)
    lowered = text.lower()
    primary = _primary(exc)
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in lowered or "busy" in lowered:
        return StoreError(
            f"the store {where} is locked: another process held the write lock for more than "
            f"{BUSY_TIMEOUT_MS // 1000} s; retry the command (or find the process: fuser {where})",
            code="store_locked",
        )
    if primary == _SQLITE_FULL or "database or disk is full" in lowered:
        return store_full(where)
    if primary == _SQLITE_READONLY or "readonly" in lowered or "read-only" in lowered:
        return store_read_only(where, text)
    if primary == _SQLITE_IOERR and _no_room(where):
        return store_full(where)
    if primary in (_SQLITE_NOTADB, _SQLITE_CORRUPT) or "not a database" in lowered or "malformed" in lowered:
        return StoreError(f"{where} is not a usable SQLite database ({text}); refusing to touch it. Check --db, "
                          "or restore the store from a backup", code="store_corrupt")
    if primary == _SQLITE_CANTOPEN or "unable to open" in lowered:
        if not os.access(os.path.dirname(where) or ".", os.W_OK) or (os.path.exists(where)
                                                                      and not os.access(where, os.W_OK)):
            return store_read_only(where, text)
        return StoreError(f"cannot open the store {where}: {text}; check that the path and its directory exist "
                          "and are accessible", code="store_unavailable")
    return StoreError(f"the store {where}: {text}", code="store_error")


def store_missing(path: str | os.PathLike[str]) -> StoreError:
    where = absolute(path)
    return StoreError(
        f"no workctl store at {where} (nothing was created). Check --db / WORKCTL_DB (cron runs in another "
        f"working directory: give an absolute path), or create it with: workctl --db {where} init",
        code="store_missing")


def _create_private(path: Path) -> bool:
    """Create an empty database file readable by its owner only (SQLite gives -wal/-shm the same mode).

    ``path`` is where the name leads (symlinks resolved, a dangling one to its target): O_EXCL on a
    symlink fails even when it dangles, which would leave SQLite to create the file with the umask's
    mode. Returns False when another process created it first."""
    if not path.parent.exists():
        raise StoreError(f"cannot create the store {path}: directory {path.parent} does not exist",
                         code="store_missing")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False  # another process won the race to create it; fine
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise store_full(str(path)) from exc
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise store_read_only(str(path), exc.strerror or "") from exc
        raise StoreError(f"cannot create the store {path}: {exc.strerror}", code="store_unavailable") from exc
    os.close(fd)
    return True


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def connect(path: str | os.PathLike[str], *, create: bool,
            busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """Open (creating only when ``create``) and migrate the store; raise StoreError for anything we must
    refuse. Without ``create`` a missing file is ``store_missing`` and nothing (no -wal/-shm) is made."""
    text = os.fspath(path)  # (an empty path or one holding NUL is refused by api.Workctl, as a usage error)
    db_path = Path(path)
    try:
        real = Path(os.path.realpath(db_path))
        exists = real.exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise StoreError(f"the store path {text[:80]}… cannot be used: {exc.strerror or exc}",
                         code="store_unavailable") from None
    if not exists:
        if not create:
            raise store_missing(db_path)
        _create_private(real)
    elif real.is_dir():
        raise StoreError(f"the store path {absolute(db_path)} is a directory; give a file path with --db",
                         code="store_unavailable")
    try:
        # mode=rw: SQLite must never create the file itself (a deleted store between the check above and
        # this open stays missing instead of coming back empty, with the umask's mode).
        conn = sqlite3.connect(f"{real.as_uri()}?mode=rw", uri=True, timeout=busy_timeout_ms / 1000,
                               isolation_level=None, check_same_thread=False, factory=Connection)
        conn.row_factory = sqlite3.Row
        conn.write_lock = _write_lock(db_path)
        # The name as given (stat follows a symlink): a link re-pointed at another file counts as replaced.
        conn.store_path = absolute(db_path)
        conn.identity = _identity(conn.store_path)
    except sqlite3.Error as exc:
        if not real.exists() and not create:
            raise store_missing(db_path) from exc
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
        # Checkpoints (and their fsyncs) every ~40 MB of WAL instead of every 4 MB: the hot path writes
        # about 10 pages per item, and a checkpoint inside a writer's COMMIT is what it waits on most
        # (docs/hotpath-notes.md). The WAL file shrinks back to 64 MiB after a checkpoint.
        conn.execute("PRAGMA wal_autocheckpoint = 10000")
        conn.execute(f"PRAGMA journal_size_limit = {64 * 1024 * 1024}")
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
        # Only a file that is not a database is 'corrupt'; a read-only directory, a full disk or a lock
        # say so themselves (translate).
        raise translate(exc, path) from exc
    if not has_table:
        return True
    applied = {row[0] for row in conn.execute(
        "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", (MIGRATION_SET,))}
    unknown = applied - set(MIGRATION_NAMES)
    if unknown:
        raise StoreError(
            f"{path} was created by a newer workctl (unknown migrations: {', '.join(sorted(unknown))}); "
            "upgrade workctl to use it. The file was not modified.",
            code="store_too_new",
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


def check_not_replaced(conn: sqlite3.Connection) -> None:
    """Refuse to write when the store's path no longer leads to the file this connection has open (deleted,
    or replaced by a restore or a copy while we ran): the write would go to a file nobody will read."""
    identity = getattr(conn, "identity", None)
    path = getattr(conn, "store_path", None)
    if identity is None or path is None:
        return
    now = _identity(path)
    if now != identity:
        what = "was deleted" if now is None else "was replaced by another file"
        raise StoreError(f"the store {path} {what} while this process had it open; nothing was written. "
                         "Run the command again (it opens the file that is there now)", code="store_replaced")


@contextmanager
def write_tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taking the write lock up front (busy_timeout applies to the wait). The store
    file is checked to be the one opened (one stat) before anything is written."""
    lock = getattr(conn, "write_lock", None)
    if lock is not None:
        lock.acquire()
    try:
        check_not_replaced(conn)
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


def describe_store(conn: sqlite3.Connection) -> dict[str, object]:
    """What ``workctl init`` reports about an open store: its backend, schema and journal mode."""
    applied = [row[0] for row in conn.execute(
        "SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY id", (MIGRATION_SET,))]
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    return {"backend": "sqlite", "migrations": applied, "journal_mode": journal, "detail": f"journal {journal}"}
