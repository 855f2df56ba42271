"""workctl log ORDER_ID [--since T] [--limit N] [--json|--nl] [--follow]"""

from __future__ import annotations

import time
from typing import Annotated, Any, Iterable

import typer

from ..cli import render
from ..limits import MAX_LIST_LIMIT
from ._common import MAX_WAIT_SECONDS, Json, Nl, boundary, finite, open_workctl


@boundary
def log(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(help="The order.")],
    since: Annotated[str | None, typer.Option("--since", help="Only events at or after this ISO-8601 time.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, max=MAX_LIST_LIMIT,
                                              help="At most this many events (the oldest); says how many more.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.1, max=MAX_WAIT_SECONDS, callback=finite, help="Seconds between --follow polls.")] = 1.0,
    json_: Json = False,
    nl: Nl = False,
) -> None:
    """The audit trail of an order: every transition with actor, time and payload (streamed: any length)."""
    with open_workctl(ctx) as wc:
        page = wc.log_page(order_id, since=since, limit=limit)
        if json_ and not follow:
            render.print_json_stream({}, "events", page, lambda: {"more": page.more()} if limit else {})
            return
        emit = render.print_nl if (nl or json_) else _print_events
        emit(page)
        last = page.last or 0
        if not follow:
            render.more_line(page.more(), f"next page: --since or a larger --limit; after event {last}",
                             to_stderr=nl or json_)
        while follow:
            time.sleep(interval)  # polling the file for new events
            fresh = wc.log_page(order_id, after_id=last)
            emit(fresh)
            last = fresh.last or last


def _print_events(events: Iterable[dict[str, Any]]) -> None:
    for e in events:
        subject = f"item {e['item_id']}" if e["item_id"] else "order"
        move = f"{e['from'] or '∅'} → {e['to']}" if e["to"] else ""
        detail = f" {render.compact(e['payload'], 80)}" if e["payload"] else ""
        render.line(f"{e['created_at']}  {e['event']:<14} {subject:<42} {move:<24} "
                    f"{e['actor_type']}:{e['actor_id']}{detail}")
