"""workctl reject ORDER_ID --reason TEXT [--requeue] [--idempotency-key K] [--json]"""

from __future__ import annotations

from typing import Annotated

import typer

from ..cli import render
from ._common import IdempotencyKey, Json, Yes, boundary, confirm, open_workctl


@boundary
def reject(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(help="A submitted order.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; kept in the audit trail.")],
    requeue: Annotated[bool, typer.Option("--requeue", help="Send the items back for rework instead.")] = False,
    idempotency_key: IdempotencyKey = None,
    yes: Yes = False,
    json_: Json = False,
) -> None:
    """Reject submitted work: for good, or back to the queue with --requeue (attempts kept)."""
    if not requeue:  # a final rejection cannot be undone: ask on a terminal
        confirm(f"Reject order {order_id} for good?",
                [f"its submitted results are discarded and the order ends 'rejected' (reason: {reason}); "
                 "use --requeue to send the items back for rework instead"], yes=yes)
    with open_workctl(ctx) as wc:
        result = wc.reject(order_id, reason=reason, requeue=requeue, idempotency_key=idempotency_key)
    if json_:
        render.print_json(result)
        return
    render.line(f"Order {order_id} is {result['order']['state']} ({result['items']['count']} items "
                f"{result['items']['state']})")
