"""workctl why USER_ID [FIELD] [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..limits import INT64_MAX, INT64_MIN
from ..cli import render
from ..types.user_data_sync.masking import Masker
from ._common import Json, boundary, open_workctl


@boundary
def why(
    ctx: typer.Context,
    user_id: Annotated[int, typer.Argument(help="A local user id.", min=INT64_MIN, max=INT64_MAX)],
    field: Annotated[str | None, typer.Argument(help="Only this field.")] = None,
    json_: Json = False,
) -> None:
    """Show the history of a user's fields: each value, when, by which order, source and agent."""
    with open_workctl(ctx) as wc:
        result = wc.why(user_id, field)
        show = Masker(() if json_ else wc.sensitive_fields())
    if json_:
        render.print_json(result)
        return
    if not result["history"]:
        what = f"field {field} of user {user_id}" if field else f"user {user_id}"
        render.line(f"no recorded changes for {what}"
                    + ("" if result["exists_locally"] else " (no such user in the users table)"))
        return
    for name, summary in result["fields"].items():
        rows = []
        for e in (e for e in result["history"] if e["field"] == name):
            note = "reverted" if e["reverted_by"] else ""
            rows.append((_time(e["set_at"]), render.compact(show(name, e["value"]), 30),
                         render.compact(show(name, e["old"]), 30), e["source"], _time(e.get("source_at")),
                         e["agent"] or "", e["order_id"][:8], note))
        render.line(f"user {user_id} · {name}: now {render.compact(show(name, summary['current']), 40)}")
        render.table(None, ["set at (UTC)", "value", "was", "source", "source time", "agent", "order", ""], rows)
        if summary["changed_outside"]:
            render.line(f"  {name} was changed outside workctl after its last recorded value")


def _time(text: str | None) -> str:
    return (text or "")[:19].replace("T", " ")
