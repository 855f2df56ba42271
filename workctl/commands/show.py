"""workctl show ORDER_ID [--limit N] [--json|--nl]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ..limits import MAX_LIST_LIMIT
from ._common import Json, Nl, boundary, open_workctl

HUMAN_ROWS = 100  # a terminal table past this is unreadable and slow (rich lays out every row)


@boundary
def show(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(help="The order.")],
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, max=MAX_LIST_LIMIT,
        help=f"At most this many items (default: all with --json/--nl, {HUMAN_ROWS} in the table).")] = None,
    json_: Json = False,
    nl: Nl = False,
) -> None:
    """An order in full: payload, items with inputs and results, and its diff once applied.
    --nl prints one item per line; --json and --nl stream, whatever the number of items."""
    if limit is None and not (json_ or nl):
        limit = HUMAN_ROWS
    with open_workctl(ctx) as wc:
        detail = wc.show_page(order_id, limit=limit, brief=not json_)
        page = detail["items"]
        if json_:
            render.print_json_stream({"order": detail["order"]}, "items", page,
                                     lambda: {"items_more": page.more()} if limit else {})
            return
        if nl:
            render.print_nl(page)
            render.more_line(page.more(), "use a larger --limit", to_stderr=True)
            return
        order = detail["order"]
        render.line(f"order {order['id']} ({order['type']}) is {order['state']}, priority {order['priority']}, "
                    f"requested by {order['requested_by']} at {order['created_at']}")
        if order.get("payload_omitted"):  # megabytes (1M user ids): its start, the whole of it with --json
            render.line(f"payload: {order['payload_head']}… (large: --json shows it all)")
        else:
            render.line(f"payload: {render.compact(order['payload'], 200)}")
        render.table(None, ["#", "item", "state", "attempts", "agent", "input"],
                     [(it["seq"] + 1, it["id"], it["state"], f"{it['attempts']}/{it['max_attempts']}",
                       it["leased_by"] or it["submitted_by"], render.compact(it["input"])) for it in page])
        render.more_line(page.more(), "--limit N for more, --json or --nl for all")
        if order["diff"]:
            render.line(f"diff: {order['diff'].get('summary')} ({len(order['diff'].get('changes', []))} changes)")
        elif order.get("diff_bytes"):
            render.line(f"diff: {order['diff_bytes']:,} characters (workctl diff {order['id']})")
