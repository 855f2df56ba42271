"""Guarded auto-approve (``sync --approve``, ``run --approve``): an order is approved without a person only
when its diff passes the ``[approve]`` rules; otherwise it is held — it stays ``submitted`` for an operator,
an ``approval_held`` event and the ``order.held`` webhook say which rule held it and with what numbers."""

from __future__ import annotations

from typing import Any, Mapping

from ..config import ApproveRules
from ..errors import Conflict
from ..jsonio import loads
from ..store import write_tx
from . import outbox
from .lifecycle import Actor, append_event
from .session import Session


def held_by(rules: ApproveRules, payload: Mapping[str, Any], diff: Mapping[str, Any]) -> dict[str, Any] | None:
    """The first rule this diff breaks, with its limit and the actual number; None when all pass."""
    changes = [c for c in diff.get("changes") or [] if isinstance(c, dict)]
    users = {c.get("user_id") for c in changes}
    if rules.never_auto_fields:
        touched = sorted({str(c.get("field")) for c in changes} & set(rules.never_auto_fields))
        if touched:
            return {"rule": "never_auto_fields", "limit": list(rules.never_auto_fields), "actual": touched,
                    "message": f"it changes {', '.join(touched)}, which [approve] never_auto_fields reserves for "
                               "a person"}
    if rules.max_changed_users is not None and len(users) > rules.max_changed_users:
        return {"rule": "max_changed_users", "limit": rules.max_changed_users, "actual": len(users),
                "message": f"it changes {len(users)} users, more than [approve] max_changed_users = "
                           f"{rules.max_changed_users}"}
    total = len(payload.get("user_ids") or ()) if isinstance(payload, Mapping) else 0
    if rules.max_changed_ratio is not None and total and len(users) / total > rules.max_changed_ratio:
        return {"rule": "max_changed_ratio", "limit": rules.max_changed_ratio, "actual": round(len(users) / total, 4),
                "message": f"it changes {len(users)} of {total} users ({len(users) / total:.0%}), more than "
                           f"[approve] max_changed_ratio = {rules.max_changed_ratio:g}"}
    return None


def hold(s: Session, order_id: str, diff: Mapping[str, Any]) -> Conflict | None:
    """Check the rules; when one holds the order, record it (event + order.held webhook) and return the
    error to raise (exit 6, approval_held). The order is not moved: it stays submitted."""
    row = s.order_row(order_id)
    held = held_by(s.config.approve, loads(row["payload"]) or {}, diff)
    if held is None:
        return None
    hooks = outbox.configured(s.config)
    now = s.now()
    with write_tx(s.conn) as conn:
        append_event(conn, now=now, actor=Actor.system(), event="approval_held", entity="order", order_id=order_id,
                     payload=held)
        outbox.notify(conn, hooks, "order.held", {"id": order_id, "type": row["type"]},
                      {"rule": held["rule"], "limit": held["limit"], "actual": held["actual"],
                       "message": held["message"]}, now)
    return Conflict(f"auto-approve of order {order_id} held: {held['message']}; it stays submitted for a person "
                    f"(workctl diff {order_id}, then workctl approve {order_id})", code="approval_held",
                    details=[{"order_id": order_id, **held}])
