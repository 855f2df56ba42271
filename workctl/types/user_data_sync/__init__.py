"""``user.data.sync``: the seed's order type — sync fields of local users from crm, analytics or billing.

Propose checks that the target's ``users`` is a table with a unique ``id`` and every requested field
against it (``fields``: an existing column the sync may write, see ``fields``), so nothing
user-supplied ever reaches SQL text except as a checked, quoted identifier. The rest lives in modules
of its own: ``validate`` (a batch result, at submit), ``apply`` (prepare before approve's lock, write
inside it), ``provenance`` (conflict policies on source times, the change history), ``revert``,
``delta`` (per-user watermarks), ``ledger`` (failed users), ``fieldmap`` and ``masking``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

from ...errors import Invalid
from ...store.target import user_columns
from ..base import ApplyContext, OrderType, PlannedItem, PreparedDiff, Problem
from ..storable import DEFAULT_MAX_CHARS, storable_problems
from . import apply as applying
from . import delta, fieldmap, ledger, provenance, validate
from .fields import IDENTIFIER, FieldRules, allowed_columns, refusal_message
from ...store.base import Connection

SOURCES = ("crm", "analytics", "billing")
# What each source returns when the order names no fields (intersected with the allowed columns).
SOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "crm": ("email", "phone", "company", "name"),
    "analytics": ("last_seen", "sessions", "plan"),
    "billing": ("plan", "mrr", "currency"),
}


class UserDataSync(OrderType):
    name = "user.data.sync"
    settings_keys = frozenset({"sensitive_fields", "deny_fields", "lookback_seconds"})
    description = "Sync fields of local users from an external source (crm, analytics, billing) in batches."
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["source", "user_ids"],
        "properties": {
            "source": {"type": "string", "enum": list(SOURCES)},
            "user_ids": {"type": "array", "minItems": 1, "maxItems": 1_000_000, "uniqueItems": True,
                         "items": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}},
            "fields": {"type": "array", "minItems": 1, "maxItems": 200, "uniqueItems": True,
                       "items": {"type": "string", "pattern": IDENTIFIER}},
            "batch_size": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100, "default": 3},
            "min_success_ratio": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0},
            # Variation 2: external -> local names, winning over the source's field_map (fieldmap).
            "field_map": {"type": "object", "maxProperties": 200,
                          "propertyNames": {"minLength": 1, "maxLength": 200},
                          "additionalProperties": {"type": "string", "pattern": IDENTIFIER}},
            # Variation 5: fetch only users changed since the cursor or `since` (delta).
            "sync_mode": {"type": "string", "enum": list(delta.MODES), "default": "full"},
            "since": {"type": "string", "format": "date-time"},
            "lookback_seconds": {"type": "integer", "minimum": 0, "maximum": delta.MAX_LOOKBACK_SECONDS},
            # Variation 1: the order whose failed users this one retries (ledger).
            "retry_of": {"type": "string", "minLength": 1, "maxLength": 100},
            # Variation 3: per-field conflict policy (default overwrite) and opt-in provenance columns.
            "policies": {"type": "object", "propertyNames": {"pattern": IDENTIFIER},
                         "additionalProperties": {"enum": list(provenance.POLICIES)}},
            "provenance_columns": {"type": "boolean", "default": False},
        },
    }

    # -- propose -------------------------------------------------------------------------------
    def prepare(self, payload: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
        target: Connection = settings["target"]
        rules = FieldRules.from_settings(settings)
        allowed = allowed_columns(target, rules)  # also refuses a users view, or one without a unique id
        max_chars = max_value_chars(settings)
        problems = storable_problems(payload, max_chars=max_chars)
        if problems:
            raise Invalid("payload holds values that cannot be stored: " + "; ".join(
                f"{p['path']}: {p['message']}" for p in problems[:3]), code="payload_invalid", details=problems)
        prepared = dict(payload)
        fieldmap.check(payload.get("field_map"), allowed)
        if "fields" in payload:
            existing = user_columns(target)
            problems = [{"path": f"fields.{i}", "message": refusal_message(name, rules, existing, allowed)}
                        for i, name in enumerate(payload["fields"]) if name not in allowed]
            if problems:
                raise Invalid("fields not allowed: " + "; ".join(p["message"] for p in problems[:3]),
                              code="field_not_allowed", details=problems)
        else:
            defaults = [f for f in SOURCE_FIELDS[payload["source"]] if f in allowed]
            if not defaults:
                raise Invalid(f"no 'fields' given and none of {payload['source']}'s fields "
                              f"({', '.join(SOURCE_FIELDS[payload['source']])}) is an allowed column",
                              code="field_not_allowed", details=[{"path": "fields", "message": "required here"}])
            prepared["fields"] = defaults
        policy_problems = provenance.check_payload(prepared, prepared["fields"])
        if policy_problems:
            raise Invalid("policies name fields the order does not sync: "
                          + "; ".join(p["message"] for p in policy_problems[:3]),
                          code="payload_invalid", details=policy_problems)
        prepared.setdefault("batch_size", 50)
        prepared.setdefault("max_attempts", 3)
        prepared.setdefault("min_success_ratio", 1.0)
        if max_chars != DEFAULT_MAX_CHARS:
            prepared["max_value_chars"] = max_chars  # items carry it: submit checks against it
        delta.prepare(payload, prepared, settings.get("store"), settings)
        return prepared

    def plan(self, payload: dict[str, Any]) -> Iterator[PlannedItem]:
        for ids, extras in delta.batches(payload):
            yield PlannedItem(
                input={"source": payload["source"], "user_ids": ids,
                       "fields": payload["fields"], "min_success_ratio": payload["min_success_ratio"],
                       **_item_extras(payload), **extras},
                max_attempts=payload["max_attempts"],
            )

    # -- submit --------------------------------------------------------------------------------
    def validate_submission(self, item_input: dict[str, Any], result: Any,
                            payload: Mapping[str, Any]) -> list[Problem]:
        return validate.problems(item_input, result, payload)

    def record_submitted(self, store: Connection, item: Mapping[str, Any], result: Any,
                         now: str) -> None:
        failed = result.get("failed_users") if isinstance(result, dict) else None
        if failed:  # the error ledger (ledger), atomic with the submission
            ledger.record(store, order_id=item["order_id"], item_id=item["id"], source=item["input"]["source"],
                          failed_users=failed, attempt=item["attempts"], now=now)

    def records_submission(self, result: Any) -> bool:
        return isinstance(result, dict) and bool(result.get("failed_users"))

    def record_released(self, store: Connection, item: Mapping[str, Any],
                        failed_users: list[dict[str, Any]], now: str) -> None:
        # Users of a refused or released batch are in the ledger too (workctl failures shows their class).
        ledger.record(store, order_id=item["order_id"], item_id=item["id"], source=item["input"]["source"],
                      failed_users=failed_users, attempt=item["attempts"], now=now)

    def source(self, payload: Mapping[str, Any]) -> str | None:
        return str(payload["source"])

    def parent(self, payload: Mapping[str, Any]) -> str | None:
        retry_of = payload.get("retry_of")
        return None if retry_of is None else str(retry_of)

    def scope_key(self, payload: Mapping[str, Any]) -> str | None:
        """Source, user set and fields (and a delta order's mode and start): what sync resumes by."""
        import hashlib
        import json

        scope = {"source": payload["source"], "user_ids": sorted(payload["user_ids"]),
                 "fields": sorted(payload["fields"]), "sync_mode": payload.get("sync_mode", "full"),
                 "since": payload.get("since")}
        return "user.data.sync:" + hashlib.sha256(json.dumps(scope, sort_keys=True).encode()).hexdigest()

    # -- approve -------------------------------------------------------------------------------
    def prepare_apply(self, ctx: ApplyContext, order: Mapping[str, Any], items: list[dict[str, Any]]) -> Any:
        return applying.prepare(ctx, order, items)

    def stage_applied(self, ctx: ApplyContext, order: Mapping[str, Any], items: list[dict[str, Any]]) -> None:
        applying.stage(ctx, order)

    def unstage_applied(self, ctx: ApplyContext) -> None:
        applying.unstage(ctx)

    def apply(self, ctx: ApplyContext, order: Mapping[str, Any],
              items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        return applying.apply(ctx, order, items)

    def record_applied(self, store: Connection, order: Mapping[str, Any],
                       items: list[dict[str, Any]], diff: Mapping[str, Any], now: str) -> None:
        prep = diff.private if isinstance(diff, PreparedDiff) else None
        staged, moved = (prep.staged, prep.moved) if isinstance(prep, applying.Prepared) else (None, [])
        provenance.record_applied(store, order, items, diff, now, staged, moved)  # one row per applied change
        delta.advance(store, order, items, diff, now)  # watermarks move only with this commit


def max_value_chars(settings: Mapping[str, Any]) -> int:
    """``[target] max_value_chars``: the longest string a sync may write (default 65,536 characters)."""
    value = (settings.get("target_config") or {}).get("max_value_chars", DEFAULT_MAX_CHARS)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000_000:
        raise Invalid("config: [target] max_value_chars must be an integer from 1 to 1000000000",
                      code="config_invalid")
    return value


def _item_extras(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What an item carries besides the batch: the order's field_map and string bound."""
    extras: dict[str, Any] = {}
    if payload.get("field_map"):
        extras["field_map"] = payload["field_map"]
    if "max_value_chars" in payload:
        extras["max_value_chars"] = payload["max_value_chars"]
    return extras
