"""Applying a ``user.data.sync`` order to the target's ``users`` table (inside approve's transaction).

The affected rows are read once; only fields whose value differs are written, with one
``executemany`` per set of changed columns; conflict policies and provenance columns come from
``provenance.FieldPlan``. The returned diff lists every change (user, field, old, new) and the
counts. A dry run computes the same diff and writes nothing.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ...errors import Invalid
from ...jsonio import dumps
from ...store.target import quote
from ..base import ApplyContext
from . import provenance
from .fields import FieldRules, allowed_columns


def _incoming(items: list[Mapping[str, Any]]) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """The synced data by user (a later item wins) and the failed users of every item."""
    incoming: dict[int, dict[str, Any]] = {}
    failed: list[dict[str, Any]] = []
    for item in items:
        result = item["result"] or {}
        for entry in result.get("synced_users", []):
            incoming[entry["user_id"]] = entry["data"]
        failed.extend(result.get("failed_users", []))
    return incoming, failed


def apply(ctx: ApplyContext, order: Mapping[str, Any], items_in: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    payload = order["payload"]
    conn = ctx.target
    allowed = set(allowed_columns(conn, FieldRules.from_settings(ctx.settings)))
    fields = [f for f in payload["fields"] if f in allowed]
    lost = sorted(set(payload["fields"]) - allowed)
    if lost:
        raise Invalid(f"fields are no longer allowed columns of users: {', '.join(lost)}", code="field_not_allowed")
    items = list(items_in)
    incoming, failed = _incoming(items)

    # Policies and provenance columns; extra columns are read after the fields.
    plan = provenance.FieldPlan.build(conn, payload, fields, items, now=ctx.now)
    select = (f"SELECT id, {', '.join(quote(f) for f in fields + plan.extra_columns)} FROM users "
              "WHERE id IN (SELECT value FROM json_each(?))")
    current: dict[int, tuple[Any, ...]] = {row[0]: row[1:] for row in conn.execute(select, (dumps(list(incoming)),))}

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
        changes.extend({"user_id": user_id, "field": n, "old": row[position[n]], "new": changed[n]} for n in names)

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
