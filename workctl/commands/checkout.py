"""workctl checkout [ORDER_ID] [--type T] [--agent A] [--ttl SECONDS] [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import output
from ._common import Agent, Json, Ttl, boundary, open_workctl


@boundary
def checkout(
    ctx: typer.Context,
    order_id: Annotated[str | None, typer.Argument(help="Only items of this order.")] = None,
    type_name: Annotated[str | None, typer.Option("--type", help="Only items of orders of this type.")] = None,
    agent: Agent = None,
    ttl: Ttl = None,
    json_: Json = False,
) -> None:
    """Lease the next item (highest priority, then oldest); exit 3 when there is none."""
    with open_workctl(ctx) as wc:
        result = wc.checkout(order_id, agent=agent, type_name=type_name, ttl=ttl)
    if json_:
        output.print_json(result)
        return
    item = result["item"]
    output.line(f"Leased item {item['id']} of order {item['order_id']} until {item['lease_expires_at']} "
                f"(attempt {item['attempts']}/{item['max_attempts']}, heartbeat every "
                f"{item['heartbeat_every_seconds']} s)")
    output.line(f"lease token: {item['lease_token']}")
    output.line(f"input: {output.compact(item['input'], 200)}")
