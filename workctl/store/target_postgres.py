"""The target's PostgreSQL side: what ``users`` is (the catalogs), how its columns store values (their
types), and how its refusals read. The engine reaches it through ``store/target``.

**Values travel as text.** Every value written to (or compared with) a users column is sent as an
untyped literal — ``7`` as ``'7'``, ``true`` as ``'true'``, an object as its JSON — and PostgreSQL reads
it with the column's own input function, exactly as it would read ``UPDATE users SET col = '…'``. So
"what the column holds after writing this value" has one answer, the column type's, and
``PgStoredForm.normalise`` computes it: in Python for the exact cases (text into a text column, an
integer in range into an integer column…), and by asking the server (``SELECT CAST(… AS type)``, once
per distinct value) for the rest. What the server refuses (``'7.5'`` into an integer) is a refusal,
reported before any lock.

**Values as read** are made JSON-safe by ``readable``: numeric → int when integral, else float; dates
and times → ISO-8601 text; uuid → text.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import re
import uuid
from typing import Any, Callable, Iterable, Sequence

import psycopg
from psycopg import errors as pg_errors

from ..jsonio import dumps
from .target_model import USERS, Column, Refusal

INTEGRITY_ERRORS: tuple[type[Exception], ...] = (psycopg.IntegrityError, psycopg.DataError,
                                                 pg_errors.RaiseException)
DATABASE_ERRORS: tuple[type[Exception], ...] = (psycopg.Error,)

_INT_RANGES = {"smallint": (-(2**15), 2**15 - 1), "integer": (-(2**31), 2**31 - 1),
               "bigint": (-(2**63), 2**63 - 1)}
_TEXT = re.compile(r"^(text|character varying|character|varchar|char|citext)(\((\d+)\))?$")


def text_of(value: Any) -> Any:
    """A value as the untyped literal it is sent as (None stays NULL)."""
    t = type(value)
    if value is None or t is str:
        return value
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if t is float:
        return repr(value)
    if t is dict or t is list:
        return dumps(value)
    return str(value)


def rows(values: Iterable[Sequence[Any]]) -> Iterable[tuple[Any, ...]]:
    return (tuple(text_of(v) for v in row) for row in values)


def row(values: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(text_of(v) for v in values)


def in_list(conn: Any, values: list[Any]) -> tuple[str, Any]:
    """Ids as an array of their own type (stored ids are normalised: all int, or all text)."""
    return "= ANY(?)", values


def read_column(quoted: str) -> str:
    return quoted


def readable(value: Any) -> Any:
    """A value as read, JSON-safe and comparable with what ``normalise`` computes."""
    t = type(value)
    if value is None or t is str or t is int or t is float or t is bool or t is dict or t is list:
        return value
    if t is decimal.Decimal:
        if value.is_finite() and value == value.to_integral_value() and value.as_tuple().exponent >= 0:
            return int(value)
        return float(value)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def param_for(name: str) -> str:
    return "?"


def message(exc: BaseException | None) -> str:
    if exc is None:
        return "the target refused the update"
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    detail = getattr(diag, "message_detail", None) if diag is not None else None
    text = primary or str(exc).strip().splitlines()[0]
    return f"{text} ({detail})" if detail else text


def named_fields(message: str, names: list[str]) -> list[str]:
    """The fields a refusal's message names: ``Key (email)=…``, ``column "email"``, a constraint
    named after the column (``users_email_key``, ``users_email_check``)."""
    found = []
    for name in names:
        escaped = re.escape(name)
        if (re.search(rf'Key \((?:[^)]*, )?"?{escaped}"?(?:, [^)]*)?\)', message)
                or re.search(rf'column "{escaped}"', message)
                or re.search(rf'"{re.escape(USERS)}_{escaped}_(?:key|check|fkey)"', message)):
            found.append(name)
    return found


def users_kind(conn: Any) -> str | None:
    row_ = conn.execute("SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass(?)", (USERS,)).fetchone()
    if row_ is None:
        return None
    return {"r": "table", "p": "table", "v": "view", "m": "view", "f": "table"}.get(row_[0], "view")


def _family(declared: str) -> str:
    if _TEXT.match(declared):
        return "TEXT"
    if declared in _INT_RANGES:
        return "INTEGER"
    if declared == "boolean":
        return "BOOLEAN"
    if declared in ("double precision", "real"):
        return "FLOAT"
    if declared.startswith("numeric"):
        return "NUMERIC"
    if declared in ("json", "jsonb"):
        return "JSON"
    return "OTHER"


def columns(conn: Any) -> dict[str, Column]:
    """The columns of ``users`` by lower-cased name, in table order (empty when there is no table)."""
    found: dict[str, Column] = {}
    for name, declared, not_null, pk in conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
            "coalesce(a.attnum = ANY(i.indkey), false) FROM pg_attribute a "
            "LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary "
            "WHERE a.attrelid = to_regclass(?) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (USERS,)):
        found.setdefault(name.lower(), Column(name, declared, _family(declared), bool(not_null), bool(pk)))
    return found


def id_is_unique(conn: Any, cols: dict[str, Column]) -> bool:
    from .target_model import ID

    row_ = conn.execute(
        "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indrelid = to_regclass(?) AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL "
        "AND i.indexprs IS NULL AND a.attname = ?", (USERS, cols[ID].name)).fetchone()
    return row_ is not None


def has_table(conn: Any, name: str) -> bool:
    return conn.execute("SELECT to_regclass(?) IS NOT NULL", (name,)).fetchone()[0]


def foreign_key_refusals(conn: Any, id_of_rowid: Callable[[Any], Any] | None = None) -> list[Refusal]:
    """PostgreSQL checks foreign keys per statement (the refused row is found then), unless they are
    deferred: then the failed COMMIT names the constraint, and no row can be named after it."""
    return []


def stored_form(conn: Any, cols: dict[str, Column]) -> PgStoredForm:
    return PgStoredForm(conn, cols)


class _Refused:
    """What ``normalise`` returns for a value the column refuses; ``refusal`` reports it."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"<refused: {self.reason}>"


class PgStoredForm:
    """What the target's columns would hold after writing a value, and what they refuse up front
    (``target.StoredForm``)."""

    def __init__(self, conn: Any, cols: dict[str, Column]):
        self.conn = conn
        self.cols = cols
        self._cache: dict[str, Callable[[Any], Any]] = {}
        self._asked: dict[tuple[str, Any], Any] = {}

    def __enter__(self) -> PgStoredForm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._asked.clear()

    def normaliser(self, column: str) -> Callable[[Any], Any]:
        key = column.lower()
        if key not in self._cache:
            self._cache[key] = self._build(self.cols[key])
        return self._cache[key]

    def normalise(self, column: str, value: Any) -> Any:
        return self.normaliser(column)(value)

    def refusal(self, column: str, stored: Any) -> str | None:
        col = self.cols[column.lower()]
        if isinstance(stored, _Refused):
            return f"{stored.reason} (users.{col.name})"
        if stored is None and col.not_null and not col.primary_key:
            return f'null value in column "{col.name}" of relation "{USERS}" violates not-null constraint'
        return None

    # Exact answers in Python for the common cases; the server's own cast for everything else.
    def _build(self, col: Column) -> Callable[[Any], Any]:
        ask = self._asker(col)
        family = col.affinity
        if family == "TEXT":
            match = _TEXT.match(col.declared)
            padded = bool(match and match.group(1) in ("character", "char"))
            limit = int(match.group(3)) if match and match.group(3) else None
            if padded or (match and match.group(1) == "citext"):
                return ask

            def text(v: Any) -> Any:
                if v is None:
                    return None
                t = text_of(v)
                if limit is not None and len(t) > limit:
                    return ask(v)
                return t
            return text
        if family == "INTEGER":
            low, high = _INT_RANGES[col.declared]
            return lambda v: v if v is None or (type(v) is int and low <= v <= high) else ask(v)
        if family == "BOOLEAN":
            return lambda v: v if v is None or type(v) is bool else ask(v)
        if family == "FLOAT" and col.declared == "double precision":
            return lambda v: v if v is None or (type(v) is float and math.isfinite(v)) else ask(v)
        if family == "NUMERIC" and col.declared == "numeric":
            return lambda v: v if v is None or type(v) is int else ask(v)
        if family == "JSON":
            # A JSON value reads back as the same value (jsonb may reorder keys: dicts compare equal).
            return lambda v: v
        return ask

    def _asker(self, col: Column) -> Callable[[Any], Any]:
        declared = col.declared  # from format_type(): a valid type name

        def ask(value: Any) -> Any:
            if value is None:
                return None
            literal = text_of(value)
            key = (declared, literal)
            if key in self._asked:
                return self._asked[key]
            savepoint = self.conn.in_transaction
            if savepoint:
                self.conn.execute("SAVEPOINT workctl_cast")
            try:
                answer = readable(self.conn.execute(f"SELECT CAST(CAST(? AS text) AS {declared})",
                                                    (literal,)).fetchone()[0])
            except (psycopg.DataError, psycopg.ProgrammingError) as exc:
                answer = _Refused(message(exc))
                if savepoint:
                    self.conn.execute("ROLLBACK TO SAVEPOINT workctl_cast")
            if savepoint:
                self.conn.execute("RELEASE SAVEPOINT workctl_cast")
            self._asked[key] = answer
            return answer
        return ask
