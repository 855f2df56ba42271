"""workctl cancel ORDER_ID [--reason TEXT] [--yes] [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ._common import Json, Yes, boundary, confirm, interactive, open_workctl


@boundary
def cancel(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(help="An order that was not applied.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why; kept in the audit trail.")] = None,
    yes: Yes = False,
    json_: Json = False,
) -> None:
    """Withdraw an order: it and its open items become cancelled; agents still working on them are stopped."""
    with open_workctl(ctx) as wc:
        if not yes and interactive():
            preview = wc.cancel_preview(order_id)
            items = ", ".join(f"{n} {state}" for state, n in sorted(preview["items"].items())) or "no open items"
            confirm(f"Cancel order {order_id}?",
                    [f"order {order_id} ({preview['order']['type']}) is {preview['order']['state']}: {items}",
                     "cancelling moves it and these items to 'cancelled' for good; agents working on them stop"],
                    yes=yes)
        result = wc.cancel(order_id, reason=reason)
    if json_:
        render.print_json(result)
        return
    items = result["items"]
    render.line(f"Order {order_id} is cancelled (was {result['order']['previous_state']}); {items['cancelled']} "
                f"items cancelled" + (f", {items['leased']} of them were leased" if items["leased"] else ""))
