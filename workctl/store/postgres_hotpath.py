"""The hot path on PostgreSQL: each operation is one call of a server-side function
(``postgres_schema``), so a claim or a submit + claim-next is one round trip, and — when the caller has
no transaction open — one commit, with no client round trip inside the lock window of the order's
counter row (docs/hotpath-notes.md, variant pg-f). Inside a caller's transaction the call simply joins
it (a release that also records failed users, a submit with an idempotency key).

The functions keep every rule the SQLite statements keep (``sqlite_hotpath``): fenced compare-and-set
transitions, an event per transition, the per-order counters, the order's state derived from them with
the lifecycle tables generated from ``workctl.states``.
"""

from __future__ import annotations

from typing import Any

from ..jsonio import dumps
from .hotpath import Claim, Leased, Released, Submitted


def _leased(row: Any, offset: int) -> Leased | None:
    (item_id, order_id, type_name, attempts, max_attempts, token, expires, text, state) = row[offset:offset + 9]
    if item_id is None:
        return None
    return Leased(id=item_id, order_id=order_id, type=type_name, attempts=attempts, max_attempts=max_attempts,
                  lease_token=token, lease_expires_at=expires, input=text, order_state=state)


def claim(conn: Any, request: Claim, now: str) -> Leased | None:
    row = conn.execute("SELECT * FROM wc_claim(?, ?, ?, ?, ?, ?)",
                       (request.agent, request.token, request.expires, now, request.order_id,
                        request.type_name)).fetchone()
    return _leased(row, 0)


def submit(conn: Any, *, item_id: str, agent: str, token: str, result: str, now: str,
           then: Claim | None = None) -> tuple[Submitted | None, Leased | None]:
    row = conn.execute("SELECT * FROM wc_submit(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (item_id, agent, token, result, now, then is not None,
                        then.token if then else None, then.expires if then else None,
                        then.order_id if then else None, then.type_name if then else None)).fetchone()
    if not row[0]:
        return None, None
    submitted = Submitted(order_id=row[1], attempts=row[2], order_state=row[3])
    return submitted, _leased(row, 4)


def heartbeat(conn: Any, *, item_id: str, agent: str, token: str, expires: str, now: str) -> str | None:
    row = conn.execute("SELECT wc_heartbeat(?, ?, ?, ?, ?)", (item_id, agent, token, expires, now)).fetchone()
    return None if row[0] is None else str(row[0])


def release(conn: Any, *, item_id: str, agent: str, token: str, now: str, release: Released) -> str | None:
    event = "failed" if release.state == "failed" else "released"
    row = conn.execute("SELECT wc_release(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (item_id, agent, token, now, release.state, release.attempts, release.retry_at,
                        None if release.error is None else dumps(release.error), event,
                        dumps(release.payload))).fetchone()
    return None if row[0] is None else str(row[0])


def reclaim_expired(conn: Any, now: str) -> tuple[int, int]:
    row = conn.execute("SELECT * FROM wc_reclaim_all(?)", (now,)).fetchone()
    return int(row[0]), int(row[1])
