"""The HTTP API's routes as data: path, method, scope, headers, body and query fields, and the one
library call each makes. ``app.py`` serves this table and ``openapi.py`` documents it, so the two cannot
disagree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..limits import MAX_TEXT_CHARS, MAX_TTL_SECONDS, PRIORITY_MAX, PRIORITY_MIN

if TYPE_CHECKING:
    from ..api import Workctl

BASE = "/api/agent/work"
MAX_LIMIT = 10_000             # GET /orders pages
MAX_TEXT = MAX_TEXT_CHARS       # reasons and error messages


@dataclass(frozen=True)
class Field:
    """One body or query field: its JSON type and bounds (checked by app.py, documented by openapi.py)."""

    kind: str                               # string | integer | boolean | object | any
    required: bool = False
    minimum: int | None = None
    maximum: int | None = None
    max_length: int | None = None
    enum: tuple[str, ...] | None = None
    description: str = ""


@dataclass
class Call:
    """Everything a route's library call may use, parsed and checked."""

    params: dict[str, str]                  # path parameters
    body: dict[str, Any]
    query: dict[str, Any]
    agent: str                              # the token's name, plus "/" and X-Agent-ID when given
    idempotency_key: str | None
    lease_token: str | None


@dataclass(frozen=True)
class Op:
    name: str
    method: str
    path: str
    scope: str                              # "agent": agents and operators; "operator": operators only
    summary: str
    call: Callable[[Workctl, Call], Any]
    status: int = 200
    body: dict[str, Field] = field(default_factory=dict)
    query: dict[str, Field] = field(default_factory=dict)
    idempotency: bool = False               # X-Idempotency-Key required (428 without), as in the seed
    fenced: bool = False                    # X-Lease-Token required: the fence holds over HTTP too
    reads: str | None = None                # "order" | "item": an agent token may read what it leased

    @property
    def full_path(self) -> str:
        return BASE + self.path


_TTL = Field("integer", minimum=1, maximum=MAX_TTL_SECONDS, description="Lease length in seconds (default: the config's).")

OPS: tuple[Op, ...] = (
    Op("propose", "POST", "/propose", "operator", "Propose a work order; it is validated and planned into items.",
       lambda wc, c: wc.propose(c.body["type"], c.body["payload"], priority=c.body.get("priority", 0),
                                idempotency_key=c.idempotency_key),
       status=201, idempotency=True,
       body={"type": Field("string", required=True, max_length=120, description="The order type."),
             "payload": Field("object", required=True, description="Validated against the type's JSON Schema."),
             "priority": Field("integer", minimum=PRIORITY_MIN, maximum=PRIORITY_MAX)}),
    Op("checkout", "POST", "/checkout", "agent", "Lease the next item of any order (highest priority, then oldest).",
       lambda wc, c: wc.checkout(None, agent=c.agent, type_name=c.body.get("type"), ttl=c.body.get("ttl")),
       body={"type": Field("string", max_length=120, description="Only items of orders of this type."),
             "ttl": _TTL}),
    Op("checkout_order", "POST", "/orders/{order_id}/checkout", "agent", "Lease the next item of one order.",
       lambda wc, c: wc.checkout(c.params["order_id"], agent=c.agent, ttl=c.body.get("ttl")),
       body={"ttl": _TTL}),
    Op("heartbeat", "POST", "/items/{item_id}/heartbeat", "agent", "Extend the lease on an item.",
       lambda wc, c: wc.heartbeat(c.params["item_id"], agent=c.agent, ttl=c.body.get("ttl"),
                                  lease_token=c.lease_token),
       fenced=True, body={"ttl": _TTL}),
    Op("release", "POST", "/items/{item_id}/release", "agent",
       "Give the lease back (with an error: a counted, failed attempt).",
       lambda wc, c: wc.release(c.params["item_id"], agent=c.agent, error=c.body.get("error"),
                                lease_token=c.lease_token),
       fenced=True, body={"error": Field("string", max_length=MAX_TEXT, description="What went wrong.")}),
    Op("submit", "POST", "/items/{item_id}/submit", "agent", "Submit the result of a leased item.",
       lambda wc, c: wc.submit(c.params["item_id"], c.body["result"], agent=c.agent, lease_token=c.lease_token,
                               idempotency_key=c.idempotency_key),
       status=202, fenced=True, idempotency=True,
       body={"result": Field("any", required=True, description="Checked by the order type (422 with every problem).")}),
    Op("approve", "POST", "/orders/{order_id}/approve", "operator",
       "Apply every item's result in one transaction and return the diff.",
       lambda wc, c: wc.approve(c.params["order_id"], dry_run=c.body.get("dry_run", False),
                                idempotency_key=None if c.body.get("dry_run") else c.idempotency_key),
       idempotency=True, body={"dry_run": Field("boolean", description="Compute the diff, change nothing.")}),
    Op("reject", "POST", "/orders/{order_id}/reject", "operator",
       "Reject a submitted order's results (requeue: back to the queue for rework).",
       lambda wc, c: wc.reject(c.params["order_id"], reason=c.body["reason"], requeue=c.body.get("requeue", False),
                               idempotency_key=c.idempotency_key),
       idempotency=True,
       body={"reason": Field("string", required=True, max_length=MAX_TEXT),
             "requeue": Field("boolean", description="Send the items back for rework (attempts kept).")}),
    Op("cancel", "POST", "/orders/{order_id}/cancel", "operator",
       "Withdraw an order that was not applied: it and its open items become cancelled.",
       lambda wc, c: wc.cancel(c.params["order_id"], reason=c.body.get("reason")),
       body={"reason": Field("string", max_length=MAX_TEXT, description="Why; kept in the audit trail.")}),
    Op("orders", "GET", "/orders", "operator", "List orders, newest first.",
       lambda wc, c: {"orders": wc.orders(state=c.query.get("state"), type_name=c.query.get("type"),
                                          limit=c.query.get("limit", 100))},
       query={"state": Field("string", max_length=40), "type": Field("string", max_length=120),
              "limit": Field("integer", minimum=1, maximum=MAX_LIMIT)}),
    Op("order", "GET", "/orders/{order_id}", "agent", "One order with its items (agents: orders they leased from).",
       lambda wc, c: wc.show(c.params["order_id"]), reads="order"),
    Op("item_logs", "GET", "/items/{item_id}/logs", "agent",
       "An item's events and its order's own events, oldest first (agents: items they leased).",
       lambda wc, c: wc.item_log(c.params["item_id"], limit=c.query.get("limit", 100)),
       query={"limit": Field("integer", minimum=1, maximum=1000)}, reads="item"),
)
