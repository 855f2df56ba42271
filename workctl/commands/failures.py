"""workctl failures [ORDER_ID] [--source S] [--class C] [--since T] [--limit N] [--json|--nl]"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

import typer

from ..cli import render
from ..limits import MAX_LIST_LIMIT
from ._common import Json, Nl, boundary, open_workctl


@boundary
def failures(
    ctx: typer.Context,
    order_id: Annotated[str | None, typer.Argument(help="Only this order (default: the newest failures).")] = None,
    source: Annotated[str | None, typer.Option("--source", help="Only failures from this source.")] = None,
    error_class: Annotated[str | None, typer.Option("--class", help="Only this error class (e.g. not_found).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only failures at or after this ISO-8601 time.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_LIST_LIMIT, help="At most this many (the newest).")] = 1000,
    json_: Json = False,
    nl: Nl = False,
) -> None:
    """The per-user error ledger: every failed user of every submitted batch."""
    with open_workctl(ctx) as wc:
        page = wc.failures_page(order_id, source=source, error_class=error_class, since=since, limit=limit)
    listed, more = page["failures"], page["more"]
    hint = "older ones: a larger --limit"
    if nl:
        render.print_nl(listed)
        render.more_line(more, hint, to_stderr=True)
        return
    if json_:
        render.print_json(page)
        return
    # One order: no order or source column. Times to the second; the whole message is in --json.
    columns = ["user", "class", "attempt", "failed at (UTC)", "message"]
    rows: list[tuple[Any, ...]] = [(f["user_id"], f["error_class"], f["attempt"], f["created_at"][:19].replace("T", " "),
             render.compact(f["message"].split(": ", 1)[-1], 40)) for f in listed]
    if not order_id:
        columns[:1] = ["order", "user", "source"]
        rows = [(f["order_id"][:8], f["user_id"], f["source"], *row[1:]) for f, row in zip(listed, rows, strict=True)]
    render.table(None, columns, rows)
    classes = Counter(f["error_class"] for f in listed)
    by_class = ", ".join(f"{name} {count}" for name, count in sorted(classes.items()))
    render.line(f"{len(listed)} failed users" + (f" ({by_class})" if listed else ""))
    render.more_line(more, hint)
    if order_id and listed:
        render.line(f"Retry exactly these users: workctl sync --retry-failed {order_id}")
