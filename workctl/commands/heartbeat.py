"""workctl heartbeat ITEM_ID [--agent A] [--ttl SECONDS] [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli.render import show_heartbeat
from ._common import Agent, Json, LeaseToken, Ttl, boundary, open_workctl


@boundary
def heartbeat(
    ctx: typer.Context,
    item_id: Annotated[str, typer.Argument(help="The leased item.")],
    agent: Agent = None,
    ttl: Ttl = None,
    lease_token: LeaseToken = None,
    json_: Json = False,
) -> None:
    """Extend your lease on an item."""
    with open_workctl(ctx) as wc:
        result = wc.heartbeat(item_id, agent=agent, ttl=ttl, lease_token=lease_token)
    show_heartbeat(result, item_id, json_)  # shared with the fast path (workctl.cli.fastpath)
