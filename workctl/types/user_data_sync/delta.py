"""Delta sync (the seed's variation 5): fetch only the users a source changed since they were last synced.

Payload: ``sync_mode`` (``full`` | ``delta``, default full), ``since`` (an ISO-8601 date-time with a
zone, delta only: an explicit window) and ``lookback_seconds`` (delta only, default
``[types."user.data.sync"] lookback_seconds`` or 0: fetch that much further back, like dlt's ``lag``,
for sources whose clocks run behind ours or that record a change late).

**Watermarks, per user.** ``sync_watermarks`` holds, for each *scope* (a source and a set of fields,
``sync_scopes``) and each user, the time up to which that user's data for those fields is known to be
applied: the ``created_at`` of the last applied delta order that covered the user (every fetch of an
order happens after its creation, so no change before that time can have been missed). A delta order
without ``since`` looks up, for each of its users, the latest watermark among the scopes of its source
whose fields include all of the order's fields (a sync of more fields covers fewer), minus the lookback.
Its items are the usual batches in the given order; each asks the source for changes since the
earliest watermark of its users, or for everything when one of them has none (a full baseline for that
batch). So a delta over users 1-5 moves only their watermarks, a user added locally later is fetched
in full, and a delta of other fields never borrows this one's watermarks.

``advance`` runs in the store transaction that completes the order (``UserDataSync.record_applied``),
so a crash before that commit, a rejected order or an order in flight never moves a watermark. It moves
(forward only) the watermark of every user the order covered: synced with every field of the order,
or reported unchanged by the source. Failed users, users missing locally and users synced with only
some fields keep theirs, so the next delta fetches them again. An order with an explicit ``since``
is an ad-hoc window: it moves no watermark (its window may leave a gap).

Why per user, and not a cursor per source or per (source, user set): a cursor per user set is lost
whenever the set changes (every new local user makes ``--users all`` a new set, so a new full
baseline), and a source-wide cursor is what skipped users. Measured for 1,000,000 users (one scope,
SQLite, WITHOUT ROWID table of integers): the apply's upsert of 1M watermarks takes 1.2-1.6 s
(0.12-0.16 s per 100k users, inside approve's transaction), the propose-time lookup 0.5-0.7 s, and the
table 21 MB. Full orders do not write watermarks, so they pay nothing.

Delta fetches ask the source with the query parameter the source config names (``delta_param``,
default ``updated_since``). A user the source reports as not changed goes into the batch result's
``unchanged_users`` (``[{"user_id": 7}]``), which counts as a success and is not written by apply.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Mapping

from ...clock import iso
from ...core.lifecycle import Actor, append_event
from ...errors import Invalid
from ...jsonio import dumps, loads
from ...store.base import Connection

MODES = ("full", "delta")
MAX_LOOKBACK_SECONDS = 30 * 24 * 3600
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_time(text: str) -> datetime | None:
    """An ISO-8601 date-time with a zone as an aware datetime; None if it is not one."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except (TypeError, ValueError, AttributeError):
        return None
    return value if value.tzinfo is not None else None


def micros(moment: datetime) -> int:
    """A time as integer microseconds since 1970 UTC (how watermarks are stored: compact, comparable)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def scope_key(fields: Any) -> str:
    """A scope's fields as stored: the sorted, lower-cased names as a JSON array."""
    return dumps(sorted({str(f).lower() for f in fields}))


# -- propose --------------------------------------------------------------------------------------------
def _lookback(payload: Mapping[str, Any], settings: Mapping[str, Any]) -> int:
    if "lookback_seconds" in payload:
        return int(payload["lookback_seconds"])
    value = settings.get("lookback_seconds", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LOOKBACK_SECONDS:
        raise Invalid(f'config: [types."user.data.sync"] lookback_seconds must be an integer from 0 to '
                      f"{MAX_LOOKBACK_SECONDS}", code="config_invalid")
    return value


def prepare(payload: Mapping[str, Any], prepared: dict[str, Any], store: Connection | None,
            settings: Mapping[str, Any] | None = None) -> None:
    """Check ``sync_mode``/``since``/``lookback_seconds``; for a delta order without ``since``, find
    each user's watermark and store the batches' windows as ``delta_since`` runs (see ``runs``)."""
    mode = payload.get("sync_mode", "full")
    for key in ("since", "lookback_seconds"):
        if key in payload and mode != "delta":
            raise Invalid(f"'{key}' needs sync_mode 'delta'", code="payload_invalid",
                          details=[{"path": key, "message": "only valid with sync_mode delta"}])
    if "since" in payload and parse_time(payload["since"]) is None:
        raise Invalid(f"since: {payload['since']!r} is not an ISO-8601 date-time with a zone",
                      code="payload_invalid",
                      details=[{"path": "since", "message": "must be a date-time with a zone, "
                                                            "e.g. 2026-01-05T09:00:00Z"}])
    if mode != "delta" or "since" in payload:
        return
    lookback = _lookback(payload, settings or {})
    prepared["lookback_seconds"] = lookback
    marks = watermarks(store, payload["source"], prepared["fields"], payload["user_ids"]) if store else {}
    prepared["delta_since"] = runs(payload["user_ids"], marks, lookback)


def runs(user_ids: list[int], marks: Mapping[int, int], lookback: int) -> list[list[Any]]:
    """``[[since | None, count], …]``: each user's window (its watermark minus the lookback, None for
    no watermark) run-length encoded in the order of ``user_ids`` (a few runs: users share watermarks)."""
    encoded: list[list[Any]] = []
    shift = lookback * 1_000_000
    for user_id in user_ids:
        mark = marks.get(user_id)
        since = None if mark is None else mark - shift
        if encoded and encoded[-1][0] == since:
            encoded[-1][1] += 1
        else:
            encoded.append([since, 1])
    return [[None if since is None else iso(from_micros(since)), n] for since, n in encoded]


def batches(payload: Mapping[str, Any]) -> Iterator[tuple[list[int], dict[str, Any]]]:
    """The order's batches (``batch_size`` ids each, in order) with what each item carries for delta mode."""
    ids, size = payload["user_ids"], payload["batch_size"]
    mode = payload.get("sync_mode", "full")
    per_user = _expand(payload.get("delta_since")) if mode == "delta" and "since" not in payload else None
    for start in range(0, len(ids), size):
        extras: dict[str, Any] = {}
        if mode == "delta":
            extras["sync_mode"] = "delta"
            if "since" in payload:
                extras["since"] = payload["since"]
            elif per_user is not None:
                windows = per_user[start:start + size]
                if windows and None not in windows:
                    extras["since"] = min(w for w in windows if w is not None)  # fixed-width UTC text sorts by time
        yield ids[start:start + size], extras


def _expand(encoded: Any) -> list[str | None]:
    per_user: list[str | None] = []
    for since, count in encoded or []:
        per_user.extend([since] * count)
    return per_user


def fetch_since(item_input: Mapping[str, Any]) -> str | None:
    """The ``since`` a fetch passes to the source: only for delta items that have one."""
    return item_input.get("since") if item_input.get("sync_mode") == "delta" else None


# -- the store: scopes and watermarks ---------------------------------------------------------------------
def _covering_scopes(store: Connection, source: str, fields: Any) -> list[int]:
    """Scopes of ``source`` whose fields include all of ``fields``."""
    wanted = set(loads(scope_key(fields)))
    return [scope_id for scope_id, text in store.execute("SELECT id, fields FROM sync_scopes WHERE source = ?",
                                                          (source,)) if wanted <= set(loads(text))]


def watermarks(store: Connection, source: str, fields: Any, user_ids: list[int]) -> dict[int, int]:
    """Each user's watermark for these fields (microseconds): the latest among the covering scopes."""
    marks: dict[int, int] = {}
    members, ids = store.in_list(user_ids)
    for scope_id in _covering_scopes(store, source, fields):
        for user_id, through in store.execute(
                f"SELECT user_id, synced_through FROM sync_watermarks WHERE scope_id = ? AND user_id {members}",
                (scope_id, ids)):
            if through > marks.get(user_id, -1):
                marks[user_id] = through
    return marks


def _scope_id(store: Connection, source: str, fields: Any) -> int:
    key = scope_key(fields)
    store.execute("INSERT INTO sync_scopes (source, fields) VALUES (?, ?) ON CONFLICT (source, fields) DO NOTHING",
                  (source, key))
    return store.execute("SELECT id FROM sync_scopes WHERE source = ? AND fields = ?", (source, key)).fetchone()[0]


def covered_users(order: Mapping[str, Any], items: list[dict[str, Any]], diff: Mapping[str, Any]) -> list[int]:
    """Users whose data for every field of the order is now applied (or reported unchanged)."""
    fields = set(order["payload"]["fields"])
    missing = set(diff.get("missing_user_ids") or ())
    covered: dict[int, None] = {}
    for item in items:
        result = item.get("result") or {}
        for entry in result.get("synced_users", []):
            if entry["user_id"] not in missing and fields <= entry["data"].keys():
                covered[entry["user_id"]] = None
        for entry in result.get("unchanged_users", []):
            covered[entry["user_id"]] = None
    return list(covered)


def advance(conn: Connection, order: Mapping[str, Any], items: list[dict[str, Any]],
            diff: Mapping[str, Any], now: str) -> dict[str, Any] | None:
    """Inside the store transaction that applies ``order``: move the covered users' watermarks."""
    payload = order["payload"]
    if payload.get("sync_mode") != "delta":
        return None
    source, fields = payload["source"], sorted(payload["fields"])
    row = conn.execute("SELECT created_at FROM orders WHERE id = ?", (order["id"],)).fetchone()
    through = (parse_time(row[0]) if row else None) or parse_time(now)
    covered = covered_users(order, items, diff)
    outcome: dict[str, Any] = {"source": source, "fields": fields, "to": iso(through) if through else None}
    if "since" in payload:
        outcome.update(users=0, kept=f"an explicit since ({payload['since']}) is an ad-hoc window; it moves no "
                                     "watermark")
    elif through is not None:
        scope_id = _scope_id(conn, source, fields)
        value = micros(through)
        conn.executemany(
            "INSERT INTO sync_watermarks (scope_id, user_id, synced_through) VALUES (?, ?, ?) "
            "ON CONFLICT (scope_id, user_id) DO UPDATE SET synced_through = excluded.synced_through "
            "WHERE excluded.synced_through > sync_watermarks.synced_through",
            ((scope_id, user_id, value) for user_id in covered))
        outcome.update(users=len(covered), not_covered=len(payload["user_ids"]) - len(covered))
    append_event(conn, now=now, actor=Actor.system(), event="watermarks_kept" if "kept" in outcome else
                 "watermarks_advanced", entity="order", order_id=order["id"], payload=outcome)
    return outcome


def cursors(conn: Connection) -> list[dict[str, Any]]:
    """Each delta scope (source and fields) with how many users have a watermark and the range of them."""
    found = []
    for scope_id, source, fields in conn.execute("SELECT id, source, fields FROM sync_scopes ORDER BY source, id"):
        users, oldest, newest = conn.execute(
            "SELECT count(*), min(synced_through), max(synced_through) FROM sync_watermarks WHERE scope_id = ?",
            (scope_id,)).fetchone()
        found.append({"source": source, "fields": loads(fields), "users": users,
                      "oldest": None if oldest is None else iso(from_micros(oldest)),
                      "newest": None if newest is None else iso(from_micros(newest))})
    return found
