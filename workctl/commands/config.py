"""workctl config [--json]"""

from __future__ import annotations

import typer

from ..cli import render
from ._common import Globals, Json, boundary


def _origin(ctx: typer.Context, name: str, option: str, variable: str) -> str:
    """Where the global option's value came from, in the words the user would type."""
    source = ctx.find_root().get_parameter_source(name)
    kind = getattr(source, "name", "")
    return {"COMMANDLINE": option, "ENVIRONMENT": f"env {variable}"}.get(kind, "default")


@boundary
def config(ctx: typer.Context, json_: Json = False) -> None:
    """Show the effective configuration and where each value comes from.

    Each value says its origin: default, the config file (with its path), an environment variable, or a
    global option. Secrets (source tokens, webhook secrets, the lease token) are shown only as set or
    not set. Needs no store: the store's location is shown, not opened.
    """
    from ..api import effective_config

    options: Globals = ctx.find_root().obj or Globals()
    report = effective_config(db=options.db, db_origin=_origin(ctx, "db", "--db", "WORKCTL_DB"),
                              config=options.config,
                              config_origin=_origin(ctx, "config", "--config", "WORKCTL_CONFIG"))
    if json_:
        render.print_json(report)
        return
    render.table(None, ["setting", "value", "origin"],
                 [(s["key"], render.compact(s["value"], 80) if not isinstance(s["value"], str) else s["value"],
                   s["origin"]) for s in report["settings"]])
