"""workctl serve [--host 127.0.0.1] [--port 8080]"""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import Globals, boundary


@boundary
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (127.0.0.1: this machine only).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8080,
) -> None:
    """Serve the seed's HTTP API (/api/agent/work/…) with bearer tokens from `workctl tokens create`."""
    from ..config import load_config
    from ..errors import Usage

    try:
        from ..server.main import serve as run_server
    except ImportError as exc:
        raise Usage(f"workctl serve needs the server extra: pip install 'workctl[server]' ({exc.name} is missing)",
                    code="extra_missing") from None
    options: Globals = ctx.obj or Globals()
    run_server(options.db, load_config(options.config), host=host, port=port)
