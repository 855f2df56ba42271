"""workctl orders [--state S] [--type T] [--limit N] [--json|--nl]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ..limits import MAX_LIST_LIMIT
from ._common import Json, Nl, boundary, open_workctl


@boundary
def orders(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option("--state", help="Only orders in this state.")] = None,
    type_name: Annotated[str | None, typer.Option("--type", help="Only orders of this type.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_LIST_LIMIT, help="At most this many, newest first.")] = 100,
    json_: Json = False,
    nl: Nl = False,
) -> None:
    """List orders, newest first."""
    with open_workctl(ctx) as wc:
        listed = wc.orders(state=state, type_name=type_name, limit=limit)
    if nl:
        render.print_nl(listed)
    elif json_:
        render.print_json({"orders": listed})
    else:
        render.table(None, ["order", "type", "state", "items", "priority", "created"],
                     [(o["id"], o["type"], o["state"], o["item_count"], o["priority"], o["created_at"])
                      for o in listed])
