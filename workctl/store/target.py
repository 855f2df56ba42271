"""The target: the database holding the ``users`` table that approve writes into and revert restores.

By default that is the store's own database (one file, one transaction for apply and bookkeeping);
``[target] db`` (or ``WORKCTL_TARGET_DB``) names a second SQLite file. Everything that touches the
target goes through here: opening it, checking that ``users`` is a table a sync can write, reading its
columns, rows and user ids, comparing values the way its columns store them, writing (with the
target's refusals reported per user and field), and the marker tables that make an apply (and a
revert) exactly-once across a crash between the target's commit and the store's.

**Values as stored.** SQLite converts a value on the way into a column by the column's type affinity:
a TEXT column stores ``49`` as ``'49'``, an INTEGER column stores ``'7'`` as ``7`` and ``7.0`` as
``7``, a REAL column stores ``7`` as ``7.0``, a column without a type keeps what it is given.
``StoredForm`` answers "what would this column hold after writing this value" by asking SQLite itself
(a one-row in-memory table with a column of each affinity; the common cases are answered without
it), so two values are "the same" exactly when writing one over the other changes nothing. That is
the one place a PostgreSQL target plugs in its own column types: the rest of the apply only calls
``StoredForm.normalise(column, value)`` and ``StoredForm.refusal(column, value)``.

Identifiers only reach SQL through ``quote`` after they were found among the table's columns.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..errors import Invalid
from ..jsonio import dumps

APPLIED_MARKER = "_workctl_applied"
REVERTED_MARKER = "_workctl_reverted"
BUSY_TIMEOUT_S = 30
USERS = "users"
ID = "id"


def quote(name: str) -> str:
    """An SQL identifier, double-quoted (only ever for names checked against the table's columns)."""
    return '"' + name.replace('"', '""') + '"'


def connect_target(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    return conn


def same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


class Target:
    """``with session.target() as conn:`` — the connection to the target database.

    When the target is the store's own file this is the store's connection (so approve applies and
    records in one transaction); otherwise a connection of its own, closed on exit."""

    def __init__(self, store_conn: sqlite3.Connection, store_path: str, target_path: str | None):
        self.store_conn = store_conn
        self.path = target_path or store_path
        self.same = same_file(self.path, store_path)
        self._own: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        if self.same:
            return self.store_conn
        if not os.path.exists(self.path):
            raise Invalid(f"target database {self.path} does not exist", code="target_missing")
        self._own = connect_target(self.path)
        return self._own

    def __exit__(self, *exc: object) -> None:
        if self._own is not None:
            self._own.close()
            self._own = None


# -- the users table: what it is and which columns it has ---------------------------------------------
@dataclass(frozen=True)
class Column:
    name: str
    declared: str      # the declared type, as written in CREATE TABLE ('' when none)
    affinity: str      # INTEGER | TEXT | BLOB | REAL | NUMERIC (SQLite's rules on the declared type)
    not_null: bool
    primary_key: bool


def affinity(declared: str) -> str:
    """SQLite's type affinity of a declared column type (https://sqlite.org/datatype3.html, 3.1)."""
    decl = declared.upper()
    if "INT" in decl:
        return "INTEGER"
    if "CHAR" in decl or "CLOB" in decl or "TEXT" in decl:
        return "TEXT"
    if "BLOB" in decl or not decl.strip():
        return "BLOB"
    if "REAL" in decl or "FLOA" in decl or "DOUB" in decl:
        return "REAL"
    return "NUMERIC"


def users_kind(conn: sqlite3.Connection) -> str | None:
    """'table', 'view' or None: what ``users`` is in the target's schema."""
    row = conn.execute("SELECT type FROM sqlite_master WHERE name = ? COLLATE NOCASE AND type IN ('table', 'view')",
                       (USERS,)).fetchone()
    return None if row is None else row[0]


def is_strict(conn: sqlite3.Connection) -> bool:
    try:
        row = conn.execute("SELECT strict FROM pragma_table_list WHERE name = ? AND schema = 'main'",
                           (USERS,)).fetchone()
    except sqlite3.OperationalError:  # SQLite before 3.37 has no STRICT tables
        return False
    return bool(row and row[0])


def columns(conn: sqlite3.Connection) -> dict[str, Column]:
    """The columns of ``users`` by lower-cased name (SQLite names are case-insensitive), in table order."""
    strict = is_strict(conn)
    found: dict[str, Column] = {}
    for _, name, declared, not_null, _, pk in conn.execute(f"SELECT * FROM pragma_table_info('{USERS}')"):
        declared = declared or ""
        # In a STRICT table, ANY keeps every value as given; elsewhere "ANY" is just a NUMERIC name.
        kind = "BLOB" if strict and declared.strip().upper() == "ANY" else affinity(declared)
        found[name.lower()] = Column(name, declared, kind, bool(not_null), bool(pk))
    return found


def user_columns(conn: sqlite3.Connection) -> list[str]:
    """The columns of ``users`` in table order (empty when there is no such table)."""
    return [row[1] for row in conn.execute(f"SELECT * FROM pragma_table_info('{USERS}')")]


def check_users_table(conn: sqlite3.Connection) -> dict[str, Column]:
    """The columns of ``users`` if a sync can write it: a table (not a view) with a unique ``id``.

    Refused (exit 5): no users table (``no_users_table``); a view, or a table whose ``id`` is missing or
    not unique (``target_unsupported``): an UPDATE through a view, or by an ``id`` several rows share,
    would not write what the diff says."""
    kind = users_kind(conn)
    if kind is None:
        raise Invalid("the target database has no 'users' table to sync into", code="no_users_table")
    if kind == "view":
        raise Invalid("the target's 'users' is a view; a sync writes into a table (point [target] db at the "
                      "database that holds the table)", code="target_unsupported",
                      details=[{"path": "users", "message": "is a view"}])
    cols = columns(conn)
    if ID not in cols:
        raise Invalid("the target's 'users' table has no 'id' column; a sync finds users by id",
                      code="target_unsupported", details=[{"path": "users.id", "message": "missing"}])
    if not _id_is_unique(conn, cols):
        raise Invalid("the target's users.id is neither the primary key nor UNIQUE, so one id could name "
                      "several rows; add a unique index on users(id)", code="target_unsupported",
                      details=[{"path": "users.id", "message": "not unique"}])
    return cols


def _id_is_unique(conn: sqlite3.Connection, cols: dict[str, Column]) -> bool:
    pk = [c for c in cols.values() if c.primary_key]
    if len(pk) == 1 and pk[0].name.lower() == ID:
        return True
    for index in conn.execute(f"SELECT name, \"unique\", partial FROM pragma_index_list('{USERS}')").fetchall():
        if not index[1] or index[2]:
            continue
        names = [r[2] for r in conn.execute("SELECT * FROM pragma_index_info(?)", (index[0],))]
        if len(names) == 1 and (names[0] or "").lower() == ID:
            return True
    return False


# -- values as the target stores them --------------------------------------------------------------------
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_STRICT_CLASS = {"INT": int, "INTEGER": int, "REAL": float, "TEXT": str, "BLOB": bytes}
_AFFINITIES = ("INTEGER", "TEXT", "BLOB", "REAL", "NUMERIC")
_DIGIT = re.compile(r"\d")


def same(stored: Any, other: Any) -> bool:
    """Two values as a column holds them are the same value (type included: 1 and 1.0 are stored apart)."""
    return stored is other or (type(stored) is type(other) and stored == other)


class StoredForm:
    """What the target's columns would hold after writing a value, and what they refuse up front.

    ``normalise(column, value)`` — the value read back after writing ``value`` into ``column``.
    ``refusal(column, stored)`` — why the column would refuse it (NOT NULL, a STRICT table's type), or None.
    Columns are names of ``users`` (any case). Close it (or use ``with``) to drop the in-memory helper."""

    def __init__(self, cols: dict[str, Column], strict: bool = False):
        self.cols = cols
        self.strict = strict
        self._mem: sqlite3.Connection | None = None
        self._cache: dict[str, Callable[[Any], Any]] = {}

    @classmethod
    def of(cls, conn: sqlite3.Connection, cols: dict[str, Column] | None = None) -> StoredForm:
        return cls(cols if cols is not None else columns(conn), is_strict(conn))

    def __enter__(self) -> StoredForm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._mem is not None:
            self._mem.close()
            self._mem = None

    def normaliser(self, column: str) -> Callable[[Any], Any]:
        """``normalise`` bound to one column (looked up once, for loops over many values)."""
        key = column.lower()
        if key not in self._cache:
            self._cache[key] = self._build(self.cols[key].affinity)
        return self._cache[key]

    def normalise(self, column: str, value: Any) -> Any:
        return self.normaliser(column)(value)

    def refusal(self, column: str, stored: Any) -> str | None:
        col = self.cols[column.lower()]
        if stored is None:
            return f"NOT NULL constraint failed: users.{col.name}" if col.not_null and not col.primary_key else None
        if self.strict:
            wanted = _STRICT_CLASS.get(col.declared.strip().upper())
            if wanted is not None and not isinstance(stored, wanted) and not (wanted is float and type(stored) is int):
                return f"cannot store {_sql_class(stored)} value in {col.declared.upper()} column users.{col.name}"
        return None

    # Each affinity answers the cases whose result is certain in Python and asks SQLite for the rest.
    def _build(self, kind: str) -> Callable[[Any], Any]:
        ask = self._asker(kind)
        if kind == "BLOB":
            return lambda v: int(v) if type(v) is bool else v
        if kind == "TEXT":
            def text(v: Any) -> Any:
                t = type(v)
                if t is str or v is None:
                    return v
                if t is bool:
                    return "1" if v else "0"
                if t is int:
                    return str(v)
                return ask(v)
            return text
        if kind == "REAL":
            def real(v: Any) -> Any:
                t = type(v)
                if (t is float and math.isfinite(v)) or v is None:
                    return v
                if t is str and not _DIGIT.search(v):
                    return v
                return ask(v)
            return real

        def numeric(v: Any) -> Any:  # INTEGER and NUMERIC store alike (they differ only in CAST)
            t = type(v)
            if t is int or v is None:
                return v
            if t is bool:
                return int(v)
            if t is str and not _DIGIT.search(v):
                return v
            return ask(v)
        return numeric

    def _asker(self, kind: str) -> Callable[[Any], Any]:
        position = _AFFINITIES.index(kind)

        def ask(value: Any) -> Any:
            if self._mem is None:
                self._mem = sqlite3.connect(":memory:", isolation_level=None)
                self._mem.execute("CREATE TABLE v (k INTEGER PRIMARY KEY, c0 INTEGER, c1 TEXT, c2 BLOB, c3 REAL, "
                                  "c4 NUMERIC)")
            # Fixed SQL text: the column is chosen among five literal names by the affinity's position.
            # Read back with SELECT: RETURNING hands out a REAL column's 7.0 as 7 (SQLite's storage shortcut).
            self._mem.execute(f"INSERT OR REPLACE INTO v (k, c{position}) VALUES (1, ?)", (value,))
            return self._mem.execute(f"SELECT c{position} FROM v WHERE k = 1").fetchone()[0]
        return ask


def _sql_class(value: Any) -> str:
    return {int: "INTEGER", float: "REAL", str: "TEXT", bytes: "BLOB"}.get(type(value), type(value).__name__)


# -- reading and writing users -----------------------------------------------------------------------------
def read_users(conn: sqlite3.Connection, names: Sequence[str], ids: Iterable[Any]) -> dict[Any, tuple[Any, ...]]:
    """``{stored id: (values of names…)}`` for the users whose id (as the id column stores it) is in
    ``ids``; one query. ``names`` must be checked columns of users."""
    select = ", ".join([ID, *(quote(n) for n in names)])
    return {row[0]: row[1:] for row in conn.execute(
        f"SELECT {select} FROM {USERS} WHERE {ID} IN (SELECT value FROM json_each(?))", (dumps(list(ids)),))}


def local_user_ids(target_db: Target) -> list[int]:
    """The integer ids of the users table (a TEXT id column's ids that are integers written plainly)."""
    with target_db as target:
        try:
            values = [row[0] for row in target.execute(f"SELECT {ID} FROM {USERS}")]
        except sqlite3.OperationalError as exc:
            raise Invalid(f"the target database has no users table: {exc}", code="no_users_table") from exc
    ids = set()
    for value in values:
        if type(value) is int:
            ids.add(value)
        elif isinstance(value, str) and value.isdigit() and value == str(int(value)) and int(value) <= INT64_MAX:
            ids.add(int(value))
    return sorted(ids)


@dataclass
class Refusal:
    """One write the target refused: which user (the order's id), which fields, and the constraint."""

    user_id: Any
    fields: list[str]
    constraint: str

    def detail(self) -> dict[str, Any]:
        field = self.fields[0] if len(self.fields) == 1 else self.fields
        return {"path": f"user {self.user_id}, {', '.join(self.fields)}", "message": self.constraint,
                "user_id": self.user_id, "field": field, "constraint": self.constraint}


def refused(refusals: list[Refusal], *, when: str = "") -> Invalid:
    """The ``apply_refused`` error (exit 5): nothing was applied, the order stays submitted."""
    first = refusals[0]
    names = ", ".join(first.fields)
    more = f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
    return Invalid(f"the target refused the apply{when}: user {first.user_id}, field {names}: {first.constraint}"
                   f"{more}; nothing was applied and the order is still submitted (fix the data or the "
                   "table, or reject the order)", code="apply_refused", details=[r.detail() for r in refusals])


def update_users_if_unchanged(conn: sqlite3.Connection, names: Sequence[str], expected: Sequence[str],
                              rows: Iterable[Sequence[Any]]) -> int:
    """The optimistic write: ``UPDATE users SET n1 = ?, … WHERE id = ? AND e1 IS ? AND …`` for every row
    (values…, stored id, expected values…): a row whose ``expected`` columns no longer hold what was read
    is not written. Returns how many rows were; the target's refusals raise ``sqlite3.IntegrityError``."""
    assignments = ", ".join(f"{quote(n)} = ?" for n in names)
    guards = "".join(f" AND {quote(e)} IS ?" for e in expected)
    return conn.executemany(f"UPDATE {USERS} SET {assignments} WHERE {ID} = ?{guards}", rows).rowcount


def update_users(conn: sqlite3.Connection, names: Sequence[str], rows: Sequence[Sequence[Any]],
                 user_of: Callable[[Any], Any]) -> None:
    """``UPDATE users SET n1 = ?, … WHERE id = ?`` for every row (values…, stored id), inside the
    caller's transaction. A row the target refuses (UNIQUE, CHECK, NOT NULL, a trigger's RAISE, a
    STRICT type) or silently skips (a trigger's RAISE(IGNORE)) raises ``apply_refused`` naming the user
    (``user_of(stored id)``), the field and the constraint; the statement's partial work is undone
    (the caller's transaction rolls back the rest)."""
    assignments = ", ".join(f"{quote(n)} = ?" for n in names)
    sql = f"UPDATE {USERS} SET {assignments} WHERE {ID} = ?"
    conn.execute("SAVEPOINT workctl_update")
    try:
        cursor = conn.executemany(sql, rows)
        if cursor.rowcount == len(rows):
            conn.execute("RELEASE workctl_update")
            return
        failure: sqlite3.Error | None = None
    except sqlite3.IntegrityError as exc:
        failure = exc
    conn.execute("ROLLBACK TO workctl_update")
    refusal = _find_refusal(conn, sql, names, rows, user_of, failure)
    conn.execute("ROLLBACK TO workctl_update")
    conn.execute("RELEASE workctl_update")
    raise refused([refusal])


def _find_refusal(conn: sqlite3.Connection, sql: str, names: Sequence[str], rows: Sequence[Sequence[Any]],
                  user_of: Callable[[Any], Any], failure: sqlite3.Error | None) -> Refusal:
    """Replay the rows one by one (the state each meets is the one it met in the batch) to find the one
    the target refused, then name its field: from the message when it names a column, else by trying
    each field alone."""
    for row in rows:
        try:
            cursor = conn.execute(sql, row)
        except sqlite3.IntegrityError as exc:
            message = str(exc)
            return Refusal(user_of(row[-1]), _fields_of(conn, message, names, row), message)
        if cursor.rowcount != 1:
            return Refusal(user_of(row[-1]), list(names),
                           "the update was skipped by the target (a trigger's RAISE(IGNORE))")
    return Refusal(None, list(names), str(failure) if failure else "the target refused the update")


def _fields_of(conn: sqlite3.Connection, message: str, names: Sequence[str], row: Sequence[Any]) -> list[str]:
    named = [n for n in names if re.search(rf"\busers\.{re.escape(n)}\b", message, re.IGNORECASE)]
    if named:
        return named
    alone = []
    for i, name in enumerate(names):
        conn.execute("SAVEPOINT workctl_field")
        try:
            conn.execute(f"UPDATE {USERS} SET {quote(name)} = ? WHERE {ID} = ?", (row[i], row[-1]))
        except sqlite3.IntegrityError:
            alone.append(name)
        finally:
            conn.execute("ROLLBACK TO workctl_field")
            conn.execute("RELEASE workctl_field")
    return alone or list(names)


def foreign_key_refusals(conn: sqlite3.Connection, id_of_rowid: Callable[[Any], Any] | None = None) -> list[Refusal]:
    """After a COMMIT failed on a deferred foreign key (the transaction still open): the users rows that
    violate one, each with the column and the table it refers to."""
    refusals = []
    fks = {row[0]: (row[3], row[2]) for row in conn.execute(f"SELECT * FROM pragma_foreign_key_list('{USERS}')")}
    for _, rowid, parent, fk_id in conn.execute(f"SELECT * FROM pragma_foreign_key_check('{USERS}')").fetchall():
        column, _ = fks.get(fk_id, ("?", parent))
        found = conn.execute(f"SELECT {ID} FROM {USERS} WHERE rowid = ?", (rowid,)).fetchone()
        user = found[0] if found else rowid
        refusals.append(Refusal(id_of_rowid(user) if id_of_rowid else user, [column],
                                f"FOREIGN KEY constraint failed: users.{column} refers to {parent}"))
    return refusals


def add_text_column(conn: sqlite3.Connection, name: str) -> None:
    """``ALTER TABLE users ADD COLUMN <name> TEXT`` (a provenance column; the name is built from a checked one)."""
    conn.execute(f"ALTER TABLE {USERS} ADD COLUMN {quote(name)} TEXT")


def restore_field(conn: sqlite3.Connection, name: str, stored_id: Any, restore: Any, expected: Any,
                  stamps: Sequence[tuple[str, Any]] = ()) -> bool:
    """Revert's write: put ``restore`` back into ``name`` of one user only where it still holds
    ``expected``; True when it did. Stamps are (column, value) pairs set alongside."""
    extra = "".join(f", {quote(column)} = ?" for column, _ in stamps)
    cursor = conn.execute(f"UPDATE {USERS} SET {quote(name)} = ?{extra} WHERE {ID} = ? AND {quote(name)} IS ?",
                          (restore, *(v for _, v in stamps), stored_id, expected))
    return cursor.rowcount == 1


def read_field(conn: sqlite3.Connection, name: str, stored_id: Any) -> tuple[bool, Any]:
    """(the user exists, the field's value) for one user."""
    row = conn.execute(f"SELECT {quote(name)} FROM {USERS} WHERE {ID} = ?", (stored_id,)).fetchone()
    return (False, None) if row is None else (True, row[0])


# -- exactly-once markers (written in the target's own transaction) -----------------------------------
def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
        is not None


def read_marker(conn: sqlite3.Connection, table: str, order_id: str, column: str) -> str | None:
    """The JSON text a marker table holds for the order, or None when it was not applied/reverted there."""
    if not _has_table(conn, table):
        return None
    row = conn.execute(f"SELECT {column} FROM {table} WHERE order_id = ?", (order_id,)).fetchone()
    return None if row is None else row[0]


def applied_diff(conn: sqlite3.Connection, order_id: str) -> str | None:
    """The diff (JSON text) an earlier apply of this order recorded in the target, if any."""
    return read_marker(conn, APPLIED_MARKER, order_id, "diff")


def mark_applied(conn: sqlite3.Connection, order_id: str, now: str, diff_json: str) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {APPLIED_MARKER} (order_id TEXT PRIMARY KEY, "
                 "applied_at TEXT NOT NULL, diff TEXT NOT NULL)")
    conn.execute(f"INSERT INTO {APPLIED_MARKER} (order_id, applied_at, diff) VALUES (?, ?, ?)",
                 (order_id, now, diff_json))


def reverted_outcome(conn: sqlite3.Connection, order_id: str) -> str | None:
    return read_marker(conn, REVERTED_MARKER, order_id, "result")


def mark_reverted(conn: sqlite3.Connection, order_id: str, revert_id: str, now: str, result_json: str) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {REVERTED_MARKER} (order_id TEXT PRIMARY KEY, "
                 "revert_id TEXT NOT NULL, reverted_at TEXT NOT NULL, result TEXT NOT NULL)")
    conn.execute(f"INSERT INTO {REVERTED_MARKER} (order_id, revert_id, reverted_at, result) VALUES (?, ?, ?, ?)",
                 (order_id, revert_id, now, result_json))
