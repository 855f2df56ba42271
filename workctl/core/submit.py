"""submit: an agent hands in the result of the item it leased; the type checks it before any lock."""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import Invalid
from ..jsonio import dumps, loads
from ..store.sqlite import write_tx
from ..types import get_type
from .idempotency import Guard
from .leases import check_lease, fence, lease_problem, require_token
from .lifecycle import Actor, move_item, refresh_order
from .session import Session

SHOWN_PROBLEMS = 5


class LazyPayload(Mapping[str, Any]):
    """The order's payload, read and parsed only if a type's validation asks for it: for a
    1,000,000-id order that parse would otherwise dominate every submit."""

    def __init__(self, s: Session, order_id: str):
        self._s, self._order_id = s, order_id
        self._value: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._value is None:
            self._value = loads(self._s.order_row(self._order_id)["payload"])
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Any:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def submit(s: Session, item_id: str, result: Any, *, agent: str, token: str | None = None,
           idempotency_key: str | None = None) -> dict[str, Any]:
    token = require_token(token, "submit")
    guard = Guard.make(f"submit:{item_id}", idempotency_key, {"result": result, "agent": agent})
    if (earlier := guard.replay(s.conn)) is not None:
        return earlier
    row = check_lease(s, item_id, agent, token)
    order_type = get_type(row["type"])
    item_input = loads(row["input"])
    problems = order_type.validate_submission(item_input, result, LazyPayload(s, row["order_id"]))
    if problems:
        listed = "; ".join(f"{p['path']}: {p['message']}" for p in problems[:SHOWN_PROBLEMS])
        more = f" (and {len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
        raise Invalid(f"result rejected, the lease is kept so you can fix and resubmit: {listed}{more}",
                      code="result_invalid", details=problems)
    now = s.now()
    guard_sql, guard_params = fence(agent, token, now)
    with write_tx(s.conn) as conn:
        if (earlier := guard.replay(conn)) is not None:
            return earlier
        # Submitting clears the lease: an item awaiting approval is never reclaimed.
        moved = move_item(conn, item_id=item_id, order_id=row["order_id"], current="leased", target="submitted",
                          now=now, actor=Actor("agent", agent), payload={"attempt": row["attempts"]},
                          sets={"result": dumps(result), "submitted_by": agent, "leased_by": None,
                                "lease_token": None, "lease_expires_at": None, "visible_at": ""},
                          guard=guard_sql, guard_params=guard_params)
        if not moved:
            raise lease_problem(s.item_row(item_id), agent, token, now)
        order_type.record_submitted(conn, {"id": item_id, "order_id": row["order_id"], "input": item_input,
                                           "attempts": row["attempts"]}, result, now)
        order_state = refresh_order(conn, row["order_id"], now=now)
        response = {"item": {"id": item_id, "state": "submitted"},
                    "order": {"id": row["order_id"], "state": order_state}}
        guard.record(conn, response, now)
    return response
