"""The store: where orders, items and their history live. Two backends behind one interface
(``store/base.py``): SQLite, a file (the embedded default), and PostgreSQL, a ``postgresql://`` URL (for
agents on many machines; psycopg is imported only then). ``open_store`` picks one by the location's
form; the engine then speaks to the connection it returns and never asks which backend it is.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any

from .base import Connection

DEFAULT_DB = "workctl.db"


def default_location() -> str:
    return os.environ.get("WORKCTL_DB") or DEFAULT_DB


def checked_location(db: str | os.PathLike[str] | None) -> str:
    """The store location to open: ``db``, else the default; an empty one, or one holding a NUL byte (no
    file system can name it), is a usage error rather than a ValueError deep inside."""
    if db is None:
        return default_location()
    text = os.fspath(db)
    if not text or "\x00" in text:
        from ..errors import Usage

        raise Usage(f"the store path {text[:80]!r} is not a file path (empty, or holds a NUL byte); "
                    "give a file path or a postgresql:// URL with --db")
    return text


def is_url(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def open_store(location: str, *, create: bool) -> Connection:
    """A connection to the store at ``location`` (opened, checked and migrated). Only SQLite creates
    anything: a PostgreSQL database must exist already (workctl creates its tables in it)."""
    if is_url(location):
        from .postgres import connect as connect_postgres

        return connect_postgres(location)
    from .sqlite import connect as connect_sqlite

    return connect_sqlite(location, create=create)  # type: ignore[return-value]


def write_tx(conn: Connection) -> AbstractContextManager[Any]:
    """One write transaction on the store (SQLite: BEGIN IMMEDIATE; PostgreSQL: BEGIN … COMMIT)."""
    return conn.transaction()


def describe(location: str) -> str:
    """The location as messages may show it: an absolute path, or a URL without its password."""
    if is_url(location):
        from urllib.parse import urlsplit

        parts = urlsplit(location)
        user = f"{parts.username}@" if parts.username else ""
        port = f":{parts.port}" if parts.port else ""
        return f"postgresql://{user}{parts.hostname or 'localhost'}{port}{parts.path or '/'}"
    return os.path.abspath(location)
