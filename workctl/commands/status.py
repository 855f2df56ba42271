"""workctl status [ORDER_ID] [--limit N] [--json] [--watch]"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from ..cli import render
from ..limits import MAX_LIST_LIMIT
from ._common import MAX_WAIT_SECONDS, Json, boundary, finite, open_workctl


@boundary
def status(
    ctx: typer.Context,
    order_id: Annotated[str | None, typer.Argument(help="One order in detail.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh a live view until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.2, max=MAX_WAIT_SECONDS, callback=finite, help="Seconds between --watch refreshes.")] = 2.0,
    limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_LIST_LIMIT,
                                       help="With ORDER_ID: at most this many items (by #); says how many more.")] = 100,
    json_: Json = False,
) -> None:
    """Counts of orders and items per state and leases held; or one order: its counts, progress and ETA,
    its items (a page of --limit) and last events."""
    with open_workctl(ctx) as wc:
        if json_:
            render.print_json(wc.status(order_id, limit=limit))
            return
        if not watch:
            render_status(wc.status(order_id, limit=limit))
            return
        from rich.live import Live

        with Live(build(wc.status(order_id, limit=limit)), console=render.console(), auto_refresh=False) as live:
            while True:
                time.sleep(interval)  # a display refresh, not a wait for time to pass in tests
                live.update(build(wc.status(order_id, limit=limit)), refresh=True)


def layout(data: dict[str, Any]) -> list[Any]:
    """The status view as lines and (title, columns, rows) tables: printed plainly, or as one rich
    renderable for a terminal and --watch."""
    if "order" not in data:
        return [
            ("orders", ["state", "count"], [[k, v] for k, v in data["orders"].items() if v]),
            ("items", ["state", "count"], [[k, v] for k, v in data["items"].items() if v]),
            f"leases held {data['leases']['held']}, expired waiting {data['leases']['expired_waiting']}, "
            f"items backing off before a retry {data['retry_waiting']}  (as of {data['as_of']})",
        ]
    order, progress, eta = data["order"], data["progress"], data["eta"]
    counts = ", ".join(f"{state} {n}" for state, n in data["counts"].items() if n)
    header = (f"order {order['id']} ({order['type']}) is {order['state']}: "
              f"{progress['done']}/{progress['total']} items done ({counts or 'no items'})"
              + (f"; about {_duration(eta['seconds'])} left at {eta['items_per_second']:g} items/s "
                 f"(done at {eta['finishes_at']})" if eta else ""))
    return [
        header,
        ("items", ["#", "item", "state", "attempts", "agent", "lease expires"],
         [[it["seq"] + 1, it["id"], it["state"], f"{it['attempts']}/{it['max_attempts']}",
           it["leased_by"] or it["submitted_by"], it["lease_expires_at"]] for it in data["items"]]),
        render.more_text(data["items_more"], "--limit N for more", what="more items"),
        ("last events", ["time", "entity", "event", "from → to", "actor"],
         [[e["created_at"], e["entity"], e["event"], f"{e['from'] or ''} → {e['to'] or ''}",
           f"{e['actor_type']}:{e['actor_id']}"] for e in data["events"]]),
    ]


def build(data: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def grid(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
        return table

    return Group(*(Text(part) if isinstance(part, str) else grid(*part) for part in layout(data)))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def render_status(data: dict[str, Any]) -> None:
    for part in layout(data):  # render.table: rich on a terminal, plain (and rich-free) otherwise
        if isinstance(part, str):
            if part:  # the "N more" line is empty when nothing was cut
                render.line(part)
        else:
            render.table(*part)
