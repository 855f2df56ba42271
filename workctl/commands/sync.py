"""workctl sync [ORDER_ID] [--agent A] [--concurrency N] [--max-items K] [--approve] [--json] [--quiet]
workctl sync --source crm --users all|1-150|@ids.txt [--fields email,phone] --approve   (the cron one-liner)
workctl sync --source crm --delta [--since T] --approve      (only users changed since the stored cursor)
workctl sync --retry-failed ORDER_ID [--approve]             (a new order for exactly the failed users)"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..cli import render
from ._common import Agent, Json, Ttl, boundary, open_workctl


@boundary
def sync(
    ctx: typer.Context,
    order_id: Annotated[str | None, typer.Argument(help="Only this order (default: any user.data.sync order).")] = None,
    source: Annotated[str | None, typer.Option("--source", help="Propose a new order from this source first.")] = None,
    users: Annotated[str | None, typer.Option("--users", help="With --source: all, ranges like 1-150,200, or @ids.txt.")] = None,
    fields: Annotated[str | None, typer.Option("--fields", help="With --source: comma-separated fields.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, max=1000, help="With --source: users per item.")] = None,
    delta: Annotated[bool, typer.Option("--delta", help="With --source: only users changed since the source's cursor (--users defaults to all).")] = False,
    since: Annotated[str | None, typer.Option("--since", help="With --source: a delta sync from this ISO-8601 date-time instead of the cursor.")] = None,
    retry_failed: Annotated[str | None, typer.Option("--retry-failed", metavar="ORDER_ID", help="Propose and sync a new order for exactly the failed users of ORDER_ID.")] = None,
    agent: Agent = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="Parallel requests per source.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Batches in flight (default: the source's concurrency).")] = None,
    max_items: Annotated[int | None, typer.Option("--max-items", min=1, help="Stop after this many batches.")] = None,
    approve: Annotated[bool, typer.Option("--approve", help="Approve each order once all its items are submitted.")] = False,
    ttl: Ttl = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    json_: Json = False,
) -> None:
    """Fetch and submit batches until no work is left (exit 0 when there was nothing to do)."""
    from ..cli.progress import make_progress
    from ..agents.sync import SyncOptions, propose_from_source

    from ..errors import Usage

    if retry_failed and (order_id or source or users or delta or since):
        raise Usage("--retry-failed ORDER_ID proposes its own order: give no ORDER_ID, --source, --users, "
                    "--delta or --since with it")
    if (delta or since) and not source:
        raise Usage("--delta and --since need --source (e.g. workctl sync --source crm --delta)")
    with open_workctl(ctx) as wc:
        if retry_failed:
            order_id = wc.retry_failed(retry_failed)["order"]["id"]
        elif source or users:
            order_id = propose_from_source(wc, source=source, users=users, fields=fields, batch_size=batch_size,
                                           delta=delta, since=since)
        progress = make_progress(quiet=quiet or json_)
        try:
            report = wc.sync(SyncOptions(order_id=order_id, agent=agent, concurrency=concurrency,
                                         max_items=max_items, approve=approve, ttl=ttl,
                                         workers=workers), listener=progress)
        finally:
            progress.close()
        sensitive = wc.sensitive_fields()
    incomplete = report["items"]["released"] + report["items"]["lost"]
    error = None
    if incomplete:
        from ..errors import RemoteError
        error = RemoteError(f"{incomplete} batches could not be submitted (source failures after retries or lost "
                            "leases); they will be retried by a later run. See failed_users.",
                            code="sync_incomplete")
    if json_:
        # One document either way: the report, plus the error object when the run was incomplete.
        render.print_json({**report, **(error.to_dict() if error else {})})
    else:
        render_report(report, sensitive=sensitive)
    if error:
        render.error(error, as_json=False)
        raise typer.Exit(int(error.exit_code))


def render_report(report: dict[str, Any], *, sensitive: frozenset[str] = frozenset()) -> None:
    items, users = report["items"], report["users"]
    rows = [("orders", len(report["orders"])), ("batches submitted", items["submitted"]),
            ("batches released", items["released"]), ("batches lost", items["lost"]),
            ("users synced", users["synced"]), ("users failed", users["failed"])]
    rows += [(f"  failed: {name}", count) for name, count in sorted(users["failed_by_class"].items())]
    rows += [("requests", report["requests"]), ("retries", report["retries"]), ("seconds", report["seconds"]),
             ("users/s", report["users_per_second"])]
    render.table("sync", ["", "count"], rows)
    for failed in report["failed_users"][:20]:
        render.line(f"  user {failed['user_id']}: {failed['error_class']}: {failed['error']}")
    for approved in report["approved"]:
        from .approve import render_diff
        render.line(f"order {approved['order_id']}:")
        from ..types.user_data_sync.masking import Masker
        render_diff(approved["diff"], mask=Masker(sensitive))
