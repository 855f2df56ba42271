"""workctl submit ITEM_ID --result JSON [--agent A] [--idempotency-key K] [--next [--next-order O | --next-type T]] [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli.render import show_submit
from ..cli.jsoninput import read_json
from ._common import Agent, IdempotencyKey, Json, LeaseToken, Ttl, boundary, open_workctl


@boundary
def submit(
    ctx: typer.Context,
    item_id: Annotated[str, typer.Argument(help="The leased item.")],
    result: Annotated[str, typer.Option("--result", help="JSON result: inline, @file.json, or - for stdin.")],
    agent: Agent = None,
    lease_token: LeaseToken = None,
    idempotency_key: IdempotencyKey = None,
    next_: Annotated[bool, typer.Option("--next", help="Also lease the next item, in the same transaction "
                                        "(\"next\" in the output; null when there is none).")] = False,
    next_order: Annotated[str | None, typer.Option("--next-order", metavar="ORDER_ID",
                                                   help="With --next: the next item of this order.")] = None,
    next_type: Annotated[str | None, typer.Option("--next-type", metavar="TYPE",
                                                  help="With --next: the next item of this order type.")] = None,
    ttl: Ttl = None,
    json_: Json = False,
) -> None:
    """Submit the result of a leased item (validated; on failure you keep the lease).

    With --next the same transaction also leases your next item (of --next-order or --next-type, else of
    any order): one process and one commit per item for an agent working through a queue. Its lease
    token is in "next"; --ttl sets that lease's length.
    """
    document = read_json(result, option="--result")
    with open_workctl(ctx) as wc:
        response = wc.submit(item_id, document, agent=agent, lease_token=lease_token,
                             idempotency_key=idempotency_key, next=next_, next_order=next_order,
                             next_type=next_type, ttl=ttl)
    show_submit(response, item_id, json_)  # shared with the fast path (workctl.cli.fastpath)
