"""The PostgreSQL backend (psycopg 3, the ``postgres`` extra): a connection that speaks the engine's SQL.

The engine writes one SQL dialect: standard SQL with ``?`` placeholders, the subset both backends run
(``RETURNING``, ``ON CONFLICT``, ``count(*) FILTER``, ``substr``…). What truly differs between the
backends — the claim, the write transaction, the store's schema, the target's column types — lives in
this module and in ``store/sqlite.py``; the engine has no backend branches.

Here, a ``PgConnection`` translates ``?`` to psycopg's ``%s`` (once per distinct statement), hands
rows back as ``Row`` (indexable by position and by column name, like ``sqlite3.Row``), runs every
statement in autocommit unless a ``transaction()`` is open, and turns driver errors into
``StoreError`` with a message that names the host and database and the server's reason — never a
password.

psycopg is imported only by this module, and this module only for a ``postgresql://`` store.
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterable, Iterator, Sequence

import psycopg
from psycopg import errors as pg_errors

from ..errors import StoreError

CONNECT_TIMEOUT_S = 10
LOCK_TIMEOUT_MS = 30_000
_PLACEHOLDER = re.compile(r"\?")
_STATEMENTS: dict[str, str] = {}
_STATEMENTS_LOCK = threading.Lock()


def is_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


def _pg_sql(sql: str) -> str:
    """``?`` placeholders as ``%s`` (and a literal ``%`` doubled), cached: the engine's statements are a
    small fixed set, so each is translated once per process."""
    cached = _STATEMENTS.get(sql)
    if cached is None:
        cached = _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))
        with _STATEMENTS_LOCK:
            _STATEMENTS[sql] = cached
    return cached


class Row(tuple):
    """A result row: ``row[0]``, ``row["column"]``, ``row.keys()`` — what ``sqlite3.Row`` offers."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    description = cursor.description
    if description is None:
        return tuple
    index = {column.name: i for i, column in enumerate(description)}
    return lambda values: Row(values, index)


def describe(url: str) -> str:
    """The URL as it may be shown: user and host and database, never the password or query values."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}@" if parts.username else ""
    return f"postgresql://{user}{host}{port}{parts.path or '/'}"


def translate(exc: Exception, url: str) -> StoreError:
    """A driver error as a StoreError: what happened, where, and what to do (never a password)."""
    where = describe(url)
    reason = _reason(exc)
    if isinstance(exc, pg_errors.LockNotAvailable | pg_errors.QueryCanceled):
        return StoreError(f"store {where} is locked: a lock was held for more than {LOCK_TIMEOUT_MS // 1000} s; "
                          "retry the command", code="store_locked")
    if isinstance(exc, pg_errors.DiskFull):
        return StoreError(f"store {where} is out of disk space ({reason}); free space on the database server",
                          code="store_full")
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return StoreError(f"store {where} is read-only ({reason}); point --db at the primary", code="store_read_only")
    if isinstance(exc, psycopg.OperationalError):
        return StoreError(f"cannot use store {where}: {reason}; check that the server runs and the URL is right",
                          code="store_unavailable")
    return StoreError(f"store {where}: {reason}", code="store_error")


def _reason(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"password=\S+", "password=***", text)


class PgConnection:
    """One connection to the store's database (the interface ``store/base.py`` describes). Statements run
    in autocommit; ``transaction()`` runs a block in one transaction (and may be nested: the inner block
    joins the outer one)."""

    dialect = "postgres"
    driver_errors: tuple[type[Exception], ...] = (psycopg.Error,)

    def __init__(self, url: str, *, application: str = "workctl"):
        self.url = url
        try:
            self.raw = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                       application_name=application, row_factory=_row_factory)
        except psycopg.Error as exc:
            raise translate(exc, url) from None
        self.raw.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        self._depth = 0
        self.migrated = False  # whether opening it applied migrations (``init`` says "created")

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @property
    def hot(self) -> Any:
        from . import postgres_hotpath

        return postgres_hotpath

    @property
    def location(self) -> str:
        return describe(self.url)

    def durable(self) -> ContextManager[None]:
        """Every commit is durable already (synchronous_commit is the server's to set, on by default)."""
        return nullcontext()

    def translate(self, exc: Exception) -> StoreError:
        return translate(exc, self.url)

    def describe(self) -> dict[str, object]:
        """What ``workctl init`` reports about the store: its backend, schema and server."""
        from .postgres_schema import MIGRATIONS_TABLE

        applied = [row[0] for row in self.execute(f"SELECT name FROM {MIGRATIONS_TABLE} ORDER BY name")]
        version = self.execute("SHOW server_version").fetchone()[0]
        schema = self.execute("SELECT current_schema()").fetchone()[0]
        return {"backend": "postgresql", "migrations": applied, "server_version": version, "schema": schema,
                "detail": f"PostgreSQL {version.split()[0]}, schema {schema}"}

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Any]:
        """Rows one by one, as the server sends them (not fetched into memory all at once)."""
        cursor = self.raw.cursor()
        return cursor.stream(_pg_sql(sql), params or None)

    def follow_identity(self, table: str, column: str) -> None:
        """After rows were inserted with explicit ids: the column's sequence continues after the largest."""
        self.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                     f"coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)")

    def exclusive(self, name: str) -> None:
        """Serialise this transaction with every other that names the same thing (until it ends)."""
        self.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (name,))

    def in_list(self, values: Iterable[Any]) -> tuple[str, Any]:
        """``= ANY(…)`` over a list of values as one parameter (an array)."""
        return "= ANY(?)", list(values)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.raw.execute(_pg_sql(sql), params or None)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        """Every row's statement (pipelined by psycopg); the cursor's rowcount is the rows they changed."""
        cursor = self.raw.cursor()
        cursor.executemany(_pg_sql(sql), rows)
        return cursor

    @contextmanager
    def transaction(self) -> Iterator[PgConnection]:
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self.raw.execute("BEGIN")
        self._depth = 1
        try:
            yield self
        except BaseException:
            self._depth = 0
            self.raw.execute("ROLLBACK")
            raise
        else:
            self._depth = 0
            self.raw.execute("COMMIT")

    def close(self) -> None:
        self.raw.close()


def connect(url: str) -> PgConnection:
    """The store at ``url``: connected, its schema checked and migrated (a database created by a newer
    workctl is refused, ``store_too_new``)."""
    from .postgres_schema import migrate

    conn = PgConnection(url)
    try:
        migrate(conn)
    except psycopg.Error as exc:
        conn.close()
        raise translate(exc, url) from None
    except BaseException:
        conn.close()
        raise
    return conn
