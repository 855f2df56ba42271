"""workctl approve ORDER_ID [--idempotency-key K] [--dry-run] [--json]"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Callable

import typer

from ..cli import render
from ..types.user_data_sync.masking import Masker
from ._common import IdempotencyKey, Json, Yes, boundary, confirm, interactive, open_workctl

SHOWN_CHANGES = 20
SYNC_CHANGE_KEYS = ("user_id", "field", "old", "new")


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

        def show(result: dict[str, Any]) -> None:
            render_diff(result["diff"], dry_run=dry_run, mask=masker)
            state = result["order"]["state"]
            render.line(f"Dry run: nothing changed; order {order_id} is still {state}" if dry_run
                        else f"Order {order_id} is {state}")
            sys.stdout.flush()

        def committed(result: dict[str, Any]) -> None:  # printed before any webhook is sent
            render.after_commit(lambda: show(result), f"order {order_id} was applied")

        result = wc.approve(order_id, dry_run=dry_run, idempotency_key=idempotency_key,
                            on_commit=None if json_ else committed)
    if dry_run:  # nothing committed: a renderer's failure is the command's failure
        if json_:
            render.print_json(result)
        else:
            show(result)
        return
    # Committed: nothing printed from here on may change the exit code.
    render.after_commit(lambda: render.print_json(result) if json_ else render_webhooks(result),
                        f"order {order_id} was applied")


def render_webhooks(result: dict[str, Any]) -> None:
    """The delivery counts after a committed operation (only when [[webhooks]] are configured)."""
    hooks = result.get("webhooks")
    if not hooks:
        return
    render.line("webhooks: " + ", ".join(f"{name} {count}" for name, count in hooks.items() if name != "interrupted"))
    if hooks.get("interrupted"):
        render.warn("interrupted while sending webhooks; what was committed stays committed, and the remaining "
                    "deliveries wait in the outbox: run workctl maintain to send them")


def render_diff(diff: Any, *, dry_run: bool = False, mask: Callable[[str, Any], Any] | None = None,
                limit: int = SHOWN_CHANGES) -> None:
    """The human diff: summary, stats, then the first ``limit`` changes (0: all), sensitive values masked.

    Any order type's diff renders: ``user.data.sync``'s changes as a user/field/old/new table, any other
    list of changes as a plain table of its keys."""
    show = mask or (lambda _field, value: value)
    if not isinstance(diff, dict):
        render.line(render.compact(diff, 200))
        return
    render.line(("Would apply: " if dry_run else "") + str(diff.get("summary", "")))
    if "before" in diff or "after" in diff:
        render.line(f"before: {render.compact(diff.get('before'))}  after: {render.compact(diff.get('after'))}")
    for key, label in (("stats", "stats: "), ("skipped_by_policy", "skipped by policy (not written, not listed): ")):
        if isinstance(diff.get(key), dict) and diff[key]:
            render.line(label + ", ".join(f"{k} {v}" for k, v in diff[key].items()))
    changes = diff.get("changes") or []
    if isinstance(changes, list) and changes:
        shown = changes[:limit] if limit else changes
        if all(isinstance(c, dict) and all(k in c for k in SYNC_CHANGE_KEYS) for c in shown):
            render.table(None, ["user", "field", "old", "new"],
                         [(c["user_id"], c["field"], render.compact(show(str(c["field"]), c["old"]), 40),
                           render.compact(show(str(c["field"]), c["new"]), 40)) for c in shown])
        else:
            _plain_table(shown)
        if len(changes) > len(shown):
            render.line(f"… and {len(changes) - len(shown)} more changes (all of them with --json)")
    for change in diff.get("schema_changes") or []:
        if isinstance(change, dict) and {"add_column", "type", "table"} <= change.keys():
            render.line(f"schema: {'would add' if dry_run else 'added'} column {change['add_column']} "
                        f"({change['type']}) to {change['table']}")


def _plain_table(changes: list[Any]) -> None:
    """Changes of another shape: one column per key (in order of first appearance), one row per change."""
    columns: list[str] = []
    for change in changes:
        for key in change if isinstance(change, dict) else ["change"]:
            if str(key) not in columns:
                columns.append(str(key))
    rows = []
    for change in changes:
        cells = change if isinstance(change, dict) else {"change": change}
        rows.append([render.compact(cells[c], 40) if c in cells else "" for c in columns])
    render.table(None, columns, rows)
