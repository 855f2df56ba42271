"""workctl diff ORDER_ID [--limit N] [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ..types.user_data_sync.masking import Masker
from ..limits import MAX_LIST_LIMIT
from ._common import Json, boundary, open_workctl
from .approve import render_diff


@boundary
def diff(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(help="A submitted order (preview) or a completed one (what it did).")],
    limit: Annotated[int, typer.Option("--limit", min=0, max=MAX_LIST_LIMIT, help="Changes to list (0 = all).")] = 0,
    json_: Json = False,
) -> None:
    """Show the exact field-level changes approve would make (old -> new per user and field)."""
    with open_workctl(ctx) as wc:
        result = wc.diff(order_id)
        masker = None if json_ else Masker(wc.sensitive_fields())
    if json_:
        render.print_json(result)
        return
    order, diff = result["order"], result["diff"]
    changes = (diff.get("changes") or []) if isinstance(diff, dict) else []
    verb = "changed" if result["applied"] else "would change"
    users = {c["user_id"] for c in changes if isinstance(c, dict) and "user_id" in c}
    if users and len(users) <= len(changes):
        stats = diff.get("stats") if isinstance(diff.get("stats"), dict) else {}
        what = (f"{_n(len(changes), 'field')} of {_n(len(users), 'user')}; "
                f"{_n(stats.get('unchanged', 0), 'user')} unchanged")
    else:  # another order type's diff: its changes, whatever they are
        what = _n(len(changes), "change")
    render.line(f"order {order['id']} ({order['type']}, {order['state']}): {verb} {what}")
    render_diff(diff, dry_run=not result["applied"], mask=masker, limit=limit)
    if masker and masker.fields:
        render.line(f"masked: {', '.join(sorted(masker.fields))} (sensitive_fields; --json shows the values)")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
