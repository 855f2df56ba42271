"""workctl submit ITEM_ID --result JSON [--agent A] [--idempotency-key K] [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli.render import show_submit
from ..cli.jsoninput import read_json
from ._common import Agent, IdempotencyKey, Json, LeaseToken, boundary, open_workctl


@boundary
def submit(
    ctx: typer.Context,
    item_id: Annotated[str, typer.Argument(help="The leased item.")],
    result: Annotated[str, typer.Option("--result", help="JSON result: inline, @file.json, or - for stdin.")],
    agent: Agent = None,
    lease_token: LeaseToken = None,
    idempotency_key: IdempotencyKey = None,
    json_: Json = False,
) -> None:
    """Submit the result of a leased item (validated; on failure you keep the lease)."""
    document = read_json(result, option="--result")
    with open_workctl(ctx) as wc:
        response = wc.submit(item_id, document, agent=agent, lease_token=lease_token,
                             idempotency_key=idempotency_key)
    show_submit(response, item_id, json_)  # shared with the fast path (workctl.cli.fastpath)
