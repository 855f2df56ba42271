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

Each request is a POST of the row's JSON body with ``X-Workctl-Signature: sha256=<hex>`` (HMAC-SHA256
of the exact body with the secret), ``X-Workctl-Event`` and ``X-Workctl-Delivery`` (the body's
``id``, stable across retries: receivers dedupe on it, since delivery is at least once). Secrets are
read from the environment when a request is signed and are never stored, logged or put in errors.

Bodies carry the changed user ids and cache tags (``users`` for user.data.sync, plus the webhook's
``tags``; ``user.updated`` adds ``user.<id>``), so a cache-purge endpoint is just another webhook.
httpx is imported only when something is actually sent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping
from urllib.parse import urlsplit

from ..clock import iso, parse as parse_iso
from ..errors import Invalid
from ..jsonio import dumps
from ..store.sql import where
from ..store.sqlite import write_tx
from .lifecycle import Actor, append_event

EVENTS = ("order.applied", "order.reverted", "user.updated")
SIGNATURE_HEADER = "X-Workctl-Signature"
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


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for a body: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """For receivers: does the signature header match this exact body? (constant-time compare)"""
    return bool(header) and hmac.compare_digest(sign(secret, body), str(header))


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


# -- the outbox (inside approve's store transaction) --------------------------------------------
def _new_id() -> str:
    import uuid

    return str(uuid.uuid4())


def enqueue(conn: sqlite3.Connection, hooks: list[Webhook], order: Mapping[str, Any],
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
    rows: list[tuple[Any, ...]] = []
    for hook in hooks:
        tags = list(dict.fromkeys([*base_tags, *hook.tags]))
        if order_event in hook.events:
            body = {"id": _new_id(), "event": order_event, "order_id": order["id"], "type": order["type"],
                    "source": source, "users_synced": synced, "users_changed": len(changed),
                    "changed_user_ids": sorted(changed, key=str), "tags": tags,
                    "summary": diff.get("summary"), "timestamp": now}
            rows.append((hook.name, order_event, order["id"], dumps(body), now))
        if "user.updated" in hook.events:
            for user_id in sorted(changed, key=str):
                body = {"id": _new_id(), "event": "user.updated", "order_id": order["id"], "type": order["type"],
                        "source": source, "user_id": user_id, "fields": sorted(changed[user_id]),
                        "tags": [*tags, f"user.{user_id}"], "timestamp": now}
                rows.append((hook.name, "user.updated", order["id"], dumps(body), now))
    if rows:
        conn.executemany("INSERT INTO outbox (webhook, event, order_id, payload, created_at) VALUES (?, ?, ?, ?, ?)",
                         rows)
        append_event(conn, now=now, actor=Actor.system(), event="webhooks_queued", entity="order",
                     order_id=order["id"], payload={"count": len(rows), "webhooks": [h.name for h in hooks]})
    return len(rows)


# -- delivery (after commit) --------------------------------------------------------------------
def _later(now: str, seconds: float) -> str:
    return iso(parse_iso(now) + timedelta(seconds=seconds))


def _redact(text: str, hook: Webhook, secret: str | None) -> str:
    text = text.replace(hook.url, hook.display_url)
    if secret:
        text = text.replace(secret, "***")
    return text[:500]


def _send(http: Any, hook: Webhook, row: Mapping[str, Any], attempt: int) -> tuple[bool, int | None, str | None]:
    """One POST; (delivered, HTTP status, error)."""
    import httpx

    secret = None
    if hook.secret_env:
        secret = os.environ.get(hook.secret_env)
        if not secret:
            return False, None, f"secret_missing: environment variable {hook.secret_env} is not set"
    body = row["payload"].encode()
    headers = {"Content-Type": "application/json", "User-Agent": "workctl",
               "X-Workctl-Event": row["event"], "X-Workctl-Delivery": json.loads(row["payload"]).get("id", ""),
               "X-Workctl-Attempt": str(attempt)}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    try:
        response = http.post(hook.url, content=body, headers=headers, timeout=hook.timeout)
    except httpx.TimeoutException as exc:
        return False, None, f"timeout: {type(exc).__name__}"
    except httpx.HTTPError as exc:
        return False, None, _redact(f"connection: {type(exc).__name__}: {exc}", hook, secret)
    except Exception as exc:  # noqa: BLE001 — e.g. an URL httpx refuses: a failed attempt, never a crash
        return False, None, _redact(f"error: {type(exc).__name__}: {exc}", hook, secret)
    if 200 <= response.status_code < 300:
        return True, response.status_code, None
    return False, response.status_code, f"http_{response.status_code}: the webhook answered HTTP {response.status_code}"


def pending_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]


def deliver(s: Any, hooks: list[Webhook], *, order_id: str | None = None,
            http: Any = None) -> dict[str, int]:
    """Send every due pending row of the configured webhooks (of one order, or all); never raises for
    a failed delivery. Returns {"sent", "failed", "pending"} (pending: still waiting, all webhooks)."""
    sent = failed = 0
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
        due = [dict(zip(("id", "webhook", "event", "order_id", "payload", "attempts", "next_attempt_at"), tuple(r), strict=True))
               for r in s.conn.execute("SELECT id, webhook, event, order_id, payload, attempts, next_attempt_at "
                                       f"FROM outbox WHERE {condition} ORDER BY id", params)]
        if due:
            own_client = http is None
            if own_client:
                import httpx

                http = httpx.Client(follow_redirects=False)
            try:
                for row in due:
                    outcome = _attempt(s, by_name[row["webhook"]], row, http)
                    sent += outcome == "sent"
                    failed += outcome == "failed"
            finally:
                if own_client:
                    http.close()
    return {"sent": sent, "failed": failed, "pending": pending_count(s.conn)}


def _attempt(s: Any, hook: Webhook, row: dict[str, Any], http: Any) -> str | None:
    """Claim the row, send it once, record the outcome and its event. None when another sender had it."""
    claimed_at = s.now()
    attempt = row["attempts"] + 1
    with write_tx(s.conn) as conn:
        # The claim: a concurrent sender (another approve, a maintain) finds it not due for a while.
        claim = conn.execute(
            "UPDATE outbox SET attempts = ?, next_attempt_at = ? WHERE id = ? AND state = 'pending' "
            "AND next_attempt_at = ?", (attempt, _later(claimed_at, hook.timeout + 60), row["id"],
                                        row["next_attempt_at"]))
        if claim.rowcount != 1:
            return None
    started = time.monotonic()
    ok, status, error = _send(http, hook, row, attempt)
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
