"""workctl release ITEM_ID [--agent A] [--error TEXT] [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli.render import show_release
from ._common import Agent, Json, LeaseToken, boundary, open_workctl


@boundary
def release(
    ctx: typer.Context,
    item_id: Annotated[str, typer.Argument(help="The leased item.")],
    agent: Agent = None,
    error: Annotated[str | None, typer.Option("--error", help="Record an error; the attempt then counts.")] = None,
    lease_token: LeaseToken = None,
    json_: Json = False,
) -> None:
    """Give a lease back; the item is queued again (or failed, if --error used its last attempt)."""
    with open_workctl(ctx) as wc:
        result = wc.release(item_id, agent=agent, error=error, lease_token=lease_token)
    show_release(result, item_id, json_)  # shared with the fast path (workctl.cli.fastpath)
