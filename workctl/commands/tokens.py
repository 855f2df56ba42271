"""workctl tokens create --scope agent|operator [--name N] [--expires 90d] / tokens list / tokens revoke NAME"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ._common import Json, boundary, example_epilog, open_workctl

app = typer.Typer(help="Bearer tokens for `workctl serve` (shown once, stored hashed).", no_args_is_help=True)


@app.command("create", epilog=example_epilog("workctl tokens create --scope agent --name bot-1 --expires 90d"))
@boundary
def create(
    ctx: typer.Context,
    scope: Annotated[str, typer.Option("--scope", help="agent (checkout, heartbeat, release, submit) or operator "
                                                       "(also propose, approve, reject, cancel, read all).")],
    name: Annotated[str | None, typer.Option("--name", help="A unique name (default: generated).")] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="30m, 12h, 90d, 4w, or an ISO-8601 time.")] = None,
    json_: Json = False,
) -> None:
    """Create a token and print its secret — the only time it is shown."""
    with open_workctl(ctx) as wc:
        result = wc.create_token(scope=scope, name=name, expires=expires)
    if json_:
        render.print_json(result)
        return
    token = result["token"]
    render.line(f"Token {token['name']} ({token['scope']}), expires {token['expires_at'] or 'never'}:")
    render.line(token["value"])
    render.line("Store it now: it is not shown again. Use it as 'Authorization: Bearer <token>'.")


@app.command("list", epilog=example_epilog("workctl tokens list --json"))
@boundary
def list_(ctx: typer.Context, json_: Json = False) -> None:
    """List tokens (names, scopes, states — never their secrets)."""
    with open_workctl(ctx) as wc:
        listed = wc.tokens()
    if json_:
        render.print_json({"tokens": listed})
        return
    render.table(None, ["name", "scope", "state", "created", "expires"],
                 [(t["name"], t["scope"], t["state"], t["created_at"], t["expires_at"] or "never") for t in listed])


@app.command("revoke", epilog=example_epilog("workctl tokens revoke bot-1"))
@boundary
def revoke(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The token's name.")],
           json_: Json = False) -> None:
    """Revoke a token: every request with it is refused (401) from now on."""
    with open_workctl(ctx) as wc:
        result = wc.revoke_token(name)
    if json_:
        render.print_json(result)
        return
    render.line(f"Token {name} is revoked")
