"""Webhooks and cache invalidation (the seed's variation 4) through a transactional outbox.

    [[webhooks]]
    name = "cache-purge"                        # optional (default: the URL without its query)
    url = "https://app.example.com/hooks/workctl"
    events = ["order.applied", "user.updated"]  # default ["order.applied"]
    secret_env = "WORKCTL_WEBHOOK_SECRET"       # HMAC-SHA256 key, read from the environment only
    tags = ["profiles"]                         # optional extra cache tags
    timeout = 10                                # seconds per attempt
    max_attempts = 8
    backoff_seconds = 30                        # 30 s, 60 s, 120 s … between attempts
    backoff_cap_seconds = 3600

Approve writes one outbox row per webhook and event (``enqueue``) in the same store transaction that
applies the order, so a notification exists exactly when the apply committed. Sending happens after
that commit (``deliver``: right after approve in the library, and again from ``workctl maintain``);
a failed delivery is retried with exponential backoff and never undoes the apply. Every attempt is
an event on the order (``webhook_delivered`` / ``webhook_failed``).

Each request is a POST of the row's JSON body, signed per **Standard Webhooks**
(https://www.standardwebhooks.com): ``webhook-id`` (the row's message id, stable across retries:
receivers dedupe on it, since delivery is at least once), ``webhook-timestamp`` (seconds since the
epoch, when the attempt is sent: receivers reject replays by it) and ``webhook-signature:
v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``. The secret is read from the environment variable
the config names when a request is signed, as ``whsec_<base64>`` (the Standard Webhooks form) or raw text,
and is never stored, logged or put in errors. The body is ``{"type": <event>, "timestamp": …, "data":
{"order_id": …, …}}``.

Events: ``order.applied`` and ``order.reverted`` (with ``user.updated`` per changed user), written with the
apply or revert; ``order.failed`` (an order became failed or dead-lettered), ``order.held`` (an
auto-approve held by an ``[approve]`` rule), ``order.cancelled``, and ``run.failed`` (a ``sync``/``run``
that exits 7, with its report).

Delivery has one overall **deadline** per attempt (``timeout``: connect, headers and body together, not
per read); a row is claimed for longer than that (``timeout + 60`` s), so two senders (an approve and a
``maintain``) never send the same row at once.

Bodies carry the changed user ids and cache tags (``users`` for user.data.sync, plus the webhook's
``tags``; ``user.updated`` adds ``user.<id>``), so a cache-purge endpoint is just another webhook.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping
from urllib.parse import urlsplit

from ..clock import iso, parse as parse_iso
from ..errors import Invalid
from ..jsonio import dumps
from ..store.sql import where
from ..store import write_tx
from .lifecycle import Actor, append_event
from ..store.base import Connection

EVENTS = ("order.applied", "order.reverted", "order.failed", "order.held", "order.cancelled", "run.failed",
          "user.updated")
CLAIM_MARGIN_SECONDS = 60  # a claimed row is not due again before its deadline plus this
_TYPE_TAGS = {"user.data.sync": ("users",)}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TAG = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_KEYS = {"name", "url", "events", "secret_env", "tags", "timeout", "max_attempts", "backoff_seconds",
         "backoff_cap_seconds"}


@dataclass(frozen=True)
class Webhook:
    name: str
    url: str
    events: tuple[str, ...] = ("order.applied",)
    secret_env: str | None = None
    tags: tuple[str, ...] = ()
    timeout: float = 10.0
    max_attempts: int = 8
    backoff_seconds: float = 30.0
    backoff_cap_seconds: float = 3600.0

    @property
    def display_url(self) -> str:
        """The URL without credentials or query: what errors and events may show."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_cap_seconds, self.backoff_seconds * 2 ** max(0, attempt - 1))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.display_url, "events": list(self.events),
                "secret_env": self.secret_env, "tags": list(self.tags)}


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret: ``whsec_<base64>`` is decoded (the Standard Webhooks form), anything else
    is used as raw text."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):] + "==", validate=False)
        except (ValueError, binascii.Error):
            pass
    return secret.encode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret_key(secret), signed, hashlib.sha256).digest()).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None,
           tolerance: float = 300) -> bool:
    """For receivers without a Standard Webhooks library: do these headers sign this exact body, recently?
    (Any of the space-separated ``v1,`` signatures may match; compared in constant time.)"""
    lower = {k.lower(): v for k, v in headers.items()}
    message_id, stamp, signatures = (lower.get("webhook-id"), lower.get("webhook-timestamp"),
                                     lower.get("webhook-signature"))
    if not (message_id and stamp and signatures) or not stamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        return False
    expected = sign(secret, message_id, int(stamp), body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures.split())


# -- configuration ------------------------------------------------------------------------------
def configured(config: Any) -> list[Webhook]:
    """The ``[[webhooks]]`` of a Config (or its raw dict); Invalid (config_invalid, exit 5) if malformed."""
    raw = getattr(config, "raw", config) or {}
    entries = raw.get("webhooks", [])
    if not entries:
        return []

    def bad(i: int, message: str) -> Invalid:
        return Invalid(f"config: [[webhooks]] #{i + 1}: {message}", code="config_invalid")

    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise Invalid("config: webhooks must be an array of tables ([[webhooks]])", code="config_invalid")
    hooks: list[Webhook] = []
    for i, entry in enumerate(entries):
        unknown = set(entry) - _KEYS
        if unknown:
            raise bad(i, f"unknown settings {', '.join(sorted(unknown))}")
        url = entry.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise bad(i, "url must be an http:// or https:// URL")
        events = entry.get("events", ["order.applied"])
        if isinstance(events, str) or not isinstance(events, list) or not events or \
                not all(e in EVENTS for e in events):
            raise bad(i, f"events must be a non-empty list of {', '.join(EVENTS)}")
        secret_env = entry.get("secret_env")
        if secret_env is not None and (not isinstance(secret_env, str) or not _ENV_NAME.match(secret_env)):
            raise bad(i, "secret_env must name an environment variable (the secret itself never goes in the config)")
        tags = entry.get("tags", [])
        if isinstance(tags, str) or not isinstance(tags, list) or not all(isinstance(t, str) and _TAG.match(t)
                                                                          for t in tags):
            raise bad(i, "tags must be a list of short names (letters, digits, _ . : -)")
        numbers: dict[str, Any] = {}
        for key, minimum, kind in (("timeout", 0.001, float), ("max_attempts", 1, int),
                                   ("backoff_seconds", 0, float), ("backoff_cap_seconds", 0, float)):
            if key in entry:
                value = entry[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum or \
                        (kind is int and not isinstance(value, int)):
                    raise bad(i, f"{key} must be {'an integer' if kind is int else 'a number'} >= {minimum}")
                numbers[key] = kind(value)
        hook = Webhook(name="", url=url, events=tuple(dict.fromkeys(events)), secret_env=secret_env,
                       tags=tuple(tags), **numbers)
        name = entry.get("name", hook.display_url)
        if not isinstance(name, str) or not name or len(name) > 200:
            raise bad(i, "name must be a non-empty string")
        if any(h.name == name for h in hooks):
            raise bad(i, f"name {name!r} is used twice (give each webhook its own name)")
        hooks.append(Webhook(**{**hook.__dict__, "name": name}))
    return hooks


# -- the outbox (inside the store transaction of what it tells about) ------------------------------
def _new_id() -> str:
    from .ids import new_id

    return "msg_" + new_id().replace("-", "")


def _body(event: str, now: str, data: Mapping[str, Any]) -> str:
    return dumps({"type": event, "timestamp": now, "data": data})


def _insert(conn: Connection, rows: list[tuple[str, str, str | None, str, str]], now: str,
            order_id: str | None, hooks: list[Webhook]) -> None:
    conn.executemany("INSERT INTO outbox (webhook, event, order_id, payload, created_at, message_id) "
                     "VALUES (?, ?, ?, ?, ?, ?)", [(*row, _new_id()) for row in rows])
    append_event(conn, now=now, actor=Actor.system(), event="webhooks_queued", entity="order",
                 order_id=order_id, payload={"count": len(rows), "webhooks": sorted({r[0] for r in rows})})


def notify(conn: Connection, hooks: list[Webhook], event: str, order: Mapping[str, Any] | None,
           data: Mapping[str, Any], now: str) -> int:
    """Queue ``event`` for every webhook that asks for it, in the caller's transaction (sent after the
    commit). ``order`` (id, type) names the order it is about, if any; ``data`` is added to the body's data."""
    wanted = [h for h in hooks if event in h.events]
    if not wanted:
        return 0
    base: dict[str, Any] = {"order_id": order["id"], "order_type": order.get("type")} if order else {}
    rows = [(h.name, event, order["id"] if order else None, _body(event, now, {**base, **data}), now) for h in wanted]
    _insert(conn, rows, now, order["id"] if order else None, hooks)
    return len(rows)


def enqueue(conn: Connection, hooks: list[Webhook], order: Mapping[str, Any],
            diff: Mapping[str, Any], now: str, *, order_event: str = "order.applied") -> int:
    """Write the outbox rows of an applied (or reverted) order; returns how many (0 without webhooks).

    ``order_event`` names the order-level notification; every user the diff changed also gets a
    ``user.updated`` for hooks that ask, so a cache purged on apply is purged on revert as well."""
    if not hooks:
        return 0
    payload = order.get("payload") or {}
    source = payload.get("source") if isinstance(payload, dict) else None
    changed: dict[Any, list[str]] = {}
    for change in diff.get("changes") or []:
        if isinstance(change, dict) and "user_id" in change:
            fields = changed.setdefault(change["user_id"], [])
            if change.get("field") is not None and change["field"] not in fields:
                fields.append(change["field"])
    stats = diff.get("stats") or {}
    synced = stats.get("synced", (diff.get("after") or {}).get("updated_count"))
    base_tags = _TYPE_TAGS.get(order["type"], ())
    rows: list[tuple[str, str, str | None, str, str]] = []
    for hook in hooks:
        tags = list(dict.fromkeys([*base_tags, *hook.tags]))
        if order_event in hook.events:
            data = {"order_id": order["id"], "order_type": order["type"], "source": source, "users_synced": synced,
                    "users_changed": len(changed), "changed_user_ids": sorted(changed, key=str), "tags": tags,
                    "summary": diff.get("summary")}
            rows.append((hook.name, order_event, order["id"], _body(order_event, now, data), now))
        if "user.updated" in hook.events:
            for user_id in sorted(changed, key=str):
                data = {"order_id": order["id"], "order_type": order["type"], "source": source, "user_id": user_id,
                        "fields": sorted(changed[user_id]), "tags": [*tags, f"user.{user_id}"]}
                rows.append((hook.name, "user.updated", order["id"], _body("user.updated", now, data), now))
    if rows:
        _insert(conn, rows, now, order["id"], hooks)
    return len(rows)


# -- delivery (after commit) --------------------------------------------------------------------
def _later(now: str, seconds: float) -> str:
    return iso(parse_iso(now) + timedelta(seconds=seconds))


def _redact(text: str, hook: Webhook, secret: str | None) -> str:
    text = text.replace(hook.url, hook.display_url)
    if secret:
        text = text.replace(secret, "***")
    return text[:500]


MAX_RESPONSE_BYTES = 64 * 1024  # of a receiver's answer we read at most this much (and ignore it)


def _post(url: str, body: bytes, headers: dict[str, str], deadline: float) -> int:
    """POST within one overall deadline (a ``time.monotonic()`` value): connect, send, the status line and
    headers, and a bounded read of the body together. A timer shuts the socket down at the deadline, so a
    receiver that trickles its answer one byte at a time cannot hold the sender past it."""
    import http.client
    import socket
    import ssl

    parts = urlsplit(url)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("deadline passed before connecting")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=remaining,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=remaining)
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(max(remaining, 0.0), cut)
    timer.daemon = True
    timer.start()
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        if expired.is_set():
            raise TimeoutError("deadline passed")
        return response.status
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set() or time.monotonic() >= deadline:
            raise TimeoutError("deadline passed") from exc
        raise
    finally:
        timer.cancel()
        conn.close()


def _send(hook: Webhook, row: Mapping[str, Any], attempt: int) -> tuple[bool, int | None, str | None]:
    """One POST within the webhook's deadline; (delivered, HTTP status, error)."""
    import http.client

    secret = None
    if hook.secret_env:
        secret = os.environ.get(hook.secret_env)
        if not secret:
            return False, None, f"secret_missing: environment variable {hook.secret_env} is not set"
    body = row["payload"].encode()
    message_id = row.get("message_id") or f"msg_outbox_{row['id']}"
    stamp = int(time.time())  # the attempt's own time (receivers reject replays by it), not the injected clock
    headers = {"Content-Type": "application/json", "User-Agent": "workctl", "webhook-id": message_id,
               "webhook-timestamp": str(stamp), "X-Workctl-Event": row["event"], "X-Workctl-Attempt": str(attempt)}
    if secret:
        headers["webhook-signature"] = sign(secret, message_id, stamp, body)
    try:
        status = _post(hook.url, body, headers, time.monotonic() + hook.timeout)
    except TimeoutError:
        return False, None, f"timeout: no complete answer within the {hook.timeout:g} s deadline"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return False, None, _redact(f"connection: {type(exc).__name__}: {exc}", hook, secret)
    if 200 <= status < 300:
        return True, status, None
    return False, status, f"http_{status}: the webhook answered HTTP {status}"


def queue_order_alerts(conn: Connection, hooks: list[Webhook], now: str) -> int:
    """Queue ``order.failed`` for every order that became failed or dead-lettered since the last look (the
    transition events after the ``alert_marks`` watermark, which migration m004 sets to the store's newest
    event: history is not replayed). Runs in the caller's write transaction; returns how many it queued."""
    if not any("order.failed" in h.events for h in hooks):
        return 0
    mark = conn.execute("SELECT last_event_id FROM alert_marks WHERE name = 'order.failed'").fetchone()
    newest = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
    if mark is None:
        conn.execute("INSERT INTO alert_marks (name, last_event_id) VALUES ('order.failed', ?)", (newest,))
        return 0
    found = conn.execute(
        "SELECT e.id, e.order_id, e.from_state, e.to_state, o.type FROM events e JOIN orders o ON o.id = e.order_id "
        "WHERE e.id > ? AND e.id <= ? AND e.entity = 'order' AND e.to_state IN ('failed', 'dead_lettered') "
        "ORDER BY e.id", (mark[0], newest)).fetchall()
    queued = 0
    for _, order_id, before, state, order_type in found:
        queued += notify(conn, hooks, "order.failed", {"id": order_id, "type": order_type},
                         {"state": state, "state_before": before,
                          "next": f"workctl retry --order {order_id}  (or: workctl cancel {order_id})"}, now)
    conn.execute("UPDATE alert_marks SET last_event_id = ? WHERE name = 'order.failed'", (newest,))
    return queued


def due_count(conn: Connection, now: str) -> int:
    return conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending' AND next_attempt_at <= ?",
                        (now,)).fetchone()[0]


def pending_count(conn: Connection) -> int:
    return conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]


def deliver(s: Any, hooks: list[Webhook], *, order_id: str | None = None) -> dict[str, Any]:
    """Send every due pending row of the configured webhooks (of one order, or all); never raises for
    a failed delivery. Returns {"sent", "failed", "pending"} (pending: still waiting, all webhooks).

    Ctrl-C stops the sending: the row in flight stays claimed until its deadline has passed and everything
    unsent waits in the outbox for ``maintain`` (``"interrupted": true`` in the answer)."""
    sent = failed = 0
    interrupted = False
    by_name = {h.name: h for h in hooks}
    if by_name:
        now = s.now()
        condition, params = "state = 'pending' AND next_attempt_at <= ?", [now]
        if order_id:
            condition += " AND order_id = ?"
            params.append(order_id)
        names = list(by_name)
        condition += f" AND webhook IN ({', '.join('?' for _ in names)})"
        params.extend(names)
        keys = ("id", "webhook", "event", "order_id", "payload", "attempts", "next_attempt_at", "message_id")
        due = [dict(zip(keys, tuple(r), strict=True))
               for r in s.conn.execute(f"SELECT {', '.join(keys)} FROM outbox WHERE {condition} ORDER BY id", params)]
        try:
            for row in due:
                outcome = _attempt(s, by_name[row["webhook"]], row)
                sent += outcome == "sent"
                failed += outcome == "failed"
        except KeyboardInterrupt:
            interrupted = True
    result: dict[str, Any] = {"sent": sent, "failed": failed, "pending": pending_count(s.conn)}
    if interrupted:
        result["interrupted"] = True
    return result


def _attempt(s: Any, hook: Webhook, row: dict[str, Any]) -> str | None:
    """Claim the row, send it once, record the outcome and its event. None when another sender had it."""
    claimed_at = s.now()
    attempt = row["attempts"] + 1
    with write_tx(s.conn) as conn:
        # The claim outlasts the attempt's deadline: a concurrent sender (another approve, a maintain)
        # finds the row not due until well after this attempt has ended, one way or the other.
        claim = conn.execute(
            "UPDATE outbox SET attempts = ?, next_attempt_at = ? WHERE id = ? AND state = 'pending' "
            "AND next_attempt_at = ?", (attempt, _later(claimed_at, hook.timeout + CLAIM_MARGIN_SECONDS), row["id"],
                                        row["next_attempt_at"]))
        if claim.rowcount != 1:
            return None
    started = time.monotonic()
    ok, status, error = _send(hook, row, attempt)
    millis = round((time.monotonic() - started) * 1000, 1)
    now = s.now()
    info: dict[str, Any] = {"outbox_id": row["id"], "webhook": hook.name, "url": hook.display_url,
                            "event": row["event"], "attempt": attempt, "status": status, "ms": millis}
    with write_tx(s.conn) as conn:
        if ok:
            conn.execute("UPDATE outbox SET state = 'sent', sent_at = ?, last_error = NULL WHERE id = ?",
                         (now, row["id"]))
            append_event(conn, now=now, actor=Actor.system(), event="webhook_delivered", entity="webhook",
                         order_id=row["order_id"], payload=info)
            return "sent"
        if attempt >= hook.max_attempts:
            conn.execute("UPDATE outbox SET state = 'failed', last_error = ? WHERE id = ?", (error, row["id"]))
            info.update(error=error, gave_up=True)
        else:
            retry_at = _later(now, hook.backoff(attempt))
            conn.execute("UPDATE outbox SET next_attempt_at = ?, last_error = ? WHERE id = ?",
                         (retry_at, error, row["id"]))
            info.update(error=error, next_attempt_at=retry_at)
        append_event(conn, now=now, actor=Actor.system(), event="webhook_failed", entity="webhook",
                     order_id=row["order_id"], payload=info)
    return "failed"


def outbox(s: Any, *, order_id: str | None = None, state: str | None = None,
           limit: int = 1000) -> list[dict[str, Any]]:
    """Outbox rows (newest ``limit``, oldest first) with their parsed bodies."""
    clause, params = where(order_id=order_id or None, state=state or None)
    keys = ("id", "webhook", "event", "order_id", "payload", "state", "attempts", "next_attempt_at", "last_error",
            "created_at", "sent_at")
    rows = s.conn.execute(f"SELECT {', '.join(keys)} FROM outbox {clause} ORDER BY id DESC LIMIT ?",
                          (*params, limit)).fetchall()
    out = []
    for r in reversed(rows):
        row = dict(zip(keys, tuple(r), strict=True))
        row["payload"] = json.loads(row["payload"])
        row["next_attempt_at"] = row["next_attempt_at"] or None
        out.append(row)
    return out
