"""workctl log ORDER_ID [--json|--nl] [--follow]"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from ..cli import render
from ._common import boundary, finite, Json, MAX_WAIT_SECONDS, Nl, open_workctl


@boundary
def log(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(help="The order.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.1, max=MAX_WAIT_SECONDS, callback=finite, help="Seconds between --follow polls.")] = 1.0,
    json_: Json = False,
    nl: Nl = False,
) -> None:
    """The audit trail of an order: every transition with actor, time and payload."""
    with open_workctl(ctx) as wc:
        events = wc.log(order_id)
        if json_ and not follow:
            render.print_json({"events": events})
            return
        emit = render.print_nl if (nl or json_) else _print_events
        emit(events)
        last = events[-1]["id"] if events else 0
        while follow:
            time.sleep(interval)  # polling the file for new events
            fresh = wc.log(order_id, after_id=last)
            if fresh:
                emit(fresh)
                last = fresh[-1]["id"]


def _print_events(events: list[dict[str, Any]]) -> None:
    for e in events:
        subject = f"item {e['item_id']}" if e["item_id"] else "order"
        move = f"{e['from'] or '∅'} → {e['to']}" if e["to"] else ""
        detail = f" {render.compact(e['payload'], 80)}" if e["payload"] else ""
        render.line(f"{e['created_at']}  {e['event']:<14} {subject:<42} {move:<24} "
                    f"{e['actor_type']}:{e['actor_id']}{detail}")
