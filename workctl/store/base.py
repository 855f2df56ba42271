"""What the engine may ask of a store connection, whichever backend: SQL in the one dialect the engine
writes (``?`` placeholders, standard SQL both backends run), rows readable by position and by column
name, write transactions, and the few things that truly differ, which each backend provides itself (its
hot path, its durable commit, how a list of values is passed to ``IN``, how its errors read)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Iterable, Iterator, Protocol, Sequence


# A result row: readable by position and by column name (sqlite3.Row, or the PostgreSQL store's Row).
Row = Any


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    dialect: str                                   # "sqlite" | "postgres": for messages and tests, never branches
    driver_errors: tuple[type[Exception], ...]

    @property
    def hot(self) -> Any: ...                      # the backend's hot path (store/hotpath.HotPath)

    @property
    def location(self) -> str: ...                 # the store as messages show it (no password)

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    def transaction(self) -> AbstractContextManager[Any]: ...

    def durable(self) -> AbstractContextManager[None]: ...

    def translate(self, exc: Exception) -> Any: ...

    def describe(self) -> dict[str, object]: ...

    def in_list(self, values: Iterable[Any]) -> tuple[str, Any]: ...

    def exclusive(self, name: str) -> None: ...     # serialise this write transaction with others naming it

    def stream(self, sql: str, parameters: Any = ..., /) -> Iterator[Any]: ...  # rows without holding them all

    def follow_identity(self, table: str, column: str) -> None: ...  # after rows were inserted with their ids

    def close(self) -> None: ...
