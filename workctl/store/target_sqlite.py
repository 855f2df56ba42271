"""The target's SQLite side: what ``users`` is (pragmas), how its columns store values (type
affinity), and which rows break a deferred foreign key. The engine reaches it through ``store/target``."""

from __future__ import annotations

import math
import re
import sqlite3
from typing import Any, Callable, Iterable, Sequence

from .target_model import ID, USERS, Column, Refusal

INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)


def stored_form(conn: sqlite3.Connection, cols: dict[str, Column]) -> SqliteStoredForm:
    return SqliteStoredForm(cols, is_strict(conn))


def in_list(conn: Any, values: list[Any]) -> tuple[str, Any]:
    from ..jsonio import dumps

    return "IN (SELECT value FROM json_each(?))", dumps(values)


def rows(values: Iterable[Sequence[Any]]) -> Iterable[Sequence[Any]]:
    """Rows of values as the driver takes them (SQLite: as they are)."""
    return values


def row(values: Sequence[Any]) -> Sequence[Any]:
    return values


def read_column(quoted: str) -> str:
    """How a column is read (SQLite hands out what it stores)."""
    return quoted


def readable(value: Any) -> Any:
    return value


def param_for(name: str) -> str:
    """The placeholder a value for ``name`` is written with (SQLite converts by the column's affinity)."""
    return "?"


def message(exc: BaseException | None) -> str:
    return str(exc)


def named_fields(message: str, names: list[str]) -> list[str]:
    """The fields an IntegrityError's message names (SQLite says ``users.<column>``)."""
    return [n for n in names if re.search(rf"\busers\.{re.escape(n)}\b", message, re.IGNORECASE)]


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



def id_is_unique(conn: sqlite3.Connection, cols: dict[str, Column]) -> bool:
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



_STRICT_CLASS = {"INT": int, "INTEGER": int, "REAL": float, "TEXT": str, "BLOB": bytes}
_AFFINITIES = ("INTEGER", "TEXT", "BLOB", "REAL", "NUMERIC")
_DIGIT = re.compile(r"\d")



class SqliteStoredForm:
    """What the target's columns would hold after writing a value, and what they refuse up front.

    ``normalise(column, value)`` — the value read back after writing ``value`` into ``column``.
    ``refusal(column, stored)`` — why the column would refuse it (NOT NULL, a STRICT table's type), or None.
    Columns are names of ``users`` (any case). Close it (or use ``with``) to drop the in-memory helper."""

    def __init__(self, cols: dict[str, Column], strict: bool = False):
        self.cols = cols
        self.strict = strict
        self._mem: sqlite3.Connection | None = None
        self._cache: dict[str, Callable[[Any], Any]] = {}

    def __enter__(self) -> SqliteStoredForm:
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



def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
        is not None


