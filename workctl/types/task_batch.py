"""``task.batch``: the minimal generic type — one item per task, any JSON object as the result.

For shell-scripted agents whose work has no structured apply (and for benchmarks of the queue itself).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

from .base import ApplyContext, OrderType, PlannedItem


class TaskBatch(OrderType):
    name = "task.batch"
    settings_keys: frozenset[str] = frozenset()
    description = "Generic tasks: one work item per element of 'tasks'; results are recorded, nothing is applied."
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["tasks"],
        "properties": {
            "tasks": {"type": "array", "minItems": 1, "maxItems": 1_000_000},
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100, "default": 3},
            "note": {"type": "string", "maxLength": 10_000},
        },
    }

    def plan(self, payload: dict[str, Any]) -> Iterator[PlannedItem]:
        attempts = int(payload.get("max_attempts", 3))
        for task in payload["tasks"]:
            yield PlannedItem(input={"task": task}, max_attempts=attempts)

    def apply(self, ctx: ApplyContext, order: Mapping[str, Any],
              items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        count = sum(1 for _ in items)
        return {"before": {"completed_tasks": 0}, "after": {"completed_tasks": count},
                "summary": f"Accepted results of {count} tasks", "changes": []}
