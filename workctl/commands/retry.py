"""workctl retry ITEM_ID | workctl retry --order ORDER_ID [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ._common import Json, boundary, open_workctl


@boundary
def retry(
    ctx: typer.Context,
    item_id: Annotated[str | None, typer.Argument(help="A failed or dead-lettered item.")] = None,
    order_id: Annotated[str | None, typer.Option("--order", help="Every failed/dead-lettered item of an order.")] = None,
    json_: Json = False,
) -> None:
    """Put failed or dead-lettered items back in the queue with fresh attempts."""
    with open_workctl(ctx) as wc:
        result = wc.retry(item_id, order_id=order_id)
    if json_:
        render.print_json(result)
        return
    render.line(f"Retried {len(result['retried'])} items; order {result['order']['id']} is {result['order']['state']}")
