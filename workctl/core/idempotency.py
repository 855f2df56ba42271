"""Idempotency keys: a replay with the same key and request returns the stored response; the same
key with a different request is refused (``idempotency_mismatch``, exit 6).

The key itself is stored only as a SHA-256 hash; the request is fingerprinted from its canonical
JSON. Only successful responses are stored (a failure changes nothing, so a retry simply runs again).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from ..errors import Conflict


@dataclass(frozen=True)
class Key:
    scope: str        # e.g. "propose", "submit:<item id>", "approve:<order id>"
    key_hash: str
    fingerprint: str

    @classmethod
    def make(cls, scope: str, key: str, request: Any) -> Key:
        import hashlib  # only requests with a key pay for it (start-up time of the agent commands)

        canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return cls(scope, hashlib.sha256(key.encode()).hexdigest(),
                   hashlib.sha256(canonical.encode()).hexdigest())


def lookup(conn: sqlite3.Connection, key: Key) -> Any | None:
    """The stored response for this key, None if unused; raise Conflict if used for another request."""
    row = conn.execute("SELECT fingerprint, response FROM idempotency_keys WHERE scope = ? AND key_hash = ?",
                       (key.scope, key.key_hash)).fetchone()
    if row is None:
        return None
    if row[0] != key.fingerprint:
        raise Conflict(
            f"idempotency key already used for a different {key.scope.split(':')[0]} request; "
            "use a new key for a new request",
            code="idempotency_mismatch",
        )
    return json.loads(row[1])


def store(conn: sqlite3.Connection, key: Key, response: Any, now: str) -> None:
    conn.execute(
        "INSERT INTO idempotency_keys (scope, key_hash, fingerprint, response, exit_code, created_at) "
        "VALUES (?, ?, ?, ?, 0, ?)",
        (key.scope, key.key_hash, key.fingerprint,
         json.dumps(response, separators=(",", ":"), ensure_ascii=False), now),
    )


def purge(conn: sqlite3.Connection, older_than: str) -> int:
    return conn.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (older_than,)).rowcount
