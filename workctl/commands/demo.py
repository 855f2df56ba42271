"""workctl demo [--json] [--quiet]  (the README's main command)"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ._common import Globals, Json, boundary


@boundary
def demo(
    ctx: typer.Context,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    json_: Json = False,
) -> None:
    """Run the seed's sync end to end: 150 users from a built-in sample CRM, synced and approved."""
    from ..demo import run_demo
    from ..cli.progress import make_progress

    options: Globals = ctx.obj or Globals()
    # The demo seeds users into its database: only an explicit --db may point it at an existing
    # store, never a WORKCTL_DB inherited from the environment.
    root = ctx.find_root()
    source = root.get_parameter_source("db")
    explicit = source is not None and source.name == "COMMANDLINE"  # typer vendors click: match by name
    progress = make_progress(quiet=quiet or json_)
    try:
        result = run_demo(options.db if explicit else None, config_path=options.config, listener=progress)
    finally:
        progress.close()
    if json_:
        render.print_json(result)
        return
    from .approve import render_diff

    order = result["order"]
    render.line(f"Seeded {result['users_seeded']} local users in {result['db']}")
    render.line(f"Order {order['id']}: {result['items']} batches synced from the sample crm and approved")
    if result["diff"]:
        render_diff(result["diff"])
    render.line(f"Final state: {order['state']} ({result['progress']['done']}/{result['progress']['total']} items)")
    render.line(f"Explore: workctl --db {result['db']} log {order['id']}")
