"""Which columns of ``users`` a sync may write: existing ones, not the key, not deny-listed, not the
provenance bookkeeping columns. Propose checks an order's fields against this list, and apply checks
again (the table may have changed since), so nothing user-supplied reaches SQL text except as a
checked, quoted identifier."""

from __future__ import annotations

import re
import sqlite3
from typing import Any, Iterable, Mapping

from ...errors import Invalid
from ...store.target import user_columns

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# Substrings of column names that are never synced unless the config says otherwise.
DEFAULT_DENY = ("password", "passwd", "secret", "token", "api_key", "apikey", "hash", "salt",
                "admin", "role", "permission", "superuser", "is_staff")
# Provenance columns (workctl.types.user_data_sync.provenance): bookkeeping, never a syncable field.
FROM_SUFFIX = "_updated_from"
AT_SUFFIX = "_updated_at"
SUFFIXES = (FROM_SUFFIX, AT_SUFFIX)


def is_provenance_column(name: str) -> bool:
    """``<field>_updated_from`` / ``<field>_updated_at``."""
    return name.lower().endswith(SUFFIXES)


def deny_list(settings: Mapping[str, Any]) -> tuple[str, ...]:
    """The built-in deny-list plus the config's ``deny_fields`` (which can only add, never remove)."""
    extra = settings.get("deny_fields", ())
    if isinstance(extra, str) or not all(isinstance(x, str) for x in extra):
        raise Invalid("config: deny_fields must be a list of strings", code="config_invalid")
    return (*DEFAULT_DENY, *extra)


def allowed_columns(conn: sqlite3.Connection, deny: Iterable[str] = DEFAULT_DENY) -> list[str]:
    """Columns of ``users`` that a sync may write: existing, not the key, not deny-listed."""
    columns = user_columns(conn)
    if not columns:
        raise Invalid("the target database has no 'users' table to sync into", code="no_users_table")
    deny_lower = [d.lower() for d in deny]
    return [c for c in columns
            if c.lower() != "id" and not any(d in c.lower() for d in deny_lower)
            and re.match(IDENTIFIER, c) and not is_provenance_column(c)]
