"""Rendering is generic, and nothing after a commit changes approve's exit code (issue 11): a plugin's diff
without ``user_id`` renders as a plain table of its keys in ``diff`` and ``approve``; a renderer that
fails, or an ``after_apply`` hook that is interrupted, after the commit leaves the order completed and
the exit code 0. Through the CLI, with a plugin order type registered in the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers import count, order_state, run


class Tickets:
    """A plugin order type whose diff has no user_id: changes are {ticket, status}."""

    @staticmethod
    def make() -> Any:
        from workctl.types import OrderType

        class TicketClose(OrderType):
            name = "test.tickets"
            schema = {"type": "object", "required": ["ids"], "properties": {"ids": {"type": "array"}}}

            def apply(self, ctx: Any, order: Any, items: Any) -> dict[str, Any]:
                ids = order["payload"]["ids"]
                return {"summary": f"Closed {len(ids)} tickets", "stats": {"closed": len(ids)},
                        "changes": [{"ticket": t, "status": "closed"} for t in ids] + ["a note"]}

            def after_apply(self, order: Any, diff: Any) -> None:
                raise KeyboardInterrupt  # a hook interrupted after the commit

        return TicketClose()


@pytest.fixture
def tickets(monkeypatch):
    from workctl.types import registry

    monkeypatch.setattr(registry, "_plugins", {"test.tickets": Tickets.make()})
    monkeypatch.setattr(registry, "_cache", {})


def _submitted_ticket_order(db: Path) -> str:
    order_id = run(db, "propose", "test.tickets", "--payload", '{"ids": [7, 8]}', "--json").json["order"]["id"]
    item = run(db, "checkout", order_id, "--agent", "a", "--json").json["item"]
    assert run(db, "submit", item["id"], "--agent", "a", "--lease-token", item["lease_token"],
               "--result", "{}").exit_code == 0
    return order_id


def test_a_diff_without_user_ids_renders_as_a_plain_table(tmp_path, tickets):
    db = tmp_path / "w.db"
    order_id = _submitted_ticket_order(db)
    preview = run(db, "diff", order_id)
    assert preview.exit_code == 0, preview.stderr
    assert "would change 3 changes" in preview.stdout and "ticket" in preview.stdout and "status" in preview.stdout
    approved = run(db, "approve", order_id)
    assert approved.exit_code == 0, approved.stderr
    assert "Closed 2 tickets" in approved.stdout and "closed" in approved.stdout and "a note" in approved.stdout
    assert order_state(db, order_id) == "completed"
    after = run(db, "diff", order_id)
    assert after.exit_code == 0 and "changed 3 changes" in after.stdout
    # The interrupted after_apply hook was recorded; the approve still succeeded.
    assert count(db, "SELECT count(*) FROM events WHERE order_id = ? AND event = 'after_apply_failed'",
                 (order_id,)) == 1


def test_a_renderer_failing_after_the_commit_does_not_change_the_exit_code(tmp_path, tickets, monkeypatch):
    import workctl.commands.approve as approve_command

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("user_id")

    monkeypatch.setattr(approve_command, "render_diff", broken)
    db = tmp_path / "w.db"
    order_id = _submitted_ticket_order(db)
    approved = run(db, "approve", order_id)
    assert approved.exit_code == 0
    assert f"order {order_id} was applied; printing the result failed (KeyError" in approved.stderr
    assert order_state(db, order_id) == "completed"
    # A dry run has committed nothing: there a renderer's bug is still a bug.
    second = _submitted_ticket_order(db)
    assert run(db, "approve", second, "--dry-run").exit_code == 1
