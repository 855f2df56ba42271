"""workctl sources list | check NAME | serve-sample"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ..limits import INT64_MAX
from ._common import MAX_WAIT_SECONDS, Globals, Json, boundary, example_epilog, finite

app = typer.Typer(help="External sources: list, check, and the built-in sample server.", no_args_is_help=True)


def _raw(ctx: typer.Context) -> dict:
    from ..config import load_config
    options: Globals = ctx.find_root().obj or Globals()
    return load_config(options.config).raw


@app.command("list", epilog=example_epilog("workctl sources list --json"))
@boundary
def list_(ctx: typer.Context, json_: Json = False) -> None:
    """Configured sources (secrets named by their variable, never shown); `sources check` probes them."""
    from ..sources.check import list_sources

    listed = list_sources(_raw(ctx))
    if json_:
        render.print_json({"sources": listed})
        return
    # "config": whether the settings are usable; whether the source answers is `sources check`.
    render.table(None, ["source", "base url", "auth", "rate/s", "concurrency", "config"],
                 [(s["name"], s.get("base_url"), s.get("auth"), s.get("rate_limit"), s.get("concurrency"),
                   "valid" if s["ok"] else s["error"]) for s in listed])


@app.command("check", epilog=example_epilog("workctl sources check", "workctl sources check crm --json"))
@boundary
def check(ctx: typer.Context,
          names: Annotated[list[str] | None, typer.Argument(metavar="[NAME]...",
                                                           help="Source names, e.g. crm (default: every configured source).",
                                                           show_default=False)] = None,
          json_: Json = False) -> None:
    """Probe each source with one request: reachable, credentials accepted, latency (exit 7 if one fails).

    Secrets are never printed: the URL is shown with its credentials and query values masked.
    """
    from ..errors import Invalid, run_error
    from ..sources.check import check_sources

    checked = check_sources(names or None, _raw(ctx))
    if not checked["sources"]:
        raise Invalid("no source is configured", code="source_not_configured",
                    hint="add a [sources.NAME] table with base_url to workctl.toml, or set WORKCTL_SOURCE_CRM_URL")
    if json_:
        render.print_json(checked)
    else:
        for report in checked["sources"]:
            if report["status"] == "failed":
                render.line(f"{report['name']}: FAILED: {report['error']['message']}")
            else:
                render.line(f"{report['name']}: {report['status']}, auth {report['auth']}, "
                            f"{report['latency_ms']} ms ({report['base_url']})")
    error = run_error(checked, json_shown=json_)  # the first failure's code and exit code (5 config, 7 remote)
    if error is not None:
        raise error


@app.command("serve-sample", epilog=example_epilog("workctl sources serve-sample --port 8765 --latency 0.02"))
@boundary
def serve_sample(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0 picks a free one).")] = 8765,
    token: Annotated[str | None, typer.Option("--token-env", help="Require Bearer auth with the token in this env var.")] = None,
    fail_rate: Annotated[float, typer.Option("--fail-rate", min=0, max=1, callback=finite, help="Share of requests answered 500.")] = 0.0,
    fail_first: Annotated[int, typer.Option("--fail-first", min=0, help="Answer the first N requests 503.")] = 0,
    rate_limit: Annotated[float, typer.Option("--rate-limit", min=0, max=1e9, callback=finite, help="Requests/s before 429 + Retry-After.")] = 0.0,
    retry_after: Annotated[str, typer.Option("--retry-after", help="Retry-After value sent with 429.")] = "1",
    latency: Annotated[float, typer.Option("--latency", min=0, max=MAX_WAIT_SECONDS, callback=finite, help="Seconds added to every response.")] = 0.0,
    malformed_rate: Annotated[float, typer.Option("--malformed-rate", min=0, max=1, callback=finite, help="Share of truncated JSON bodies.")] = 0.0,
    drop_rate: Annotated[float, typer.Option("--drop-rate", min=0, max=1, callback=finite, help="Share of connections dropped.")] = 0.0,
    missing: Annotated[str, typer.Option("--missing", help="Comma-separated user ids that do not exist (404).")] = "",
    max_user_id: Annotated[int, typer.Option("--max-user-id", min=1, max=INT64_MAX, help="Ids above this do not exist.")] = 10_000_000,
) -> None:
    """Serve crm, analytics and billing sample data with fault injection, until Ctrl-C."""
    import os

    from ..errors import Invalid, Usage
    from ..sources.sample_server import Faults, SampleServer

    secret = None
    if token:
        secret = os.environ.get(token)
        if not secret:
            raise Invalid(f"--token-env {token}: that environment variable is not set", code="secret_missing")
    try:
        missing_ids = frozenset(int(x) for x in missing.split(",") if x.strip())
    except ValueError as exc:
        raise Usage(f"--missing: not a user id: {exc}") from exc
    faults = Faults(fail_rate=fail_rate, fail_first=fail_first, rate_limit=rate_limit, retry_after=retry_after,
                    latency=latency, malformed_rate=malformed_rate, drop_rate=drop_rate, missing=missing_ids,
                    max_user_id=max_user_id, token=secret)
    server = SampleServer(host, port, faults)
    render.line(f"Serving sample sources on {server.url}: {server.url}/crm/users/1, /analytics/…, /billing/…")
    render.line(f"Use it with: export WORKCTL_SOURCE_CRM_URL={server.url}/crm")
    import sys
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.stop()
