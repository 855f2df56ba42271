"""workctl checkout [ORDER_ID] [--type T] [--agent A] [--ttl SECONDS] [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli.render import show_checkout
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
    show_checkout(result, json_)  # shared with the fast path (workctl.cli.fastpath)
