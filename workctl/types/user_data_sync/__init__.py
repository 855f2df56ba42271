"""``user.data.sync``: the seed's order type — sync fields of local users from crm, analytics or billing.

Propose checks every requested field against the target database's ``users`` table (an existing
column, not ``id``, not on the deny-list), so nothing user-supplied ever reaches SQL text except as
a checked, quoted identifier. Submit checks each batch result by hand (no jsonschema on the hot
path). Apply reads the affected rows once, writes only the fields whose value changes with one
``executemany`` per set of changed columns, and returns the diff with per-field changes.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime
from typing import Any, Iterable, Iterator, Mapping

from . import provenance
from . import delta, ledger as failures, fieldmap
from ...errors import Invalid
from ..base import ApplyContext, OrderType, PlannedItem, Problem

SOURCES = ("crm", "analytics", "billing")
# What each source returns when the order names no fields (intersected with the allowed columns).
SOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "crm": ("email", "phone", "company", "name"),
    "analytics": ("last_seen", "sessions", "plan"),
    "billing": ("plan", "mrr", "currency"),
}
# Substrings of column names that are never synced unless the config says otherwise.
DEFAULT_DENY = ("password", "passwd", "secret", "token", "api_key", "apikey", "hash", "salt",
                "admin", "role", "permission", "superuser", "is_staff")
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MAX_VALUE_CHARS = 65_536


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def deny_list(settings: Mapping[str, Any]) -> tuple[str, ...]:
    """The built-in deny-list plus the config's ``deny_fields`` (which can only add, never remove)."""
    extra = settings.get("deny_fields", ())
    if isinstance(extra, str) or not all(isinstance(x, str) for x in extra):
        raise Invalid("config: deny_fields must be a list of strings", code="config_invalid")
    return (*DEFAULT_DENY, *extra)


def allowed_columns(conn: sqlite3.Connection, deny: Iterable[str] = DEFAULT_DENY) -> list[str]:
    """Columns of ``users`` that a sync may write: existing, not the key, not deny-listed."""
    columns = [row[1] for row in conn.execute("SELECT * FROM pragma_table_info('users')")]
    if not columns:
        raise Invalid("the target database has no 'users' table to sync into", code="no_users_table")
    deny_lower = [d.lower() for d in deny]
    return [c for c in columns
            if c.lower() != "id" and not any(d in c.lower() for d in deny_lower)
            and re.match(IDENTIFIER, c) and not provenance.is_provenance_column(c)]


class UserDataSync(OrderType):
    name = "user.data.sync"
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
            # Variation 2: external -> local names, winning over the source's field_map (workctl.fieldmap).
            "field_map": {"type": "object", "maxProperties": 200,
                          "propertyNames": {"minLength": 1, "maxLength": 200},
                          "additionalProperties": {"type": "string", "pattern": IDENTIFIER}},
            # Variation 5: fetch only users changed since the cursor or `since` (workctl.delta).
            "sync_mode": {"type": "string", "enum": list(delta.MODES), "default": "full"},
            "since": {"type": "string", "format": "date-time"},
            # Variation 1: the order whose failed users this one retries (workctl.failures).
            "retry_of": {"type": "string", "minLength": 1, "maxLength": 100},
            # Variation 3: per-field conflict policy (default overwrite) and opt-in provenance columns.
            "policies": {"type": "object", "propertyNames": {"pattern": IDENTIFIER},
                         "additionalProperties": {"enum": list(provenance.POLICIES)}},
            "provenance_columns": {"type": "boolean", "default": False},
        },
    }

    # -- propose -------------------------------------------------------------------------------
    def prepare(self, payload: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
        target: sqlite3.Connection = settings["target"]
        allowed = allowed_columns(target, deny_list(settings))
        prepared = dict(payload)
        fieldmap.check(payload.get("field_map"), allowed)
        delta.prepare(payload, prepared, settings.get("store"))
        if "fields" in payload:
            problems = [
                {"path": f"fields.{i}",
                 "message": f"'{name}' is not a column the sync may write (allowed: {', '.join(allowed)})"}
                for i, name in enumerate(payload["fields"]) if name not in allowed
            ]
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
        return prepared

    def plan(self, payload: dict[str, Any]) -> Iterator[PlannedItem]:
        ids, size = payload["user_ids"], payload["batch_size"]
        for start in range(0, len(ids), size):
            yield PlannedItem(
                input={"source": payload["source"], "user_ids": ids[start:start + size],
                       "fields": payload["fields"], "min_success_ratio": payload["min_success_ratio"],
                       **_item_extras(payload)},
                max_attempts=payload["max_attempts"],
            )

    # -- submit --------------------------------------------------------------------------------
    def validate_submission(self, item_input: dict[str, Any], result: Any,
                            payload: Mapping[str, Any]) -> list[Problem]:
        if not isinstance(result, dict):
            return [{"path": "$", "message": "result must be a JSON object"}]
        problems: list[Problem] = []

        def bad(path: str, message: str) -> None:
            problems.append({"path": path, "message": message})

        for key in result:
            if key not in ("success", "synced_users", "failed_users", "errors", "fetched_at", "unchanged_users"):
                bad(key, "unknown key (allowed: success, synced_users, failed_users, errors, fetched_at, "
                         "unchanged_users)")
        if "fetched_at" in result and not (isinstance(result["fetched_at"], str)
                                           and isinstance(provenance.parse_time(result["fetched_at"]), datetime)):
            bad("fetched_at", "must be an ISO-8601 date-time string (when the batch was fetched)")
        if not isinstance(result.get("success"), bool):
            bad("success", "required, must be true or false")
        synced = result.get("synced_users")
        if not isinstance(synced, list):
            bad("synced_users", "required, must be an array")
            synced = []
        failed = result.get("failed_users", [])
        if not isinstance(failed, list):
            bad("failed_users", "must be an array")
            failed = []
        if "errors" in result and not isinstance(result["errors"], list):
            bad("errors", "must be an array")

        batch = item_input["user_ids"]
        batch_set = set(batch)
        fields = set(item_input["fields"])
        seen: dict[int, str] = {}

        def account(path: str, user_id: Any) -> bool:
            if not _is_int(user_id):
                bad(f"{path}.user_id", "required, must be an integer")
                return False
            if user_id not in batch_set:
                bad(f"{path}.user_id", f"user {user_id} is not in this batch")
                return False
            if user_id in seen:
                bad(f"{path}.user_id", f"user {user_id} appears more than once (first at {seen[user_id]})")
                return False
            seen[user_id] = path
            return True

        synced_ok = 0
        for i, entry in enumerate(synced):
            # Fast path: a well-formed entry is checked without building any message or path.
            if (type(entry) is dict and entry.keys() == _ENTRY_KEYS and entry["verified"] is True
                    and type(user_id := entry["user_id"]) is int and user_id in batch_set and user_id not in seen
                    and type(data := entry["data"]) is dict and data.keys() <= fields
                    and all(type(v) in _PLAIN_SCALARS and (type(v) is not str or len(v) <= MAX_VALUE_CHARS)
                            for v in data.values())):
                seen[user_id] = f"synced_users.{i}"
                synced_ok += 1
                continue
            path = f"synced_users.{i}"
            if not isinstance(entry, dict):
                bad(path, "must be an object {user_id, data, verified}")
                continue
            for key in entry:
                if key not in _ENTRY_KEYS:
                    bad(f"{path}.{key}", "unknown key (allowed: user_id, data, verified)")
            counted = account(path, entry.get("user_id"))
            if entry.get("verified") is not True:
                bad(f"{path}.verified", "every synced user must be verified (verified: true)")
            data = entry.get("data")
            if not isinstance(data, dict):
                bad(f"{path}.data", "required, must be an object of field: value")
                continue
            for field, value in data.items():
                if field not in fields:
                    bad(f"{path}.data.{field}", f"'{field}' was not requested (fields: {', '.join(sorted(fields))})")
                elif not _is_scalar(value):
                    bad(f"{path}.data.{field}", "must be a string, number, boolean or null")
                elif isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
                    bad(f"{path}.data.{field}", f"longer than {MAX_VALUE_CHARS} characters")
            if counted:
                synced_ok += 1
        for i, entry in enumerate(failed):
            path = f"failed_users.{i}"
            if not isinstance(entry, dict):
                bad(path, "must be an object {user_id, error}")
                continue
            account(path, entry.get("user_id"))
            if not isinstance(entry.get("error"), str) or not entry["error"]:
                bad(f"{path}.error", "required, must be a non-empty string")
        synced_ok += _unchanged_users(result, item_input, account, bad)

        missing = [uid for uid in batch if uid not in seen]
        if missing:
            shown = ", ".join(str(u) for u in missing[:10]) + (" …" if len(missing) > 10 else "")
            bad("synced_users", f"{len(missing)} batch users missing from the result ({shown}); every "
                                "batch user must appear exactly once, in synced_users or failed_users")
        # Items carry the ratio (so agents can see it); the order payload is the fallback for items
        # planned before they did.
        minimum = float(item_input["min_success_ratio"] if "min_success_ratio" in item_input
                        else payload.get("min_success_ratio", 1.0))
        if batch and not problems and synced_ok / len(batch) < minimum:
            bad("failed_users", f"success ratio {synced_ok}/{len(batch)} = {synced_ok / len(batch):.2f} is "
                                f"below the order's min_success_ratio {minimum:g}")
        return problems

    # -- approve -------------------------------------------------------------------------------
    def apply(self, ctx: ApplyContext, order: Mapping[str, Any],
              items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        payload = order["payload"]
        conn = ctx.target
        allowed = set(allowed_columns(conn, deny_list(ctx.settings)))
        fields = [f for f in payload["fields"] if f in allowed]
        lost = sorted(set(payload["fields"]) - allowed)
        if lost:
            raise Invalid(f"fields are no longer allowed columns of users: {', '.join(lost)}",
                          code="field_not_allowed")

        items = list(items)
        incoming: dict[int, dict[str, Any]] = {}
        failed: list[dict[str, Any]] = []
        for item in items:
            result = item["result"] or {}
            for entry in result.get("synced_users", []):
                incoming[entry["user_id"]] = entry["data"]
            failed.extend(result.get("failed_users", []))

        from ...core.lifecycle import dumps

        # Policies and provenance columns (workctl.provenance); extra columns are read after the fields.
        plan = provenance.FieldPlan.build(conn, payload, fields, items, now=ctx.now)
        current: dict[int, tuple[Any, ...]] = {}
        select = (f"SELECT id, {', '.join(quote(f) for f in fields + plan.extra_columns)} FROM users "
                  "WHERE id IN (SELECT value FROM json_each(?))")
        for row in conn.execute(select, (dumps(list(incoming)),)):
            current[row[0]] = row[1:]

        position = {f: i for i, f in enumerate(fields)}
        changes: list[dict[str, Any]] = []
        groups: dict[tuple[str, ...], list[list[Any]]] = {}
        missing: list[int] = []
        unchanged = 0
        for user_id, data in incoming.items():
            row = current.get(user_id)
            if row is None:
                missing.append(user_id)
                continue
            changed = {f: v for f, v in data.items() if row[position[f]] != v}
            if changed and plan.active:
                changed = plan.keep(user_id, row, changed)
            if not changed:
                unchanged += 1
                continue
            names = tuple(sorted(changed))
            groups.setdefault(names, []).append([changed[n] for n in names] + [user_id])
            changes.extend({"user_id": user_id, "field": n, "old": row[position[n]], "new": changed[n]}
                           for n in names)

        plan.ensure_columns(conn, {c["field"] for c in changes}, dry_run=ctx.dry_run)
        if not ctx.dry_run:
            for names, rows in groups.items():
                assignments = ", ".join(f"{quote(n)} = ?" for n in names)
                stamps, stamp_values = plan.stamps(names)
                if stamp_values:
                    rows = [[*r[:-1], *stamp_values, r[-1]] for r in rows]
                conn.executemany(f"UPDATE users SET {assignments}{stamps} WHERE id = ?", rows)

        updated = sum(len(rows) for rows in groups.values())
        return plan.report({
            "before": {"updated_count": 0},
            "after": {"updated_count": updated},
            "summary": f"Synced data for {updated} users from {payload['source']}",
            "changes": changes,
            "stats": {"users": len(payload["user_ids"]), "synced": len(incoming), "updated": updated,
                      "unchanged": unchanged, "missing_locally": len(missing), "failed": len(failed)},
            "missing_user_ids": sorted(missing),
        })

    def record_submitted(self, store: sqlite3.Connection, item: Mapping[str, Any], result: Any,
                         now: str) -> None:
        failed = result.get("failed_users") if isinstance(result, dict) else None
        if failed:  # the error ledger (workctl failures), atomic with the submission
            failures.record(store, order_id=item["order_id"], item_id=item["id"], source=item["input"]["source"],
                            failed_users=failed, attempt=item["attempts"], now=now)

    def record_applied(self, store: sqlite3.Connection, order: Mapping[str, Any],
                       items: list[dict[str, Any]], diff: Mapping[str, Any], now: str) -> None:
        provenance.record_applied(store, order, items, diff, now)  # one row per applied change
        delta.advance(store, order, now)  # a delta order's cursor moves only with this commit


def _item_extras(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What an item carries besides the batch: the order's field_map and its delta settings."""
    extras = delta.item_extras(payload)
    if payload.get("field_map"):
        extras["field_map"] = payload["field_map"]
    return extras


def _unchanged_users(result: Mapping[str, Any], item_input: Mapping[str, Any], account: Any, bad: Any) -> int:
    """A delta item may report users the source did not change since ``since`` (each counts as a success)."""
    if "unchanged_users" not in result:
        return 0
    entries = result["unchanged_users"]
    if not isinstance(entries, list):
        bad("unchanged_users", "must be an array of {user_id}")
        return 0
    if entries and delta.fetch_since(item_input) is None:
        bad("unchanged_users", "only an item of a delta order with a 'since' can report unchanged users")
        return 0
    counted = 0
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"user_id"}:
            bad(f"unchanged_users.{i}", "must be an object {user_id}")
            continue
        counted += account(f"unchanged_users.{i}", entry["user_id"])
    return counted


_ENTRY_KEYS = frozenset({"user_id", "data", "verified"})
_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
