"""Moving a store between backends (or machines): ``workctl export`` writes every row of workctl's tables as
JSON lines; ``workctl import`` loads them into an empty store, SQLite or PostgreSQL, in one transaction.

The format (``workctl-export/1``), one JSON document per line::

    {"format": "workctl-export/1", "backend": "sqlite", "exported_at": "…"}
    {"table": "orders", "columns": ["id", "type", …]}
    ["6b1e…", "user.data.sync", …]            (one line per row, values in the columns' order)
    …
    {"end": true, "rows": 12345}

Both backends hold the same tables and columns (``store/sqlite_migrations`` and ``store/postgres_schema``
mirror each other), so the export of one imports into the other. The users table is not part of it: it
is the application's data, and stays where it is (point ``[target] db`` at it) or moves with the
database's own tools. An import is refused unless the store holds no orders and no API tokens; the
file is read with the strict JSON reader, and a table or column the store does not have, a value that
is not a scalar, or a missing end line refuses the whole file (exit 5) with its line number — the
store is left as it was.
"""

from __future__ import annotations

from typing import IO, Any, Iterable, Iterator

from ..errors import Conflict, Invalid
from ..jsonio import dumps
from ..store import write_tx
from .session import Session

FORMAT = "workctl-export/1"
# Every table of the store, parents before children; (table, its identity column or None).
TABLES: tuple[tuple[str, str | None], ...] = (
    ("orders", None), ("order_counts", None), ("items", "n"), ("item_inputs", None), ("item_results", None),
    ("events", "id"), ("idempotency_keys", None), ("sync_failures", "id"), ("provenance", "id"),
    ("provenance_attempts", None), ("outbox", "id"), ("reverts", None), ("alert_marks", None),
    ("api_tokens", None), ("sync_scopes", "id"), ("sync_watermarks", None),
)
MAX_LINE_BYTES = 64 * 1024 * 1024
BATCH_ROWS = 5_000


def _columns(s: Session, table: str) -> list[str]:
    cursor = s.conn.execute(f"SELECT * FROM {table} WHERE 1 = 0")
    return [column[0] for column in cursor.description]


def export_lines(s: Session) -> Iterator[str]:
    """The store as export lines (streamed: one table's rows at a time, never the whole store)."""
    yield dumps({"format": FORMAT, "backend": s.conn.dialect, "exported_at": s.now()})
    total = 0
    for table, _ in TABLES:
        columns = _columns(s, table)
        yield dumps({"table": table, "columns": columns})
        for row in s.conn.stream(f"SELECT {', '.join(columns)} FROM {table}"):
            total += 1
            yield dumps(list(row))
    yield dumps({"end": True, "rows": total})


def _parse(lines: Iterable[bytes]) -> Iterator[tuple[int, Any]]:
    from ..strictjson import StrictJsonError, loads

    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield number, loads(raw, max_bytes=MAX_LINE_BYTES)
        except StrictJsonError as exc:
            raise Invalid(f"line {number} of the export is not valid JSON ({exc}); nothing was imported",
                          code="invalid_json") from None


def _insert(conn: Any, insert: str, batch: list[list[Any]], table: str, number: int) -> None:
    try:
        conn.executemany(insert, batch)
    except conn.driver_errors as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Invalid(f"the store refused rows of {table} read before line {number} ({reason}); nothing was "
                      "imported", code="invalid") from None


class _Loader:
    """Reads the export's lines after the header and inserts their rows, a batch at a time."""

    def __init__(self, s: Session, conn: Any):
        self.s, self.conn = s, conn
        self.known = dict(TABLES)
        self.counts: dict[str, int] = {}
        self.table: str | None = None
        self.insert = ""
        self.width = 0
        self.batch: list[list[Any]] = []
        self.ended = False

    def row(self, number: int, doc: list[Any]) -> None:
        if self.table is None:
            raise Invalid(f"line {number}: a row before any table line; nothing was imported", code="invalid")
        if len(doc) != self.width or any(isinstance(v, dict | list | bool) for v in doc):
            raise Invalid(f"line {number}: a row of {self.table} must be {self.width} scalar values; nothing was "
                          "imported", code="invalid")
        self.batch.append(doc)
        self.counts[self.table] += 1
        if len(self.batch) >= BATCH_ROWS:
            self.flush(number)

    def flush(self, number: int) -> None:
        if self.batch:
            _insert(self.conn, self.insert, self.batch, self.table or "?", number)
            self.batch = []

    def header(self, number: int, doc: dict[str, Any]) -> None:
        table, columns = doc.get("table"), doc.get("columns")
        if not isinstance(table, str) or table not in self.known or not isinstance(columns, list):
            raise Invalid(f"line {number}: unknown table {table!r} (a store has: {', '.join(self.known)}); nothing "
                          "was imported", code="invalid")
        have = set(_columns(self.s, table))
        unknown = [c for c in columns if not isinstance(c, str) or c not in have]
        if unknown or len(set(columns)) != len(columns):
            raise Invalid(f"line {number}: table {table} has no column(s) {unknown} (or a column twice); "
                          "nothing was imported", code="invalid")
        self.table, self.width = table, len(columns)
        self.counts[table] = 0
        self.insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * self.width)})"

    def line(self, number: int, doc: Any) -> None:
        if self.ended:
            raise Invalid(f"line {number}: data after the end line; nothing was imported", code="invalid")
        if isinstance(doc, list):
            self.row(number, doc)
            return
        if not isinstance(doc, dict):
            raise Invalid(f"line {number}: expected a table line, a row or the end line; nothing was imported",
                          code="invalid")
        self.flush(number)
        if doc.get("end") is True:
            self.ended = True
        else:
            self.header(number, doc)


def import_lines(s: Session, stream: IO[bytes]) -> dict[str, Any]:
    """Load an export into this store, which must hold no orders and no tokens; all or nothing."""
    parsed = _parse(stream)
    first = next(parsed, None)
    if first is None or not isinstance(first[1], dict) or first[1].get("format") != FORMAT:
        raise Invalid(f"not a workctl export: the first line must be {{\"format\": \"{FORMAT}\", …}}; nothing was "
                      "imported", code="invalid")
    with write_tx(s.conn) as conn:
        if conn.execute("SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM api_tokens)").fetchone()[0]:
            raise Conflict("the store already holds orders or API tokens; import into a new, empty store "
                           "(workctl --db NEW init, then workctl --db NEW import FILE)", code="store_not_empty")
        for table, _ in TABLES:
            conn.execute(f"DELETE FROM {table}")  # what a new store seeds (alert marks): the export's win
        loader = _Loader(s, conn)
        for number, doc in parsed:
            loader.line(number, doc)
        if not loader.ended:
            raise Invalid("the export has no end line (it was cut short); nothing was imported", code="invalid")
        for table, identity in TABLES:
            if identity:
                conn.follow_identity(table, identity)
    return {"imported": loader.counts, "rows": sum(loader.counts.values())}
