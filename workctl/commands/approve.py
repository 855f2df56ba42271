"""workctl approve ORDER_ID [--idempotency-key K] [--dry-run] [--json]"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Callable

import typer

from ..cli import render
from ..types.user_data_sync.masking import Masker
from ._common import IdempotencyKey, Json, Yes, boundary, confirm, interactive, open_workctl

SHOWN_CHANGES = 20


@boundary
def approve(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(help="A submitted order.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Compute and show the diff; change nothing.")] = False,
    idempotency_key: IdempotencyKey = None,
    yes: Yes = False,
    json_: Json = False,
) -> None:
    """Apply every item's result in one transaction and print the diff."""
    with open_workctl(ctx) as wc:
        if not dry_run and not yes and interactive():
            preview = wc.approve(order_id, dry_run=True)
            render_diff(preview["diff"], dry_run=True, mask=Masker(wc.sensitive_fields()))
            confirm(f"Apply order {order_id} to the users table?", [], yes=yes)
        masker = None if json_ else Masker(wc.sensitive_fields())

        def committed(result: dict[str, Any]) -> None:  # printed before any webhook is sent
            render_diff(result["diff"], dry_run=dry_run, mask=masker)
            state = result["order"]["state"]
            render.line(f"Dry run: nothing changed; order {order_id} is still {state}" if dry_run
                        else f"Order {order_id} is {state}")
            sys.stdout.flush()

        result = wc.approve(order_id, dry_run=dry_run, idempotency_key=idempotency_key,
                            on_commit=None if json_ else committed)
    if json_:  # one document, with the delivery counts
        render.print_json(result)
        return
    if dry_run:
        committed(result)
    render_webhooks(result)


def render_webhooks(result: dict[str, Any]) -> None:
    """The delivery counts after a committed operation (only when [[webhooks]] are configured)."""
    hooks = result.get("webhooks")
    if not hooks:
        return
    render.line("webhooks: " + ", ".join(f"{name} {count}" for name, count in hooks.items() if name != "interrupted"))
    if hooks.get("interrupted"):
        render.warn("interrupted while sending webhooks; what was committed stays committed, and the remaining "
                    "deliveries wait in the outbox: run workctl maintain to send them")


def render_diff(diff: dict[str, Any], *, dry_run: bool = False, mask: Callable[[str, Any], Any] | None = None,
                limit: int = SHOWN_CHANGES) -> None:
    """The human diff: summary, stats, then the first ``limit`` changes (0: all), sensitive values masked."""
    show = mask or (lambda _field, value: value)
    render.line(("Would apply: " if dry_run else "") + str(diff.get("summary", "")))
    render.line(f"before: {render.compact(diff.get('before'))}  after: {render.compact(diff.get('after'))}")
    if diff.get("stats"):
        render.line("stats: " + ", ".join(f"{k} {v}" for k, v in diff["stats"].items()))
    if diff.get("skipped_by_policy"):
        render.line("skipped by policy (not written, not listed): "
                    + ", ".join(f"{k} {v}" for k, v in diff["skipped_by_policy"].items()))
    changes = diff.get("changes") or []
    if changes:
        shown = changes[:limit] if limit else changes
        render.table(None, ["user", "field", "old", "new"],
                     [(c["user_id"], c["field"], render.compact(show(c["field"], c["old"]), 40),
                       render.compact(show(c["field"], c["new"]), 40)) for c in shown])
        if len(changes) > len(shown):
            render.line(f"… and {len(changes) - len(shown)} more changes (all of them with --json)")
    for change in diff.get("schema_changes") or []:
        render.line(f"schema: {'would add' if dry_run else 'added'} column {change['add_column']} "
                    f"({change['type']}) to {change['table']}")
