"""workctl revert ORDER_ID [--dry-run] [--json]"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..cli import render
from ..types.user_data_sync.masking import Masker
from ._common import Json, Yes, boundary, confirm, interactive, open_workctl


@boundary
def revert(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(help="A completed user.data.sync order.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be restored; change nothing.")] = False,
    yes: Yes = False,
    json_: Json = False,
) -> None:
    """Restore the values an applied order overwrote, where they still hold what it wrote (once only)."""
    with open_workctl(ctx) as wc:
        if not dry_run and not yes and interactive():
            stats = wc.revert(order_id, dry_run=True)["stats"]
            confirm(f"Revert order {order_id}?", [f"would restore {stats['restored']} of {stats['recorded']} recorded "
                                                  f"changes; skip {stats['skipped']} (changed since)"], yes=yes)
        result = wc.revert(order_id, dry_run=dry_run)
        show = Masker(() if json_ else wc.sensitive_fields())
    if json_:
        render.print_json(result)
        return
    stats = result["stats"]
    head = "Would restore" if dry_run else f"Revert {result['revert_id']}: restored"
    render.line(f"{head} {stats['restored']} of {stats['recorded']} recorded changes of order {order_id}; "
                f"skipped {stats['skipped']} (never overwritten)")
    if result["restored"]:
        render.table("restored", ["user", "field", "order wrote", "restored"],
                     [(c["user_id"], c["field"], render.compact(show(c["field"], c["order_wrote"]), 40),
                       render.compact(show(c["field"], c["restore"]), 40)) for c in result["restored"]])
    if result["skipped"]:
        render.table("skipped (never overwritten)", ["user", "field", "order wrote", "now", "reason", "changed by"],
                     [(c["user_id"], c["field"], render.compact(show(c["field"], c["order_wrote"]), 40),
                       render.compact(show(c["field"], c["current"]), 40), c["reason"], _by(c.get("changed_by")))
                      for c in result["skipped"]])
    if dry_run:
        render.line(f"Dry run: nothing changed; run without --dry-run to revert order {order_id}")


def _by(writer: dict[str, Any] | None) -> str:
    """Who wrote a field after the order: a later order (its source and id) or an edit outside workctl."""
    if not writer:
        return ""
    if writer.get("kind") == "outside_workctl":
        return "an edit outside workctl"
    return f"order {str(writer.get('order_id'))[:8]} ({writer.get('source')}, {writer.get('at')})"
