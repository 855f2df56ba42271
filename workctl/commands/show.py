"""workctl show ORDER_ID [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ._common import Json, boundary, open_workctl


@boundary
def show(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(help="The order.")],
    json_: Json = False,
) -> None:
    """An order in full: payload, items with inputs and results, and its diff once applied."""
    with open_workctl(ctx) as wc:
        detail = wc.show(order_id)
    if json_:
        render.print_json(detail)
        return
    order = detail["order"]
    render.line(f"order {order['id']} ({order['type']}) is {order['state']}, priority {order['priority']}, "
                f"requested by {order['requested_by']} at {order['created_at']}")
    render.line(f"payload: {render.compact(order['payload'], 200)}")
    render.table(None, ["#", "item", "state", "attempts", "agent", "input"],
                 [(it["seq"] + 1, it["id"], it["state"], f"{it['attempts']}/{it['max_attempts']}",
                   it["leased_by"] or it["submitted_by"], render.compact(it["input"])) for it in detail["items"]])
    if order["diff"]:
        render.line(f"diff: {order['diff'].get('summary')} ({len(order['diff'].get('changes', []))} changes)")
