"""workctl types [--json] / workctl types show TYPE [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ._common import Json, boundary, example_epilog, open_workctl

app = typer.Typer(help="List registered order types, or show one's JSON Schema.", invoke_without_command=True)


@app.callback()
@boundary
def types(ctx: typer.Context, json_: Json = False) -> None:
    """List the registered order types."""
    if ctx.invoked_subcommand:
        return
    listed = open_workctl(ctx).types()
    if json_:
        render.print_json({"types": listed})
        return
    render.table(None, ["type", "description"], [(t["name"], t["description"]) for t in listed])


@app.command("show", epilog=example_epilog("workctl types show user.data.sync --json"))
@boundary
def show(ctx: typer.Context, type_name: Annotated[str, typer.Argument(metavar="TYPE")], json_: Json = False) -> None:
    """Show an order type's JSON Schema."""
    described = open_workctl(ctx).type_schema(type_name)
    if json_:
        render.print_json(described)
        return
    render.line(f"{described['name']}: {described['description']}")
    import json
    render.line(json.dumps(described["schema"], indent=2))
