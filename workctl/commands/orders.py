"""workctl orders [--state S] [--type T] [--limit N] [--json|--nl]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ._common import DEFAULT_LIMIT, Json, Limit, Nl, boundary, open_workctl


@boundary
def orders(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option("--state", help="Only orders in this state.")] = None,
    type_name: Annotated[str | None, typer.Option("--type", help="Only orders of this type.")] = None,
    limit: Limit = DEFAULT_LIMIT,
    json_: Json = False,
    nl: Nl = False,
) -> None:
    """List orders, newest first.

    A listing cut by --limit ends with a line saying how many more orders match ("more" under --json).
    """
    with open_workctl(ctx) as wc:
        listing = wc.orders_listing(state=state, type_name=type_name, limit=limit)
    listed = listing["orders"]
    if nl:
        render.print_nl(listed)
    elif json_:
        render.print_json(listing)
    else:
        render.table(None, ["order", "type", "state", "items", "priority", "created"],
                     [(o["id"], o["type"], o["state"], o["item_count"], o["priority"], o["created_at"])
                      for o in listed])
        render.more_line(listing["more"], f"see them with --limit {len(listed) + listing['more']}",
                         what="more orders")
