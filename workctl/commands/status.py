"""workctl status [ORDER_ID] [--json] [--watch]"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from ..cli import render
from ._common import boundary, finite, Json, MAX_WAIT_SECONDS, open_workctl


@boundary
def status(
    ctx: typer.Context,
    order_id: Annotated[str | None, typer.Argument(help="One order in detail.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh a live view until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.2, max=MAX_WAIT_SECONDS, callback=finite, help="Seconds between --watch refreshes.")] = 2.0,
    json_: Json = False,
) -> None:
    """Counts of orders and items per state and leases held; or one order, its items and last events."""
    with open_workctl(ctx) as wc:
        if json_:
            render.print_json(wc.status(order_id))
            return
        if not watch:
            render_status(wc.status(order_id))
            return
        from rich.live import Live

        with Live(build(wc.status(order_id)), console=render.console(), auto_refresh=False) as live:
            while True:
                time.sleep(interval)  # a display refresh, not a wait for time to pass in tests
                live.update(build(wc.status(order_id)), refresh=True)


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

    if "order" not in data:
        return Group(
            grid("orders", ["state", "count"], [[k, v] for k, v in data["orders"].items() if v]),
            grid("items", ["state", "count"], [[k, v] for k, v in data["items"].items() if v]),
            Text(f"leases held {data['leases']['held']}, expired waiting {data['leases']['expired_waiting']}, "
                 f"items backing off before a retry {data['retry_waiting']}  (as of {data['as_of']})"),
        )
    order, progress = data["order"], data["progress"]
    header = Text(f"order {order['id']} ({order['type']}) is {order['state']}: "
                  f"{progress['done']}/{progress['total']} items done")
    items = grid("items", ["#", "item", "state", "attempts", "agent", "lease expires"],
                 [[it["seq"] + 1, it["id"], it["state"], f"{it['attempts']}/{it['max_attempts']}",
                   it["leased_by"] or it["submitted_by"], it["lease_expires_at"]] for it in data["items"][:50]])
    events = grid("last events", ["time", "entity", "event", "from → to", "actor"],
                  [[e["created_at"], e["entity"], e["event"], f"{e['from'] or ''} → {e['to'] or ''}",
                    f"{e['actor_type']}:{e['actor_id']}"] for e in data["events"]])
    return Group(header, items, events)


def render_status(data: dict[str, Any]) -> None:
    render.console().print(build(data))
