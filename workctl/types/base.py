"""The OrderType base class: schema, plan, submission validation, approval check, apply → diff.

A type is stateless; everything it needs arrives as arguments. The engine guarantees the order of
calls: ``validate_payload`` → ``prepare`` (at propose, before any lock) → ``plan``; ``validate_submission``
(at submit, before the lock); ``can_approve`` → ``prepare_apply`` (at approve, before the lock: read,
parse and diff) → ``stage_applied`` (before the lock, in small transactions of its own) → ``apply``
(inside approve's write transaction, given what ``prepare_apply`` returned in ``ctx.prepared``:
re-check and write) → ``record_applied`` (same transaction) → ``after_apply`` (after commit); or, when
the approve does not commit, ``unstage_applied``. A dry run (``approve --dry-run``, ``workctl diff``) calls ``prepare_apply`` and then
``apply`` with ``ctx.dry_run`` set, outside any write transaction when the type prepared.

Values from outside are checked for what the store can hold (``storable``): at propose by
``validate_payload`` and, unless a type overrides it without calling it, at submit by
``validate_submission``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

from ..errors import Invalid
from .storable import Problem, integer_problems, storable_problems
from ..store.base import Connection


class PreparedDiff(dict[str, Any]):
    """A diff as ``apply`` may return it: with its JSON text already ``encoded`` before the lock (approve
    then stores that text instead of encoding a large diff while it holds the write lock), and with the
    type's own ``private`` state for its ``record_applied`` (which receives this same object)."""

    def __init__(self, diff: Mapping[str, Any], *, encoded: str | None = None, private: Any = None):
        super().__init__(diff)
        self.encoded = encoded
        self.private = private


@dataclass(frozen=True)
class PlannedItem:
    input: dict[str, Any]
    max_attempts: int = 3


@dataclass
class ApplyContext:
    """What ``prepare_apply`` and ``apply`` may touch: the target database connection (for ``apply``
    inside an open write transaction) and, read-only, the store's (provenance lives there)."""

    target: Connection
    settings: Mapping[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    now: str | None = None  # the approve's clock (ISO-8601 UTC); None in a dry run or a plugin's own call
    store: Connection | None = None
    prepared: Any = None  # what prepare_apply returned (None: apply prepares itself)


class OrderType:
    name: str = ""
    description: str = ""
    schema: dict[str, Any] = {"type": "object"}
    # The keys this type reads from its ``[types."<name>"]`` config table. A type that lists them gets a
    # typo refused (config_invalid, with a did-you-mean) instead of silently falling back to a default;
    # None (a plugin that says nothing) accepts any key.
    settings_keys: frozenset[str] | None = None

    def validate_payload(self, payload: Any) -> None:
        """Full JSON Schema validation; every error is reported with its JSON path (exit 5)."""
        from .bulkcheck import reduced_schema  # big id arrays proven valid in C-speed passes, not per element
        from .schemacheck import surely_valid  # a valid payload needs no jsonschema import (~100 ms)

        schema = reduced_schema(self.schema, payload) or self.schema
        details: list[Problem] = []
        if not surely_valid(schema, payload):
            import jsonschema  # heavy: only a payload the stdlib check could not pass pays for it

            validator_cls = jsonschema.validators.validator_for(self.schema)
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

    def prepare_apply(self, ctx: ApplyContext, order: Mapping[str, Any], items: list[dict[str, Any]]) -> Any:
        """Before approve takes the write lock: read what the apply needs and compute the diff (the slow
        part of a large order), returning anything ``apply`` finds in ``ctx.prepared``. ``ctx.target``
        is inside a read transaction here. The default prepares nothing (None)."""
        return None

    def stage_applied(self, ctx: ApplyContext, order: Mapping[str, Any], items: list[dict[str, Any]]) -> None:
        """After ``prepare_apply``, before the lock, outside any transaction: write, in small transactions of
        its own, what ``record_applied`` will then only have to commit — rows that must not count until
        the apply commits (``user.data.sync``: a large order's provenance). ``ctx.prepared`` is what
        ``prepare_apply`` returned; keep what was staged there. The default stages nothing."""

    def unstage_applied(self, ctx: ApplyContext) -> None:
        """The approve will not commit (refused, the order moved, interrupted): remove what
        ``stage_applied`` wrote. Best effort: what a killed process leaves must not count anyway."""

    def apply(self, ctx: ApplyContext, order: Mapping[str, Any],
              items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Apply the submitted results (or, with ``ctx.dry_run``, only compute); return the diff. With
        ``ctx.prepared`` set, check inside the transaction that nothing it relied on moved, and write."""
        count = sum(1 for _ in items)
        return {"before": {"applied_items": 0}, "after": {"applied_items": count},
                "summary": f"Accepted {count} items", "changes": []}

    def record_submitted(self, store: Connection, item: Mapping[str, Any], result: Any,
                         now: str) -> None:
        """Inside submit's store transaction, once the result is accepted: keep what must be atomic
        with the submission (the error ledger). ``item`` carries id, order_id, input and attempts."""

    def records_submission(self, result: Any) -> bool:
        """Whether ``record_submitted`` writes anything for this result (then submit joins it to the
        submission's transaction; otherwise the submission is one atomic call of the store's hot path).
        A type that overrides ``record_submitted`` records, unless it says more precisely when."""
        return type(self).record_submitted is not OrderType.record_submitted

    def record_released(self, store: Connection, item: Mapping[str, Any],
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

    def record_applied(self, store: Connection, order: Mapping[str, Any],
                       items: list[dict[str, Any]], diff: Mapping[str, Any], now: str) -> None:
        """Inside the store transaction that marks the order completed: keep what must be atomic with
        the apply (provenance, cursors, outbox rows). ``items`` carry id, result and submitted_by."""

    def after_apply(self, order: Mapping[str, Any], diff: Mapping[str, Any]) -> None:
        """Runs after the apply committed (cache invalidation, notifications); must not raise."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description}


def _json_path(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts) or "$"
