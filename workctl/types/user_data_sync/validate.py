"""Checking an agent's result for one batch (at submit, before any lock; no jsonschema on this hot path).

``problems(item_input, result, payload)`` runs named checks in order and returns every problem found,
each with its JSON path. First, everything in the result must be storable (``types.storable``: integers
within 64 bits, finite numbers, valid text no longer than the order's ``max_value_chars``, default
65,536). A well-formed synced entry is then accepted by one expression that builds no message (the
common case, once per user of every batch); anything else goes through the detailed checks that say
exactly what is wrong.

A synced entry may carry the source's own time for the record, ``updated_at`` (ISO-8601): the conflict
policies prefer it to the result's ``fetched_at`` (``provenance``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from ..base import Problem
from ..storable import DEFAULT_MAX_CHARS, storable_problems
from . import delta, provenance

MAX_VALUE_CHARS = DEFAULT_MAX_CHARS
RESULT_KEYS = ("success", "synced_users", "failed_users", "errors", "fetched_at", "unchanged_users")
ENTRY_KEYS = frozenset({"user_id", "data", "verified"})
ENTRY_KEYS_TIMED = frozenset({"user_id", "data", "verified", "updated_at"})
_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})
SHOWN_MISSING = 10


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


@dataclass
class Check:
    """The state of one result's check: the batch, what has been accounted for, and the problems."""

    batch: list[int]
    fields: frozenset[str]
    max_chars: int = MAX_VALUE_CHARS
    problems: list[Problem] = field(default_factory=list)
    seen: dict[int, str] = field(default_factory=dict)  # user id -> path where it was accounted for
    succeeded: int = 0

    def __post_init__(self) -> None:
        self.batch_set = frozenset(self.batch)

    def bad(self, path: str, message: str) -> None:
        self.problems.append({"path": path, "message": message})

    def account(self, path: str, user_id: Any) -> bool:
        """Count ``user_id`` once for this batch; a problem (and False) if it cannot be."""
        if not _is_int(user_id):
            self.bad(f"{path}.user_id", "required, must be an integer")
            return False
        if user_id not in self.batch_set:
            self.bad(f"{path}.user_id", f"user {user_id} is not in this batch")
            return False
        if user_id in self.seen:
            self.bad(f"{path}.user_id", f"user {user_id} appears more than once (first at {self.seen[user_id]})")
            return False
        self.seen[user_id] = path
        return True


def problems(item_input: Mapping[str, Any], result: Any, payload: Mapping[str, Any]) -> list[Problem]:
    if not isinstance(result, dict):
        return [{"path": "$", "message": "result must be a JSON object"}]
    check = Check(batch=item_input["user_ids"], fields=frozenset(item_input["fields"]),
                  max_chars=int(item_input.get("max_value_chars", MAX_VALUE_CHARS)))
    check.problems.extend(storable_problems(result, max_chars=check.max_chars))
    check_shape(check, result)
    synced: list[Any] = result["synced_users"] if isinstance(result.get("synced_users"), list) else []
    failed: list[Any] = result["failed_users"] if isinstance(result.get("failed_users"), list) else []
    for i, entry in enumerate(synced):
        check_synced_entry(check, i, entry)
    for i, entry in enumerate(failed):
        check_failed_entry(check, i, entry)
    check_unchanged(check, result, item_input)
    check_complete(check)
    check_success_ratio(check, item_input, payload)
    return check.problems


def check_shape(check: Check, result: dict[str, Any]) -> None:
    """The top level: known keys, their types, a readable ``fetched_at``."""
    for key in result:
        if key not in RESULT_KEYS:
            check.bad(key, f"unknown key (allowed: {', '.join(RESULT_KEYS)})")
    if "fetched_at" in result and not (isinstance(result["fetched_at"], str)
                                       and isinstance(provenance.parse_time(result["fetched_at"]), datetime)):
        check.bad("fetched_at", "must be an ISO-8601 date-time string (when the batch was fetched)")
    if not isinstance(result.get("success"), bool):
        check.bad("success", "required, must be true or false")
    if not isinstance(result.get("synced_users"), list):
        check.bad("synced_users", "required, must be an array")
    if not isinstance(result.get("failed_users", []), list):
        check.bad("failed_users", "must be an array")
    if "errors" in result and not isinstance(result["errors"], list):
        check.bad("errors", "must be an array")


def _well_formed(check: Check, entry: Any) -> bool:
    """The fast path: a plain, verified entry of a batch user not seen yet, with requested scalar fields
    (whether each is storable was checked on the whole result first)."""
    return (type(entry) is dict and entry.keys() == ENTRY_KEYS and entry["verified"] is True
            and type(user_id := entry["user_id"]) is int and user_id in check.batch_set
            and user_id not in check.seen
            and type(data := entry["data"]) is dict and data.keys() <= check.fields
            and all(type(v) in _PLAIN_SCALARS for v in data.values()))


def check_synced_entry(check: Check, i: int, entry: Any) -> None:
    path = f"synced_users.{i}"
    if _well_formed(check, entry):
        check.seen[entry["user_id"]] = path
        check.succeeded += 1
        return
    if not isinstance(entry, dict):
        check.bad(path, "must be an object {user_id, data, verified}")
        return
    for key in entry:
        if key not in ENTRY_KEYS_TIMED:
            check.bad(f"{path}.{key}", "unknown key (allowed: user_id, data, verified, updated_at)")
    if "updated_at" in entry and not (isinstance(entry["updated_at"], str)
                                      and isinstance(provenance.parse_time(entry["updated_at"]), datetime)):
        check.bad(f"{path}.updated_at", "must be an ISO-8601 date-time string (the source's time of the record)")
    counted = check.account(path, entry.get("user_id"))
    if entry.get("verified") is not True:
        check.bad(f"{path}.verified", "every synced user must be verified (verified: true)")
    data = entry.get("data")
    if not isinstance(data, dict):
        check.bad(f"{path}.data", "required, must be an object of field: value")
        return
    check_data(check, path, data)
    if counted:
        check.succeeded += 1


def check_data(check: Check, path: str, data: dict[str, Any]) -> None:
    """Every value of a synced user's data: a requested field and a plain scalar (storable: checked first)."""
    for name, value in data.items():
        if name not in check.fields:
            check.bad(f"{path}.data.{name}", f"'{name}' was not requested (fields: {', '.join(sorted(check.fields))})")
        elif not _is_scalar(value):
            check.bad(f"{path}.data.{name}", "must be a string, number, boolean or null")


def check_failed_entry(check: Check, i: int, entry: Any) -> None:
    path = f"failed_users.{i}"
    if not isinstance(entry, dict):
        check.bad(path, "must be an object {user_id, error}")
        return
    check.account(path, entry.get("user_id"))
    if not isinstance(entry.get("error"), str) or not entry["error"]:
        check.bad(f"{path}.error", "required, must be a non-empty string")


def check_unchanged(check: Check, result: Mapping[str, Any], item_input: Mapping[str, Any]) -> None:
    """A delta item may report users the source did not change since ``since`` (each counts as a success)."""
    if "unchanged_users" not in result:
        return
    entries = result["unchanged_users"]
    if not isinstance(entries, list):
        check.bad("unchanged_users", "must be an array of {user_id}")
        return
    if entries and delta.fetch_since(item_input) is None:
        check.bad("unchanged_users", "only an item of a delta order with a 'since' can report unchanged users")
        return
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"user_id"}:
            check.bad(f"unchanged_users.{i}", "must be an object {user_id}")
            continue
        check.succeeded += check.account(f"unchanged_users.{i}", entry["user_id"])


def check_complete(check: Check) -> None:
    """Every batch user appears exactly once: synced, failed or unchanged."""
    missing = [uid for uid in check.batch if uid not in check.seen]
    if missing:
        shown = ", ".join(str(u) for u in missing[:SHOWN_MISSING]) + (" …" if len(missing) > SHOWN_MISSING else "")
        check.bad("synced_users", f"{len(missing)} batch users missing from the result ({shown}); every "
                                  "batch user must appear exactly once, in synced_users or failed_users")


def check_success_ratio(check: Check, item_input: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
    """The seed's variation 1: at least the order's ``min_success_ratio`` of the batch succeeded."""
    # Items carry the ratio (so agents can see it); the order payload is the fallback for items
    # planned before they did.
    minimum = float(item_input["min_success_ratio"] if "min_success_ratio" in item_input
                    else payload.get("min_success_ratio", 1.0))
    total = len(check.batch)
    if total and not check.problems and check.succeeded / total < minimum:
        check.bad("failed_users", f"success ratio {check.succeeded}/{total} = {check.succeeded / total:.2f} is "
                                  f"below the order's min_success_ratio {minimum:g}")
