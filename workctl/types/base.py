"""The OrderType base class: schema, plan, submission validation, approval check, apply → diff.

A type is stateless; everything it needs arrives as arguments. The engine guarantees the order of
calls: ``validate_payload`` → ``prepare`` (at propose, before any lock) → ``plan``; ``validate_submission``
(at submit, before the lock); ``can_approve`` (at approve, before the lock) → ``apply`` (inside approve's
transaction) → ``after_apply`` (after commit).

Values from outside are checked for what the store can hold (``storable``): at propose by
``validate_payload`` and, unless a type overrides it without calling it, at submit by
``validate_submission``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

from ..errors import Invalid
from .storable import Problem, integer_problems, storable_problems


@dataclass(frozen=True)
class PlannedItem:
    input: dict[str, Any]
    max_attempts: int = 3


@dataclass
class ApplyContext:
    """What ``apply`` may touch: the target database connection (inside an open transaction)."""

    target: sqlite3.Connection
    settings: Mapping[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    now: str | None = None  # the approve's clock (ISO-8601 UTC); None in a dry run or a plugin's own call


class OrderType:
    name: str = ""
    description: str = ""
    schema: dict[str, Any] = {"type": "object"}

    def validate_payload(self, payload: Any) -> None:
        """Full JSON Schema validation; every error is reported with its JSON path (exit 5)."""
        import jsonschema  # heavy (~90 ms): only propose pays for it

        from .bulkcheck import reduced_schema  # big id arrays proven valid in C-speed passes, not per element

        validator_cls = jsonschema.validators.validator_for(self.schema)
        schema = reduced_schema(self.schema, payload) or self.schema
        validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
        errors = sorted(validator.iter_errors(payload), key=lambda e: [str(p) for p in e.absolute_path])
        details = [{"path": _json_path(err.absolute_path), "message": err.message} for err in errors]
        # What jsonschema lets through: 1.0 where an integer belongs, NaN, 2**64, lone surrogates.
        details += integer_problems(self.schema, payload) + storable_problems(payload)
        if details:
            summary = "; ".join(f"{d['path']}: {d['message']}" for d in details[:5])
            more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
            raise Invalid(f"payload does not match the {self.name} schema: {summary}{more}",
                          code="payload_invalid", details=details)

    def prepare(self, payload: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
        """Fill defaults and run checks the schema cannot express; return the payload to store."""
        return payload

    def plan(self, payload: dict[str, Any]) -> Iterator[PlannedItem]:
        """The work items of an order; the default is one item holding the whole payload."""
        yield PlannedItem(input=payload, max_attempts=int(payload.get("max_attempts", 3)))

    def validate_submission(self, item_input: dict[str, Any], result: Any,
                            payload: Mapping[str, Any]) -> list[Problem]:
        """Every problem with the agent's result; an empty list accepts it. ``payload`` is the order's,
        parsed only when first read (prefer what the item's input carries)."""
        if not isinstance(result, dict):
            return [{"path": "$", "message": "result must be a JSON object"}]
        return storable_problems(result)

    def can_approve(self, payload: dict[str, Any], results: list[Any]) -> list[Problem]:
        return []

    def apply(self, ctx: ApplyContext, order: Mapping[str, Any],
              items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Apply the submitted results (or, with ``ctx.dry_run``, only compute); return the diff."""
        count = sum(1 for _ in items)
        return {"before": {"applied_items": 0}, "after": {"applied_items": count},
                "summary": f"Accepted {count} items", "changes": []}

    def record_submitted(self, store: sqlite3.Connection, item: Mapping[str, Any], result: Any,
                         now: str) -> None:
        """Inside submit's store transaction, once the result is accepted: keep what must be atomic
        with the submission (the error ledger). ``item`` carries id, order_id, input and attempts."""

    def record_released(self, store: sqlite3.Connection, item: Mapping[str, Any],
                        failed_users: list[dict[str, Any]], now: str) -> None:
        """Inside release's store transaction: keep the per-user failures of a batch that was given back
        (refused at submit, or its source unavailable). ``failed_users``: ``{"user_id", "error"}``."""

    def source(self, payload: Mapping[str, Any]) -> str | None:
        """The external system the order reads from (kept as a column, so finding the sources of open
        orders reads no payload); None for types without one."""
        return None

    def parent(self, payload: Mapping[str, Any]) -> str | None:
        """The order this one follows up (e.g. a retry of another's failed users); None for most."""
        return None

    def scope_key(self, payload: Mapping[str, Any]) -> str | None:
        """What makes two orders "the same work" (``sync --source`` resumes an open order of the same scope
        instead of proposing a duplicate); None: every order is its own. Computed from the prepared payload."""
        return None

    def record_applied(self, store: sqlite3.Connection, order: Mapping[str, Any],
                       items: list[dict[str, Any]], diff: Mapping[str, Any], now: str) -> None:
        """Inside the store transaction that marks the order completed: keep what must be atomic with
        the apply (provenance, cursors, outbox rows). ``items`` carry id, result and submitted_by."""

    def after_apply(self, order: Mapping[str, Any], diff: Mapping[str, Any]) -> None:
        """Runs after the apply committed (cache invalidation, notifications); must not raise."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description}


def _json_path(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts) or "$"
