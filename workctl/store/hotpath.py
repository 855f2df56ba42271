"""The hot path's contract: what a store does for checkout, submit (and submit + claim-next), heartbeat,
release and the expired-lease sweep. Each backend implements it in its own terms — SQLite as a few
statements (``sqlite_hotpath``), PostgreSQL as server-side functions (``postgres_schema``) — because that
is where the throughput of a work queue is won or lost; the engine (``core/leases.py``,
``core/submit.py``) validates, explains refusals and builds the responses around it.

Every operation is atomic on its own: it joins the caller's transaction when one is open (the engine opens
one when it writes more in the same unit, e.g. a release that records failed users), and otherwise runs
in one of its own — on PostgreSQL a single function call in autocommit, one round trip and one commit.
Each keeps the lifecycle's rules:
compare-and-set transitions fenced by the lease token, an event per transition, the order's per-state
counts moved with each item, and the order's state derived from them (``workctl.states``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Claim:
    """A claim request: who leases, with which token until when, and from where (one order, one type, or
    any order: highest priority first, then oldest)."""

    agent: str
    token: str
    expires: str
    order_id: str | None = None
    type_name: str | None = None


@dataclass(frozen=True)
class Leased:
    """What a claim leased. ``input`` is the item's input as stored (JSON text)."""

    id: str
    order_id: str
    type: str
    attempts: int
    max_attempts: int
    lease_token: str
    lease_expires_at: str
    input: str
    order_state: str


@dataclass(frozen=True)
class Submitted:
    order_id: str
    attempts: int
    order_state: str


@dataclass(frozen=True)
class Released:
    """How a release ends the lease (the engine decides, from the lease it read: the fence guarantees
    nothing changed since): the item's next state, its attempts, when it may be claimed again ('' at
    once), the error to record (or None to keep the last one), and the event's payload."""

    state: str
    attempts: int
    retry_at: str
    error: dict[str, Any] | None
    payload: dict[str, Any]


class HotPath(Protocol):
    def claim(self, conn: Any, request: Claim, now: str) -> Leased | None: ...

    def submit(self, conn: Any, *, item_id: str, agent: str, token: str, result: str, now: str,
               then: Claim | None = None) -> tuple[Submitted | None, Leased | None]: ...

    def heartbeat(self, conn: Any, *, item_id: str, agent: str, token: str, expires: str, now: str) -> str | None: ...

    def release(self, conn: Any, *, item_id: str, agent: str, token: str, now: str,
                release: Released) -> str | None: ...

    def reclaim_expired(self, conn: Any, now: str) -> tuple[int, int]: ...
