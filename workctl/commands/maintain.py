"""workctl maintain [--dry-run] [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ._common import Json, boundary, open_workctl
from .approve import render_webhooks


@boundary
def maintain(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be done; change and send nothing.")] = False,
    json_: Json = False,
) -> None:
    """Reclaim expired leases, dead-letter failed items, purge old idempotency keys and events, send webhooks."""
    with open_workctl(ctx) as wc:
        result = wc.maintain(dry_run=dry_run)
    if json_:
        render.print_json(result)
        return
    prefix = "Dry run, nothing changed; would do: " if dry_run else ""
    render.line(prefix + ", ".join(f"{name.replace('_', ' ')}: {count}" for name, count in result.items()
                                   if not isinstance(count, (dict, bool))))
    render_webhooks(result)
