"""The target: the database holding the ``users`` table that approve writes into and revert restores.

By default that is the store's own database (one file or one PostgreSQL database, and one transaction
for apply and bookkeeping); ``[target] db`` (or ``WORKCTL_TARGET_DB``) names another one, a SQLite path
or a ``postgresql://`` URL. Everything that touches the target goes through here: opening it, checking
that ``users`` is a table a sync can write, reading its columns, rows and user ids, comparing values the
way its columns store them, writing (with the target's refusals reported per user and field), and the
marker tables that make an apply (and a revert) exactly-once across a crash between the target's commit
and the store's.

**Values as stored.** A column converts a value on the way in: SQLite by the column's type affinity (a
TEXT column stores ``49`` as ``'49'``, an INTEGER column ``'7'`` as ``7``), PostgreSQL by the column's
type. ``StoredForm.normalise(column, value)`` answers "what would this column hold after writing this
value", so two values are "the same" exactly when writing one over the other changes nothing; each
backend answers it in ``target_sqlite`` / ``target_postgres``, the rest of the apply is the same.

Identifiers only reach SQL through ``quote`` after they were found among the table's columns.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Protocol, Sequence

from ..errors import Invalid
from .target_model import ID, USERS, Column, Refusal, quote

__all__ = ["ID", "USERS", "Column", "Refusal", "quote"]  # the model, re-exported for the engine

APPLIED_MARKER = "_workctl_applied"
REVERTED_MARKER = "_workctl_reverted"
BUSY_TIMEOUT_S = 30
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def same(stored: Any, other: Any) -> bool:
    """Two values as a column holds them are the same value (type included: 1 and 1.0 are stored apart)."""
    return stored is other or (type(stored) is type(other) and stored == other)


class StoredForm(Protocol):
    """What the target's columns would hold after writing a value, and what they refuse up front.

    ``normalise(column, value)`` — the value read back after writing ``value`` into ``column``.
    ``refusal(column, stored)`` — why the column would refuse it (NOT NULL, a type), or None."""

    def normaliser(self, column: str) -> Callable[[Any], Any]: ...
    def normalise(self, column: str, value: Any) -> Any: ...
    def refusal(self, column: str, stored: Any) -> str | None: ...
    def close(self) -> None: ...
    def __enter__(self) -> StoredForm: ...
    def __exit__(self, *exc: object) -> None: ...


def _backend(conn: Any) -> Any:
    """The module that speaks the target's SQL dialect (a plain sqlite3 connection is SQLite)."""
    if getattr(conn, "dialect", "sqlite") == "postgres":
        from . import target_postgres

        return target_postgres
    from . import target_sqlite

    return target_sqlite


def connect_target(location: str) -> Any:
    """A connection to a separate target database: a SQLite file, or a PostgreSQL URL."""
    from . import is_url

    if is_url(location):
        from .postgres import PgConnection

        return PgConnection(location, application="workctl-target")
    import sqlite3

    from .sqlite import Connection

    # The store's connection class: the same transaction() (BEGIN IMMEDIATE) and durable commit.
    conn = sqlite3.connect(location, timeout=BUSY_TIMEOUT_S, isolation_level=None, factory=Connection)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    return conn


def same_location(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


class Target:
    """``with session.target() as conn:`` — the connection to the target database.

    When the target is the store's own database this is the store's connection (so approve applies and
    records in one transaction); otherwise a connection of its own, closed on exit."""

    def __init__(self, store_conn: Any, store_location: str, target_location: str | None):
        self.store_conn = store_conn
        self.path = target_location or store_location
        self.same = same_location(self.path, store_location)
        self._own: Any = None

    def __enter__(self) -> Any:
        if self.same:
            return self.store_conn
        from . import is_url

        if not is_url(self.path) and not os.path.exists(self.path):
            raise Invalid(f"target database {self.path} does not exist", code="target_missing")
        self._own = connect_target(self.path)
        return self._own

    def __exit__(self, *exc: object) -> None:
        if self._own is not None:
            self._own.close()
            self._own = None


# -- the users table: what it is and which columns it has ---------------------------------------------
def columns(conn: Any) -> dict[str, Column]:
    """The columns of ``users`` by lower-cased name, in table order (empty when there is no table)."""
    return _backend(conn).columns(conn)


def user_columns(conn: Any) -> list[str]:
    """The columns of ``users`` in table order (empty when there is no such table)."""
    return [c.name for c in columns(conn).values()]


def check_users_table(conn: Any) -> dict[str, Column]:
    """The columns of ``users`` if a sync can write it: a table (not a view) with a unique ``id``.

    Refused (exit 5): no users table (``no_users_table``); a view, or a table whose ``id`` is missing or
    not unique (``target_unsupported``): an UPDATE through a view, or by an ``id`` several rows share,
    would not write what the diff says."""
    backend = _backend(conn)
    kind = backend.users_kind(conn)
    if kind is None:
        raise Invalid("the target database has no 'users' table to sync into", code="no_users_table")
    if kind == "view":
        raise Invalid("the target's 'users' is a view; a sync writes into a table (point [target] db at the "
                      "database that holds the table)", code="target_unsupported",
                      details=[{"path": "users", "message": "is a view"}])
    cols: dict[str, Column] = backend.columns(conn)
    if ID not in cols:
        raise Invalid("the target's 'users' table has no 'id' column; a sync finds users by id",
                      code="target_unsupported", details=[{"path": "users.id", "message": "missing"}])
    if not backend.id_is_unique(conn, cols):
        raise Invalid("the target's users.id is neither the primary key nor UNIQUE, so one id could name "
                      "several rows; add a unique index on users(id)", code="target_unsupported",
                      details=[{"path": "users.id", "message": "not unique"}])
    return cols


def stored_form(conn: Any, cols: dict[str, Column] | None = None) -> StoredForm:
    """How the target's columns store values (close it, or use ``with``)."""
    return _backend(conn).stored_form(conn, cols if cols is not None else columns(conn))


# -- reading and writing users -----------------------------------------------------------------------------
def read_users(conn: Any, names: Sequence[str], ids: Iterable[Any]) -> dict[Any, tuple[Any, ...]]:
    """``{stored id: (values of names…)}`` for the users whose id (as the id column stores it) is in
    ``ids``; one query. ``names`` must be checked columns of users."""
    backend = _backend(conn)
    select = ", ".join([ID, *(backend.read_column(quote(n)) for n in names)])
    members, param = backend.in_list(conn, list(ids))
    return {row[0]: tuple(backend.readable(v) for v in row[1:]) for row in conn.execute(
        f"SELECT {select} FROM {USERS} WHERE {ID} {members}", (param,))}


def local_user_ids(target_db: Target) -> list[int]:
    """The integer ids of the users table (a text id column's ids that are integers written plainly)."""
    with target_db as target:
        if _backend(target).users_kind(target) is None:
            raise Invalid("the target database has no users table to sync into", code="no_users_table")
        values = [row[0] for row in target.execute(f"SELECT {ID} FROM {USERS}")]
    ids = set()
    for value in values:
        if type(value) is int:
            ids.add(value)
        elif isinstance(value, str) and value.isdigit() and value == str(int(value)) and int(value) <= INT64_MAX:
            ids.add(int(value))
    return sorted(ids)


def refused(refusals: list[Refusal], *, when: str = "") -> Invalid:
    """The ``apply_refused`` error (exit 5): nothing was applied, the order stays submitted."""
    first = refusals[0]
    names = ", ".join(first.fields)
    more = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
    return Invalid(f"the target refused the apply{when}: user {first.user_id}, field {names}: {first.constraint}"
                   f"{more}; nothing was applied and the order is still submitted (fix the data or the "
                   "table, or reject the order)", code="apply_refused", details=[r.detail() for r in refusals])


def database_errors(conn: Any) -> tuple[type[Exception], ...]:
    """Every error the target's driver raises."""
    return _backend(conn).DATABASE_ERRORS


def integrity_errors(conn: Any) -> tuple[type[Exception], ...]:
    """The exceptions a refused write raises on this target (a constraint, a trigger, a type)."""
    return _backend(conn).INTEGRITY_ERRORS


def update_users_if_unchanged(conn: Any, names: Sequence[str], expected: Sequence[str],
                              rows: Iterable[Sequence[Any]]) -> int:
    """The optimistic write: ``UPDATE users SET n1 = ?, … WHERE id = ? AND e1 IS NOT DISTINCT FROM ? …``
    for every row (values…, stored id, expected values…): a row whose ``expected`` columns no longer hold
    what was read is not written. Returns how many rows were; the target's refusals raise its
    ``integrity_errors``."""
    backend = _backend(conn)
    assignments = ", ".join(f"{quote(n)} = {backend.param_for(n)}" for n in names)
    guards = "".join(f" AND {backend.read_column(quote(e))} IS NOT DISTINCT FROM ?" for e in expected)
    return int(conn.executemany(f"UPDATE {USERS} SET {assignments} WHERE {ID} = ?{guards}",
                                backend.rows(rows)).rowcount)


def update_users(conn: Any, names: Sequence[str], rows: Sequence[Sequence[Any]],
                 user_of: Callable[[Any], Any]) -> None:
    """``UPDATE users SET n1 = ?, … WHERE id = ?`` for every row (values…, stored id), inside the
    caller's transaction. A row the target refuses (UNIQUE, CHECK, NOT NULL, a trigger, a type) or
    silently skips (SQLite's RAISE(IGNORE)) raises ``apply_refused`` naming the user (``user_of(stored
    id)``), the field and the constraint; the statement's partial work is undone (the caller's
    transaction rolls back the rest)."""
    backend = _backend(conn)
    assignments = ", ".join(f"{quote(n)} = {backend.param_for(n)}" for n in names)
    sql = f"UPDATE {USERS} SET {assignments} WHERE {ID} = ?"
    conn.execute("SAVEPOINT workctl_update")
    failure: Exception | None = None
    try:
        cursor = conn.executemany(sql, backend.rows(rows))
        if cursor.rowcount == len(rows):
            conn.execute("RELEASE SAVEPOINT workctl_update")
            return
    except backend.INTEGRITY_ERRORS as exc:
        failure = exc
    conn.execute("ROLLBACK TO SAVEPOINT workctl_update")
    refusal = _find_refusal(conn, sql, names, rows, user_of, failure)
    conn.execute("ROLLBACK TO SAVEPOINT workctl_update")
    conn.execute("RELEASE SAVEPOINT workctl_update")
    raise refused([refusal])


def _find_refusal(conn: Any, sql: str, names: Sequence[str], rows: Sequence[Sequence[Any]],
                  user_of: Callable[[Any], Any], failure: Exception | None) -> Refusal:
    """Replay the rows one by one (the state each meets is the one it met in the batch) to find the one
    the target refused, then name its field: from the message when it names a column, else by trying
    each field alone."""
    backend = _backend(conn)
    for row in rows:
        conn.execute("SAVEPOINT workctl_row")
        try:
            cursor = conn.execute(sql, backend.row(row))
        except backend.INTEGRITY_ERRORS as exc:
            conn.execute("ROLLBACK TO SAVEPOINT workctl_row")
            conn.execute("RELEASE SAVEPOINT workctl_row")
            message = backend.message(exc)
            return Refusal(user_of(row[-1]), _fields_of(conn, message, names, row), message)
        conn.execute("RELEASE SAVEPOINT workctl_row")
        if cursor.rowcount != 1:
            return Refusal(user_of(row[-1]), list(names),
                           "the update was skipped by the target (a trigger's RAISE(IGNORE))")
    return Refusal(None, list(names), backend.message(failure) if failure else "the target refused the update")


def _fields_of(conn: Any, message: str, names: Sequence[str], row: Sequence[Any]) -> list[str]:
    backend = _backend(conn)
    named: list[str] = backend.named_fields(message, list(names))
    if named:
        return named
    alone = []
    for i, name in enumerate(names):
        conn.execute("SAVEPOINT workctl_field")
        try:
            conn.execute(f"UPDATE {USERS} SET {quote(name)} = {backend.param_for(name)} WHERE {ID} = ?",
                         backend.row((row[i], row[-1])))
        except backend.INTEGRITY_ERRORS:
            alone.append(name)
        finally:
            conn.execute("ROLLBACK TO SAVEPOINT workctl_field")
            conn.execute("RELEASE SAVEPOINT workctl_field")
    return alone or list(names)


def foreign_key_refusals(conn: Any, id_of_rowid: Callable[[Any], Any] | None = None) -> list[Refusal]:
    """After a COMMIT failed on a deferred foreign key (the transaction still open): the users rows that
    violate one, each with the column and the table it refers to."""
    return _backend(conn).foreign_key_refusals(conn, id_of_rowid)


def add_text_column(conn: Any, name: str) -> None:
    """``ALTER TABLE users ADD COLUMN <name> TEXT`` (a provenance column; the name is built from a checked one)."""
    conn.execute(f"ALTER TABLE {USERS} ADD COLUMN {quote(name)} TEXT")


def restore_field(conn: Any, name: str, stored_id: Any, restore: Any, expected: Any,
                  stamps: Sequence[tuple[str, Any]] = ()) -> bool:
    """Revert's write: put ``restore`` back into ``name`` of one user only where it still holds
    ``expected``; True when it did. Stamps are (column, value) pairs set alongside."""
    backend = _backend(conn)
    extra = "".join(f", {quote(column)} = ?" for column, _ in stamps)
    cursor = conn.execute(f"UPDATE {USERS} SET {quote(name)} = {backend.param_for(name)}{extra} WHERE {ID} = ? "
                          f"AND {backend.read_column(quote(name))} IS NOT DISTINCT FROM ?",
                          backend.row((restore, *(v for _, v in stamps), stored_id, expected)))
    return int(cursor.rowcount) == 1


def read_field(conn: Any, name: str, stored_id: Any) -> tuple[bool, Any]:
    """(the user exists, the field's value) for one user."""
    backend = _backend(conn)
    row = conn.execute(f"SELECT {backend.read_column(quote(name))} FROM {USERS} WHERE {ID} = ?",
                       backend.row((stored_id,))).fetchone()
    return (False, None) if row is None else (True, backend.readable(row[0]))


# -- exactly-once markers (written in the target's own transaction) -----------------------------------
def read_marker(conn: Any, table: str, order_id: str, column: str) -> str | None:
    """The JSON text a marker table holds for the order, or None when it was not applied/reverted there."""
    if not _backend(conn).has_table(conn, table):
        return None
    row = conn.execute(f"SELECT {column} FROM {table} WHERE order_id = ?", (order_id,)).fetchone()
    return None if row is None else str(row[0])


def applied_diff(conn: Any, order_id: str) -> str | None:
    """The diff (JSON text) an earlier apply of this order recorded in the target, if any."""
    return read_marker(conn, APPLIED_MARKER, order_id, "diff")


def mark_applied(conn: Any, order_id: str, now: str, diff_json: str) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {APPLIED_MARKER} (order_id TEXT PRIMARY KEY, "
                 "applied_at TEXT NOT NULL, diff TEXT NOT NULL)")
    conn.execute(f"INSERT INTO {APPLIED_MARKER} (order_id, applied_at, diff) VALUES (?, ?, ?)",
                 (order_id, now, diff_json))


def reverted_outcome(conn: Any, order_id: str) -> str | None:
    return read_marker(conn, REVERTED_MARKER, order_id, "result")


def mark_reverted(conn: Any, order_id: str, revert_id: str, now: str, result_json: str) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {REVERTED_MARKER} (order_id TEXT PRIMARY KEY, "
                 "revert_id TEXT NOT NULL, reverted_at TEXT NOT NULL, result TEXT NOT NULL)")
    conn.execute(f"INSERT INTO {REVERTED_MARKER} (order_id, revert_id, reverted_at, result) VALUES (?, ?, ?, ?)",
                 (order_id, revert_id, now, result_json))
