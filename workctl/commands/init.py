"""workctl init [--json]"""

from __future__ import annotations

import typer

from ..cli import render
from ._common import Json, boundary, open_workctl


@boundary
def init(ctx: typer.Context, json_: Json = False) -> None:
    """Create (or migrate) the store at --db and say where it is."""
    with open_workctl(ctx) as wc:
        result = wc.init()
    if json_:
        render.print_json(result)
        return
    store = result["store"]
    verb = "Created" if store["created"] else "Store ready (already existed):"
    render.line(f"{verb} {store['path']} ({store['backend']}, {len(store['migrations'])} migrations, "
                f"{store['detail']})")
    if store["created"] and store["backend"] == "sqlite":  # a URL may hold a password: not echoed
        render.line(f"Use it with: export WORKCTL_DB={store['path']}")
