"""workctl approve ORDER_ID [--idempotency-key K] [--dry-run] [--json]"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .. import output
from ._common import IdempotencyKey, Json, boundary, open_workctl

SHOWN_CHANGES = 20


@boundary
def approve(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(help="A submitted order.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Compute and show the diff; change nothing.")] = False,
    idempotency_key: IdempotencyKey = None,
    json_: Json = False,
) -> None:
    """Apply every item's result in one transaction and print the diff."""
    with open_workctl(ctx) as wc:
        result = wc.approve(order_id, dry_run=dry_run, idempotency_key=idempotency_key)
    if json_:
        output.print_json(result)
        return
    render_diff(result["diff"], dry_run=dry_run)
    state = result["order"]["state"]
    output.line(f"Dry run: nothing changed; order {order_id} is still {state}" if dry_run
                else f"Order {order_id} is {state}")


def render_diff(diff: dict[str, Any], *, dry_run: bool = False) -> None:
    output.line(("Would apply: " if dry_run else "") + str(diff.get("summary", "")))
    output.line(f"before: {output.compact(diff.get('before'))}  after: {output.compact(diff.get('after'))}")
    if diff.get("stats"):
        output.line("stats: " + ", ".join(f"{k} {v}" for k, v in diff["stats"].items()))
    changes = diff.get("changes") or []
    if changes:
        output.table(None, ["user", "field", "old", "new"],
                     [(c["user_id"], c["field"], output.compact(c["old"], 40), output.compact(c["new"], 40))
                      for c in changes[:SHOWN_CHANGES]])
        if len(changes) > SHOWN_CHANGES:
            output.line(f"… and {len(changes) - SHOWN_CHANGES} more changes (all of them with --json)")
