"""workctl run [ORDER_ID] --exec CMD [--workers N] [--agent A] [--max-items K] [--timeout S] [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ..errors import run_error
from ..limits import INT64_MAX
from ._common import MAX_PARALLEL, MAX_WAIT_SECONDS, Agent, Json, Quiet, Ttl, Verbose, boundary, finite, open_workctl


@boundary
def run(
    ctx: typer.Context,
    order_id: Annotated[str | None, typer.Argument(help="Only items of this order.")] = None,
    exec_: Annotated[str, typer.Option("--exec", help="Shell command: item JSON on stdin, result JSON on stdout.")] = "",
    type_name: Annotated[str | None, typer.Option("--type", help="Only items of orders of this type.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-w", min=1, max=MAX_PARALLEL, show_default=False,
                                                help="Commands running at once (default 1).")] = None,
    parallel: Annotated[int | None, typer.Option("--parallel", min=1, max=MAX_PARALLEL, hidden=True,
                                                 help="The old name of --workers.")] = None,
    agent: Agent = None,
    max_items: Annotated[int | None, typer.Option("--max-items", min=1, max=INT64_MAX, help="Stop after this many items.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, max=MAX_WAIT_SECONDS, callback=finite, help="Kill a command after this many seconds.")] = None,
    approve: Annotated[bool, typer.Option("--approve", help="Approve each order once all its items are submitted, if the approve rules of the config let it.")] = False,
    ttl: Ttl = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
    json_: Json = False,
) -> None:
    """Check out items and run CMD for each; submit its stdout, release on failure. Exit 0 when every item
    taken was submitted (and approved, with --approve); 7 when a command failed or an order in scope is
    failed; 6 when an approve rule of the config held an order."""
    from ..errors import Usage
    from ..cli.progress import make_progress
    from ..agents.exec import RunOptions

    if not exec_.strip():
        raise Usage("--exec CMD is required", hint="e.g. workctl run --exec ./agent.sh")
    if workers is not None and parallel is not None and workers != parallel:
        raise Usage("--parallel is the old name of --workers: give one of them")
    with open_workctl(ctx) as wc:
        progress = make_progress(quiet=quiet or json_, unit="item", counted="results", verbose=verbose)
        try:
            report = wc.run_exec(RunOptions(command=exec_, order_id=order_id, type_name=type_name, agent=agent,
                                            parallel=workers or parallel or 1, max_items=max_items, ttl=ttl, timeout=timeout,
                                            approve=approve),
                                 listener=progress)
        finally:
            progress.close()
    if json_:
        render.print_json(report)
    else:
        items = report["items"]
        render.line(f"{items['submitted']} submitted, {items['released']} released, {items['lost']} lost, "
                    f"{items['cancelled']} cancelled in {report['seconds']} s")
        for error in report["errors"][:20]:
            render.line(f"  item {error['item_id']}: {error['error']}")
        for order_id in report["approved"]:
            render.line(f"approved order {order_id}")
    error = run_error(report, json_shown=json_)
    if error is not None:
        raise error
