"""workctl maintain [--json]"""

from __future__ import annotations

import typer

from ..cli import render
from ._common import Json, boundary, open_workctl


@boundary
def maintain(ctx: typer.Context, json_: Json = False) -> None:
    """Reclaim expired leases, dead-letter failed items, purge old idempotency keys and events."""
    with open_workctl(ctx) as wc:
        result = wc.maintain()
    if json_:
        render.print_json(result)
        return
    render.line(", ".join(f"{name.replace('_', ' ')}: {count}" for name, count in result.items()
                          if not isinstance(count, dict)))
    if "webhooks" in result:  # only when [[webhooks]] are configured
        render.line("webhooks: " + ", ".join(f"{name} {count}" for name, count in result["webhooks"].items()))
