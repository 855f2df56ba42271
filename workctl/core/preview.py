"""``workctl diff ORDER_ID``: the exact field-level changes approve would make, before it makes them.

A submitted order is previewed by ``approve --dry-run`` itself (the same apply, in a transaction that
is rolled back), so the preview cannot drift from what approve writes. A completed order shows the
diff that was applied. Masking sensitive values is the renderer's job (``workctl.masking``): the
document returned here is exact.
"""

from __future__ import annotations

from typing import Any

from ..errors import IllegalTransition
from .lifecycle import Actor
from .orders import approve
from .session import Session, loads


def preview(s: Session, order_id: str, *, actor: Actor) -> dict[str, Any]:
    row = s.order_row(order_id)
    order = {"id": row["id"], "type": row["type"], "state": row["state"]}
    if row["state"] == "completed":
        return {"order": order, "applied": True, "diff": loads(row["diff"]) or {}}
    if row["state"] != "submitted":
        counts = dict(s.conn.execute("SELECT state, count(*) FROM items WHERE order_id = ? GROUP BY state",
                                     (order_id,)).fetchall())
        raise IllegalTransition(
            f"cannot preview order {order_id}: it is '{row['state']}'; a diff needs every item submitted "
            f"(items: {', '.join(f'{n} {st}' for st, n in sorted(counts.items())) or 'none'})",
            code="order_not_submitted", details=[{"state": row["state"], "items": counts}])
    result = approve(s, order_id, actor=actor, dry_run=True)
    return {"order": order, "applied": False, "diff": result["diff"]}
