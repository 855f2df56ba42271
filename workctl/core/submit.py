"""submit: an agent hands in the result of the item it leased; the type checks it before any lock."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Mapping

from ..clock import after
from ..errors import Invalid
from ..jsonio import dumps, loads
from ..store.hotpath import Claim
from ..store import write_tx
from ..types import get_type
from .idempotency import Guard
from .ids import new_token
from .leases import check_lease, lease_problem, lease_ttl, leased_item, require_token
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


@dataclass(frozen=True)
class Next:
    """``submit --next``: claim the next item in the same transaction (of one order, one type, or any)."""

    order_id: str | None = None
    type_name: str | None = None
    ttl: int | None = None


def submit(s: Session, item_id: str, result: Any, *, agent: str, token: str | None = None,
           idempotency_key: str | None = None, then: Next | None = None) -> dict[str, Any]:
    """Hand in a leased item's result (checked by its type before any lock) and, with ``then``, take the
    next item in the same transaction: one commit per item for an agent that works a queue."""
    token = require_token(token, "submit")
    request = {"result": result, "agent": agent}
    if then is not None:
        request["next"] = {"order_id": then.order_id, "type": then.type_name, "ttl": then.ttl}
    guard = Guard.make(f"submit:{item_id}", idempotency_key, request)
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
    claim = _claim(s, then, agent)
    now = s.now()
    # The submit (and claim) is atomic on its own; a transaction around it only when more is written with it.
    joined = guard.key is not None or order_type.records_submission(result)
    with write_tx(s.conn) if joined else nullcontext(s.conn) as conn:
        if (earlier := guard.replay(conn)) is not None:
            return earlier
        # Submitting clears the lease: an item awaiting approval is never reclaimed.
        done, leased = s.hot.submit(conn, item_id=item_id, agent=agent, token=token, result=dumps(result), now=now,
                                    then=claim)
        if done is None:
            raise lease_problem(s.item_row(item_id), agent, token, now)
        order_type.record_submitted(conn, {"id": item_id, "order_id": done.order_id, "input": item_input,
                                           "attempts": done.attempts}, result, now)
        response: dict[str, Any] = {"item": {"id": item_id, "state": "submitted"},
                                    "order": {"id": done.order_id, "state": done.order_state}}
        if then is not None:
            response["next"] = None if leased is None else leased_item(s, leased)
        guard.record(conn, response, now)
    return response


def _claim(s: Session, then: Next | None, agent: str) -> Claim | None:
    if then is None:
        return None
    if then.order_id:
        s.order_head(then.order_id)
    if then.type_name:
        get_type(then.type_name)
    return Claim(agent=agent, token=new_token(), expires=after(s.clock(), lease_ttl(s, then.ttl)),
                 order_id=then.order_id, type_name=then.type_name)
