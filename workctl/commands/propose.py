"""workctl propose TYPE --payload JSON [--priority N] [--idempotency-key K] [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ..cli.jsoninput import read_json
from ..limits import PRIORITY_MAX, PRIORITY_MIN
from ._common import IdempotencyKey, Json, boundary, open_workctl


@boundary
def propose(
    ctx: typer.Context,
    type_name: Annotated[str, typer.Argument(metavar="TYPE", help="Order type, e.g. user.data.sync.")],
    payload: Annotated[str, typer.Option("--payload", help="JSON payload: inline, @file.json, or - for stdin.")],
    priority: Annotated[int, typer.Option("--priority", min=PRIORITY_MIN, max=PRIORITY_MAX,
                                                    help="Higher is checked out first.")] = 0,
    idempotency_key: IdempotencyKey = None,
    json_: Json = False,
) -> None:
    """Propose a work order: validate the payload against the type's schema and plan its items."""
    with open_workctl(ctx) as wc:
        result = wc.propose(type_name, read_json(payload, option="--payload"), priority=priority,
                            idempotency_key=idempotency_key)
    if json_:
        render.print_json(result)
        return
    order, items = result["order"], result["items"]
    render.line(f"Proposed order {order['id']} ({order['type']}, {len(items)} items, priority {order['priority']})")
    render.table(None, ["#", "item", "state", "input"],
                 [(n, it["id"], it["state"], render.compact(it["input"])) for n, it in enumerate(items[:20], 1)])
    if len(items) > 20:
        render.line(f"… and {len(items) - 20} more items")
