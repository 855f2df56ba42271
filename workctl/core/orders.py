"""Order operations: propose, submit, approve, reject, retry, maintain.

Each follows the same shape: read and validate without a lock, then one ``BEGIN IMMEDIATE``
transaction that re-checks what it relies on, writes, and logs an event per transition.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from datetime import timedelta
from typing import Any, Mapping

from . import idempotency
from ..clock import iso
from ..errors import Conflict, IllegalTransition, Invalid, Usage
from .leases import check_lease, fence, lease_problem, reclaim_expired
from .lifecycle import ITEM_DONE_STATES, Actor, Encoded, append_event, dumps, move_item, move_order, refresh_order
from .session import Session, loads
from ..store.sqlite import write_tx
from ..types import ApplyContext, get_type

MARKER_TABLE = "_workctl_applied"


def new_id() -> str:
    return uuid4_text(os.urandom(16))


def uuid4_text(random16: bytes) -> str:
    """``str(uuid.UUID(bytes=random16, version=4))`` at twice the speed (a 1,000,000-item plan makes as
    many ids), and without importing uuid (and the platform module it loads) on every command's start-up."""
    b = bytearray(random16)
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _replay(s: Session, key: idempotency.Key | None) -> Any | None:
    return idempotency.lookup(s.conn, key) if key else None


# -- propose ------------------------------------------------------------------------------------
def propose(s: Session, type_name: str, payload: Any, *, priority: int = 0, actor: Actor,
            idempotency_key: str | None = None) -> dict[str, Any]:
    order_type = get_type(type_name)
    key = idempotency.Key.make("propose", idempotency_key, {"type": type_name, "payload": payload,
                                                            "priority": priority}) if idempotency_key else None
    replay = _replay(s, key)
    if replay is not None:
        return replay
    order_type.validate_payload(payload)
    with target_connection(s) as target:
        prepared = order_type.prepare(payload, {**s.config.type_settings(type_name), "target": target,
                                                  "store": s.conn})
    # Streamed: each planned item becomes its row dict at once (no second list of PlannedItems).
    items = [{"id": new_id(), "state": "queued", "input": p.input, "max_attempts": p.max_attempts}
             for p in order_type.plan(prepared)]
    if not items:
        raise Invalid("the order plans no work items", code="empty_plan")
    now = s.now()
    order_id = new_id()
    response = {
        "order": {"id": order_id, "type": type_name, "state": "queued", "priority": priority,
                  "payload": prepared, "created_at": now},
        "items": items,
    }
    with write_tx(s.conn) as conn:
        if key:
            earlier = idempotency.lookup(conn, key)
            if earlier is not None:
                return earlier
        conn.execute(
            "INSERT INTO orders (id, type, state, priority, payload, requested_by, item_count, created_at, "
            "updated_at) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
            (order_id, type_name, priority, dumps(prepared), f"{actor.type}:{actor.id}", len(items), now, now))
        append_event(conn, now=now, actor=actor, event="proposed", entity="order", order_id=order_id,
                     to_state="queued", payload={"type": type_name, "priority": priority})
        conn.executemany(
            "INSERT INTO items (id, order_id, seq, type, state, priority, input, max_attempts, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
            ((it["id"], order_id, seq, type_name, priority, dumps(it["input"]), it["max_attempts"], now, now)
             for seq, it in enumerate(items)))
        # Item creation is logged once per order (not once per item) so that large plans stay bulk.
        append_event(conn, now=now, actor=Actor.system(), event="planned", entity="order", order_id=order_id,
                     payload={"item_count": len(items), "items_state": "queued"})
        if key:
            idempotency.store(conn, key, response, now)
    return response


# -- submit -------------------------------------------------------------------------------------
class LazyPayload(Mapping[str, Any]):
    """The order's payload, read and parsed only if a type's validation asks for it: for a
    1,000,000-id order that parse would otherwise dominate every submit."""

    def __init__(self, s: Session, order_id: str):
        self._s, self._order_id = s, order_id
        self._value: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._value is None:
            self._value = loads(self._s.order_row(self._order_id)["payload"])
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Any:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def submit(s: Session, item_id: str, result: Any, *, agent: str, token: str | None = None,
           idempotency_key: str | None = None) -> dict[str, Any]:
    key = idempotency.Key.make(f"submit:{item_id}", idempotency_key,
                               {"result": result, "agent": agent}) if idempotency_key else None
    replay = _replay(s, key)
    if replay is not None:
        return replay
    row = check_lease(s, item_id, agent, token)
    payload = LazyPayload(s, row["order_id"])
    order_type = get_type(row["type"])
    item_input = loads(row["input"])
    problems = order_type.validate_submission(item_input, result, payload)
    if problems:
        listed = "; ".join(f"{p['path']}: {p['message']}" for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise Invalid(f"result rejected, the lease is kept so you can fix and resubmit: {listed}{more}",
                      code="result_invalid", details=problems)
    now = s.now()
    guard, guard_params = fence(agent, token, now)
    with write_tx(s.conn) as conn:
        if key:
            earlier = idempotency.lookup(conn, key)
            if earlier is not None:
                return earlier
        # Submitting clears the lease: an item awaiting approval is never reclaimed.
        moved = move_item(conn, item_id=item_id, order_id=row["order_id"], current="leased", target="submitted",
                          now=now, actor=Actor("agent", agent), payload={"attempt": row["attempts"]},
                          sets={"result": dumps(result), "submitted_by": agent, "leased_by": None,
                                "lease_token": None, "lease_expires_at": None, "visible_at": ""},
                          guard=guard, guard_params=guard_params)
        if not moved:
            raise lease_problem(s.item_row(item_id), agent, token, now)
        order_type.record_submitted(conn, {"id": item_id, "order_id": row["order_id"], "input": item_input,
                                           "attempts": row["attempts"]}, result, now)
        order_state = refresh_order(conn, row["order_id"], now=now)
        response = {"item": {"id": item_id, "state": "submitted"},
                    "order": {"id": row["order_id"], "state": order_state}}
        if key:
            idempotency.store(conn, key, response, now)
    return response


# -- approve ------------------------------------------------------------------------------------
class target_connection:
    """The database holding the users table: the store's own connection, or a second file."""

    def __init__(self, s: Session):
        self.s = s
        self.path = s.config.target_db or s.db_path
        self.same = _same_file(self.path, s.db_path)
        self.conn: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        if self.same:
            return self.s.conn
        if not os.path.exists(self.path):
            raise Invalid(f"target database {self.path} does not exist", code="target_missing")
        self.conn = connect_target(self.path)
        return self.conn

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()


def local_user_ids(s: Session) -> list[int]:
    with target_connection(s) as target:
        try:
            return [row[0] for row in target.execute("SELECT id FROM users ORDER BY id")]
        except sqlite3.OperationalError as exc:
            raise Invalid(f"the target database has no users table: {exc}", code="no_users_table") from exc


def connect_target(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _ensure_marker(conn: sqlite3.Connection) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (order_id TEXT PRIMARY KEY, "
                 "applied_at TEXT NOT NULL, diff TEXT NOT NULL)")


def _marker(conn: sqlite3.Connection, order_id: str) -> dict[str, Any] | None:
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                          (MARKER_TABLE,)).fetchone()
    if not exists:
        return None
    row = conn.execute(f"SELECT diff FROM {MARKER_TABLE} WHERE order_id = ?", (order_id,)).fetchone()
    return None if row is None else loads(row[0])


def _apply_once(conn: sqlite3.Connection, order_type: Any, settings: Mapping[str, Any],
                order: dict[str, Any], items: list[dict[str, Any]], now: str) -> tuple[dict[str, Any], Encoded]:
    """Inside an open write transaction on the target: apply unless the marker says it was done.
    Returns the diff and its JSON text (encoded once, stored wherever the diff is kept)."""
    done = _marker(conn, order["id"])
    if done is not None:
        return done, Encoded(dumps(done))
    diff = order_type.apply(ApplyContext(target=conn, settings=settings, now=now), order, items)
    diff_json = Encoded(dumps(diff))
    _ensure_marker(conn)
    conn.execute(f"INSERT INTO {MARKER_TABLE} (order_id, applied_at, diff) VALUES (?, ?, ?)",
                 (order["id"], now, diff_json))
    _crash_point("after_apply")
    return diff, diff_json


def _crash_point(name: str) -> None:
    """Test hook for crash tests: WORKCTL_TEST_CRASH_AT=<name> kills the process right here (kill -9).

    The points of approve, in order: after_apply (apply and marker written, inside the target's open
    transaction), after_target_commit (separate target only: committed there, not yet in the store),
    before_store_commit (everything written, the store's COMMIT not yet run), after_store_commit."""
    if os.environ.get("WORKCTL_TEST_CRASH_AT") == name:
        os.kill(os.getpid(), 9)


def _watermark(conn: sqlite3.Connection, order_id: str) -> int:
    """The order's newest event id: every transition of the order or its items appends one (one seek)."""
    return conn.execute("SELECT coalesce(max(id), 0) FROM events WHERE order_id = ?", (order_id,)).fetchone()[0]


def _check_unchanged(conn: sqlite3.Connection, order_id: str, watermark: int) -> None:
    """Approve applies the results it read; refuse if the order moved since (state or newer events)."""
    current = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    if current["state"] != "submitted":
        raise _not_ready(current, conn, "approve")
    if _watermark(conn, order_id) != watermark:
        raise Conflict(f"order {order_id} changed while approve was reading its results (it was rejected, "
                       "requeued and resubmitted); nothing was applied: review it and approve again",
                       code="order_changed")


def _not_ready(order: sqlite3.Row, conn: sqlite3.Connection, action: str) -> IllegalTransition:
    counts = dict(conn.execute("SELECT state, count(*) FROM items WHERE order_id = ? GROUP BY state",
                               (order["id"],)).fetchall())
    done = sum(counts.get(st, 0) for st in ITEM_DONE_STATES)
    summary = ", ".join(f"{n} {st}" for st, n in sorted(counts.items()))
    if order["state"] in ("queued", "in_progress", "failed", "dead_lettered"):
        hint = f"{done} of {order['item_count']} items submitted ({summary}); {action} needs every item submitted"
    else:
        hint = f"{action} is only possible for a submitted order"
    return IllegalTransition(f"cannot {action} order {order['id']}: it is '{order['state']}'; {hint}",
                             code="order_not_submitted",
                             details=[{"state": order["state"], "items": counts}])


def approve(s: Session, order_id: str, *, actor: Actor, dry_run: bool = False,
            idempotency_key: str | None = None) -> dict[str, Any]:
    key = None
    if idempotency_key and not dry_run:
        key = idempotency.Key.make(f"approve:{order_id}", idempotency_key, {"order_id": order_id})
    replay = _replay(s, key)
    if replay is not None:
        return replay
    row = s.order_row(order_id)
    if row["state"] != "submitted":
        raise _not_ready(row, s.conn, "approve")
    # Read before the results: if the order moves before approve's transaction (a reject --requeue and a
    # resubmission leave it 'submitted' again, with other results), the transaction sees a newer event.
    watermark = _watermark(s.conn, order_id)
    order_type = get_type(row["type"])
    order = {"id": row["id"], "type": row["type"], "payload": loads(row["payload"])}
    # A submitted item is not touched again before approve, so its updated_at is its submit time.
    items = [{"id": r[0], "state": r[1], "result": loads(r[2]), "submitted_by": r[3], "submitted_at": r[4]}
             for r in s.conn.execute("SELECT id, state, result, submitted_by, updated_at FROM items "
                                     "WHERE order_id = ? ORDER BY seq", (order_id,))]
    problems = order_type.can_approve(order["payload"], [it["result"] for it in items])
    if problems:
        raise Invalid("the order cannot be approved: " + "; ".join(p["message"] for p in problems),
                      code="approval_check_failed", details=problems)
    settings = s.config.type_settings(row["type"])
    from . import outbox as webhooks  # a malformed [[webhooks]] is refused here, before anything is written
    hooks = [] if dry_run else webhooks.configured(s.config)

    if dry_run:
        with target_connection(s) as target:
            target.execute("BEGIN")
            try:
                diff = order_type.apply(ApplyContext(target=target, settings=settings, dry_run=True), order, items)
            finally:
                target.execute("ROLLBACK")
        return {"order": {"id": order_id, "state": row["state"]}, "diff": diff, "dry_run": True}

    now = s.now()
    target = target_connection(s)
    if not target.same:
        # Separate file: commit the apply + marker there first; a crash before the store commit is
        # healed by the next approve, which finds the marker and does not apply again.
        # The check runs under the target's write lock, which reject also takes before it looks for the
        # marker: a reject either ran before (seen here) or runs after this commit (and sees the marker).
        with target as tconn, write_tx(tconn):
            _check_unchanged(s.conn, order_id, watermark)
            diff, diff_json = _apply_once(tconn, order_type, settings, order, items, now)
        _crash_point("after_target_commit")
    s.conn.execute("PRAGMA synchronous = FULL")  # the apply commit is the one that must survive power loss
    try:
        with write_tx(s.conn) as conn:
            if key:
                earlier = idempotency.lookup(conn, key)
                if earlier is not None:
                    return earlier
            _check_unchanged(conn, order_id, watermark)
            if target.same:
                diff, diff_json = _apply_once(conn, order_type, settings, order, items, now)
            _finish_approval(conn, order_id, items, diff, diff_json, actor, now)
            order_type.record_applied(conn, order, items, diff, now)
            webhooks.enqueue(conn, hooks, order, diff, now)  # the outbox: sent after commit (api.approve)
            response = {"order": {"id": order_id, "state": "completed"}, "diff": diff}
            if key:
                idempotency.store(conn, key, response, now)
            _crash_point("before_store_commit")
    finally:
        s.conn.execute("PRAGMA synchronous = NORMAL")
    _crash_point("after_store_commit")
    try:
        order_type.after_apply(order, diff)
    except Exception as exc:  # the apply is committed; a hook failure is recorded, never undone
        with write_tx(s.conn) as conn:
            append_event(conn, now=s.now(), actor=Actor.system(), event="after_apply_failed", entity="order",
                         order_id=order_id, payload={"error": str(exc)})
    return response


def _finish_approval(conn: sqlite3.Connection, order_id: str, items: list[dict[str, Any]],
                     diff: dict[str, Any], diff_json: Encoded, actor: Actor, now: str) -> None:
    move_order(conn, order_id=order_id, current="submitted", target="approved", now=now, actor=actor,
               sets={"approved_at": now})
    move_order(conn, order_id=order_id, current="approved", target="applied", now=now, actor=Actor.system(),
               payload=Encoded('{"diff":' + diff_json + "}"), sets={"applied_at": now, "diff": diff_json})
    for item in items:
        move_item(conn, item_id=item["id"], order_id=order_id, current="submitted", target="accepted",
                  now=now, actor=actor)
        move_item(conn, item_id=item["id"], order_id=order_id, current="accepted", target="completed",
                  now=now, actor=Actor.system())
    move_order(conn, order_id=order_id, current="applied", target="completed", now=now, actor=Actor.system(),
               payload={"summary": diff.get("summary")}, sets={"completed_at": now})


# -- reject -------------------------------------------------------------------------------------
def reject(s: Session, order_id: str, *, reason: str, requeue: bool = False, actor: Actor,
           idempotency_key: str | None = None) -> dict[str, Any]:
    if not reason.strip():
        raise Invalid("a rejection needs a reason (--reason)", code="reason_required")
    key = idempotency.Key.make(f"reject:{order_id}", idempotency_key,
                               {"reason": reason, "requeue": requeue}) if idempotency_key else None
    replay = _replay(s, key)
    if replay is not None:
        return replay
    row = s.order_row(order_id)
    if row["state"] != "submitted":
        raise _not_ready(row, s.conn, "reject")
    # A separate target may already hold this order's apply (an approve committed there but not in the
    # store): rejecting now would contradict the target, and a requeued rework would never be applied
    # (the marker short-circuits the next apply). Only approve can finish such an order.
    # The marker is looked for under the target's write lock, held until the reject is committed: an
    # approve applying to the target meanwhile either committed first (its marker is seen) or waits
    # and then sees this reject (approve re-checks the order under the same lock).
    applied_check = target_connection(s)
    with contextlib.ExitStack() as held:
        if not applied_check.same and os.path.exists(applied_check.path):
            tconn = held.enter_context(applied_check)
            held.enter_context(write_tx(tconn))
            if _marker(tconn, order_id) is not None:
                raise IllegalTransition(
                    f"cannot reject order {order_id}: its results were already applied to {applied_check.path} "
                    "by an approve that did not finish; run approve again to record it", code="already_applied")
        return _reject_in_store(s, order_id, reason=reason, requeue=requeue, actor=actor, key=key)


def _reject_in_store(s: Session, order_id: str, *, reason: str, requeue: bool, actor: Actor,
                     key: idempotency.Key | None) -> dict[str, Any]:
    now = s.now()
    target = "queued" if requeue else "rejected"
    with write_tx(s.conn) as conn:
        if key:
            earlier = idempotency.lookup(conn, key)
            if earlier is not None:
                return earlier
        if s.order_row(order_id)["state"] != "submitted":
            raise _not_ready(s.order_row(order_id), conn, "reject")
        items = conn.execute("SELECT id, result FROM items WHERE order_id = ? AND state = 'submitted'",
                             (order_id,)).fetchall()
        for item_id, result in items:
            # The rejected result stays in the audit trail; a requeued item starts clean.
            move_item(conn, item_id=item_id, order_id=order_id, current="submitted", target=target, now=now,
                      actor=actor, payload={"reason": reason, "result": loads(result)},
                      sets={"result": None} if requeue else None)
        move_order(conn, order_id=order_id, current="submitted", target=target, now=now, actor=actor,
                   payload={"reason": reason, "requeue": requeue}, sets={"error": dumps({"reason": reason})})
        response = {"order": {"id": order_id, "state": target}, "items": {"count": len(items), "state": target},
                    "reason": reason}
        if key:
            idempotency.store(conn, key, response, now)
    return response


# -- retry --------------------------------------------------------------------------------------
def retry(s: Session, *, item_id: str | None = None, order_id: str | None = None,
          actor: Actor) -> dict[str, Any]:
    """Put failed or dead-lettered items back in the queue with a fresh set of attempts."""
    if bool(item_id) == bool(order_id):
        raise Usage("give exactly one of ITEM_ID or --order ORDER_ID")
    if item_id:
        row = s.item_row(item_id)
        if row["state"] not in ("failed", "dead_lettered"):
            raise IllegalTransition(f"item {item_id} is '{row['state']}'; only failed or dead-lettered "
                                    "items can be retried", code="not_retryable")
        wanted = [item_id]
        parent = row["order_id"]
    else:
        s.order_row(order_id)
        parent = order_id
        wanted = [r[0] for r in s.conn.execute(
            "SELECT id FROM items WHERE order_id = ? AND state IN ('failed', 'dead_lettered') ORDER BY seq",
            (order_id,))]
        if not wanted:
            raise Conflict(f"order {order_id} has no failed or dead-lettered items to retry",
                           code="not_retryable")
    now = s.now()
    retried = []
    with write_tx(s.conn) as conn:
        for wanted_id in wanted:
            current = s.item_row(wanted_id)
            if current["state"] not in ("failed", "dead_lettered"):
                continue  # moved since we looked; nothing to do for it
            move_item(conn, item_id=wanted_id, order_id=parent, current=current["state"], target="queued",
                      now=now, actor=actor,
                      payload={"previous_attempts": current["attempts"], "previous_error": loads(current["error"])},
                      sets={"attempts": 0, "error": None, "visible_at": ""})
            retried.append(wanted_id)
        order_state = refresh_order(conn, parent, now=now, actor=actor)
    return {"retried": retried, "order": {"id": parent, "state": order_state}}


# -- maintain -----------------------------------------------------------------------------------
def maintain(s: Session) -> dict[str, Any]:
    config = s.config
    moment = s.clock()
    now = iso(moment)
    with write_tx(s.conn) as conn:
        leases = reclaim_expired(conn, now)
        cutoff = iso(moment - timedelta(seconds=config.dead_letter_after_seconds))
        dead = conn.execute("SELECT id, order_id FROM items WHERE state = 'failed' AND updated_at <= ?",
                            (cutoff,)).fetchall()
        for item_id, order_id in dead:
            move_item(conn, item_id=item_id, order_id=order_id, current="failed", target="dead_lettered",
                      now=now, actor=Actor.system())
        for order_id in {order_id for _, order_id in dead}:
            refresh_order(conn, order_id, now=now)
        purged = idempotency.purge(conn, iso(moment - timedelta(days=config.idempotency_days)))
        pruned = 0
        if config.event_days > 0:
            pruned = conn.execute(
                "DELETE FROM events WHERE created_at < ? AND order_id IN "
                "(SELECT id FROM orders WHERE state IN ('completed', 'rejected'))",
                (iso(moment - timedelta(days=config.event_days)),)).rowcount
        if any((leases["reclaimed"], leases["failed"], dead, purged, pruned)):
            append_event(conn, now=now, actor=Actor.system(), event="maintained", entity="store", order_id=None,
                         payload={**leases, "dead_lettered": len(dead), "keys_purged": purged,
                                  "events_pruned": pruned})
    return {"leases_reclaimed": leases["reclaimed"], "items_failed": leases["failed"],
            "items_dead_lettered": len(dead), "idempotency_keys_purged": purged, "events_pruned": pruned}

