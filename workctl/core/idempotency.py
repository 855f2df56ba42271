"""Idempotency keys: a replay with the same key and request returns the stored response; the same
key with a different request is refused (``idempotency_mismatch``, exit 6).

The key itself is stored only as a SHA-256 hash; the request is fingerprinted from its canonical
JSON. Only successful responses are stored (a failure changes nothing, so a retry simply runs again).

Every keyed operation uses one ``Guard`` the same way: ``replay`` before any work (a cheap early answer),
``replay`` again inside the write transaction (another process may have finished the same request
meanwhile; this one also claims the key), and ``record`` of the response in that transaction::

    guard = Guard.make("approve:" + order_id, key, {"order_id": order_id})
    if (earlier := guard.replay(s.conn)) is not None:
        return earlier
    with write_tx(s.conn) as conn:
        if (earlier := guard.replay(conn)) is not None:
            return earlier
        ...
        guard.record(conn, response, now)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import Conflict
from ..store.base import Connection


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


def lookup(conn: Connection, key: Key) -> Any | None:
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


def purge(conn: Connection, older_than: str) -> int:
    return conn.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (older_than,)).rowcount


@dataclass(frozen=True)
class Guard:
    """The idempotency of one operation: inert (every method a no-op) when the caller gave no key."""

    key: Key | None = None

    @classmethod
    def make(cls, scope: str, key: str | None, request: Any) -> Guard:
        return cls(Key.make(scope, key, request) if key else None)

    def replay(self, conn: Connection) -> Any | None:
        """The response stored for this key and request; None when there is none (or no key).

        Inside the operation's write transaction it also *claims* the key: a placeholder row, inserted
        unless one exists. A concurrent transaction with the same key (PostgreSQL runs them side by
        side) waits on that row until this one ends, then finds the stored response — so two
        processes with one key make one order, on either backend."""
        if not self.key:
            return None
        if conn.in_transaction:
            claimed = conn.execute(
                "INSERT INTO idempotency_keys (scope, key_hash, fingerprint, response, exit_code, created_at) "
                "VALUES (?, ?, ?, '', 0, '') ON CONFLICT (scope, key_hash) DO NOTHING",
                (self.key.scope, self.key.key_hash, self.key.fingerprint)).rowcount
            if claimed:
                return None
        return lookup(conn, self.key)

    def record(self, conn: Connection, response: Any, now: str) -> None:
        """Store the response under the key claimed by ``replay`` in this transaction."""
        if self.key:
            conn.execute("UPDATE idempotency_keys SET response = ?, created_at = ? WHERE scope = ? AND key_hash = ?",
                         (json.dumps(response, separators=(",", ":"), ensure_ascii=False), now,
                          self.key.scope, self.key.key_hash))
