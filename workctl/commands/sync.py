"""workctl sync [ORDER_ID] [--agent A] [--concurrency N] [--max-items K] [--approve] [--json] [--quiet]
workctl sync --source crm --users all|1-150|@ids.txt [--fields email,phone] [--new] --approve   (the cron line)
workctl sync --source crm --delta [--since T] --approve      (only users changed since the stored cursor)
workctl sync --retry-failed ORDER_ID [--approve]             (a new order for exactly the failed users)"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..cli import render
from ..errors import run_error
from ..limits import INT64_MAX
from ._common import MAX_PARALLEL, Agent, Json, Quiet, Ttl, Verbose, boundary, open_workctl
from .approve import render_diff


@boundary
def sync(
    ctx: typer.Context,
    order_id: Annotated[str | None, typer.Argument(help="Only this order (default: any user.data.sync order).")] = None,
    source: Annotated[str | None, typer.Option("--source", help="Propose (or resume) an order from this source first.")] = None,
    users: Annotated[str | None, typer.Option("--users", help="With --source: all, ranges like 1-150,200, or @ids.txt.")] = None,
    fields: Annotated[str | None, typer.Option("--fields", help="With --source: comma-separated fields.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, max=1000, help="With --source: users per item.")] = None,
    delta: Annotated[bool, typer.Option("--delta", help="With --source: only users changed since the source's cursor (--users defaults to all).")] = False,
    since: Annotated[str | None, typer.Option("--since", help="With --source: a delta sync from this ISO-8601 date-time instead of the cursor.")] = None,
    new: Annotated[bool, typer.Option("--new", help="With --source: propose a new order even if an open one of the same source, users and fields exists.")] = False,
    retry_failed: Annotated[str | None, typer.Option("--retry-failed", metavar="ORDER_ID", help="Propose and sync a new order for exactly the failed users of ORDER_ID.")] = None,
    agent: Agent = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, max=MAX_PARALLEL, help="Parallel requests per source.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, max=MAX_PARALLEL, help="Batches in flight (default: the source's concurrency).")] = None,
    max_items: Annotated[int | None, typer.Option("--max-items", min=1, max=INT64_MAX, help="Stop after this many batches.")] = None,
    approve: Annotated[bool, typer.Option("--approve", help="Approve each order once all its items are submitted, if the approve rules of the config let it.")] = False,
    ttl: Ttl = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
    json_: Json = False,
) -> None:
    """Fetch and submit batches until no work is left: exit 0 when every batch taken was submitted (and
    approved, with --approve), 7 when a source was down or a batch failed or an order in scope is failed,
    6 when an approve rule of the config held an order."""
    from ..agents.sync import SyncOptions
    from ..cli.progress import make_progress
    from ..errors import Usage

    if retry_failed and (order_id or source or users or delta or since):
        raise Usage("--retry-failed ORDER_ID proposes its own order: give no ORDER_ID, --source, --users, "
                    "--delta or --since with it")
    if (delta or since) and not source:
        raise Usage("--delta and --since need --source (e.g. workctl sync --source crm --delta)")
    if order_id and (source or users):
        raise Usage("give either ORDER_ID or --source/--users (which find or propose the order)")
    options = SyncOptions(order_id=order_id, source=source, users=users, fields=fields, batch_size=batch_size,
                          delta=delta, since=since, retry_failed=retry_failed, new=new, agent=agent,
                          concurrency=concurrency, max_items=max_items, approve=approve, ttl=ttl, workers=workers)
    with open_workctl(ctx) as wc:
        progress = make_progress(quiet=quiet or json_, verbose=verbose)
        try:
            report = wc.sync(options, listener=progress)
        finally:
            progress.close()
        sensitive = wc.sensitive_fields()
    if json_:
        render.print_json(report)  # one document: the report, with "error" when the run did not succeed
    else:
        render_report(report, sensitive=sensitive)
    error = run_error(report, json_shown=json_)
    if error is not None:
        raise error


def render_report(report: dict[str, Any], *, sensitive: frozenset[str] = frozenset()) -> None:
    from ..types.user_data_sync.masking import Masker

    items, users = report["items"], report["users"]
    rows = [("orders", len(report["orders"])), ("batches submitted", items["submitted"]),
            ("batches released", items["released"]), ("batches released, source unavailable",
                                                      items["released_unavailable"]),
            ("batches lost", items["lost"]), ("batches cancelled", items["cancelled"]),
            ("users synced", users["synced"]), ("users failed", users["failed"])]
    rows += [(f"  failed: {name}", count) for name, count in sorted(users["failed_by_class"].items())]
    rows += [("requests", report["requests"]), ("retries", report["retries"]), ("seconds", report["seconds"]),
             ("users/s", report["users_per_second"])]
    render.table("sync", ["", "count"], rows)
    for failed in report["failed_users"][:20]:
        render.line(f"  user {failed['user_id']}: {failed['error_class']}: {failed['error']}")
    for approved in report["approved"]:
        render.line(f"order {approved['order_id']}:")
        render_diff(approved["diff"], mask=Masker(sensitive))
    render_orders(report)


def render_orders(report: dict[str, Any]) -> None:
    """The ids of the orders the run created, resumed or worked on — in full: the next command needs
    one — and that next command."""
    approved = {a["order_id"] for a in report["approved"]}
    for index, order_id in enumerate(report["orders"]):
        first = index == 0
        verb = ("created" if report.get("proposed") else "resumed" if report.get("resumed") else "synced") \
            if first else "synced"
        render.line(f"{verb} order {order_id}")
        if order_id in approved:
            render.line(f"  next: see what changed with: workctl show {order_id}")
        else:
            render.line(f"  next: review with: workctl diff {order_id}, then apply with: workctl approve {order_id}")
    if not report["orders"]:
        render.line("no order had work to sync")
