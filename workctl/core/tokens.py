"""Bearer tokens for the HTTP API (``workctl serve``): create, list, revoke, authenticate.

A token is ``wct_<name-free random>``: 32 random bytes, URL-safe base64. Only its SHA-256 is stored
(the secret has 256 bits of entropy, so a fast hash is enough: nothing to brute-force), and the secret
is returned exactly once, by ``create``. Scopes:

* ``agent`` — check out, heartbeat, release and submit, and read what it leased;
* ``operator`` — everything an agent may, plus propose, approve, reject, cancel and reading any order.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from datetime import timedelta
from typing import Any

from ..clock import iso, parse
from ..errors import Conflict, Invalid, NotFound, Unauthorized
from ..store import write_tx
from .session import Session

SCOPES = ("agent", "operator")
PREFIX = "wct_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_DURATION = re.compile(r"^(\d{1,6})([mhdw])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _expiry(s: Session, expires: str | None) -> str | None:
    """``--expires``: a duration (``30m``, ``12h``, ``90d``, ``4w``) or an ISO-8601 time in the future."""
    if expires is None:
        return None
    moment = s.clock()
    match = _DURATION.match(expires.strip())
    if match:
        return iso(moment + timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]]))
    try:
        when = parse(expires.strip())
    except ValueError:
        raise Invalid(f"--expires {expires!r} is neither a duration (30m, 12h, 90d, 4w) nor an ISO-8601 time",
                      code="invalid") from None
    if when <= moment:
        raise Invalid(f"--expires {expires!r} is not in the future", code="invalid")
    return iso(when)


def create(s: Session, *, scope: str, name: str | None = None, expires: str | None = None) -> dict[str, Any]:
    if scope not in SCOPES:
        raise Invalid(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}", code="invalid")
    now = s.now()
    secret = PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    if name == "":
        raise Invalid("the token name is empty; give a name with --name or leave it out", code="invalid")
    name = name or f"{scope}-{secret[len(PREFIX):len(PREFIX) + 8].lower()}"
    if not _NAME.match(name):
        raise Invalid(f"token name {name!r} must be 1-64 letters, digits, '_', '.', '@' or '-'", code="invalid")
    expires_at = _expiry(s, expires)
    with write_tx(s.conn) as conn:
        if conn.execute("SELECT 1 FROM api_tokens WHERE name = ?", (name,)).fetchone():
            raise Conflict(f"a token named {name!r} exists already; revoke it or choose another --name",
                           code="token_exists")
        conn.execute("INSERT INTO api_tokens (name, scope, secret_hash, created_at, expires_at) "
                     "VALUES (?, ?, ?, ?, ?)", (name, scope, _hash(secret), now, expires_at))
    return {"token": {"name": name, "scope": scope, "value": secret, "created_at": now, "expires_at": expires_at}}


def _public(row: Any, now: str) -> dict[str, Any]:
    state = ("revoked" if row["revoked_at"] else "expired" if row["expires_at"] and row["expires_at"] <= now
             else "active")
    return {"name": row["name"], "scope": row["scope"], "state": state, "created_at": row["created_at"],
            "expires_at": row["expires_at"], "revoked_at": row["revoked_at"]}


def list_tokens(s: Session) -> list[dict[str, Any]]:
    now = s.now()
    return [_public(row, now) for row in s.conn.execute(
        "SELECT name, scope, created_at, expires_at, revoked_at FROM api_tokens ORDER BY created_at, name")]


def revoke(s: Session, name: str) -> dict[str, Any]:
    now = s.now()
    with write_tx(s.conn) as conn:
        row = conn.execute("SELECT name, scope, created_at, expires_at, revoked_at FROM api_tokens WHERE name = ?",
                           (name,)).fetchone()
        if row is None:
            raise NotFound(f"no token named {name!r} (see workctl tokens list)", code="token_not_found")
        if row["revoked_at"] is None:
            conn.execute("UPDATE api_tokens SET revoked_at = ? WHERE name = ?", (now, name))
    return {"token": _public(s.conn.execute(
        "SELECT name, scope, created_at, expires_at, revoked_at FROM api_tokens WHERE name = ?",
        (name,)).fetchone(), now)}


def authenticate(s: Session, secret: str) -> dict[str, Any]:
    """The token a bearer secret belongs to ({name, scope}); Unauthorized if unknown, revoked or expired.

    Every refusal says the same thing whatever the reason, so a caller cannot probe which names exist."""
    if not secret.startswith(PREFIX) or len(secret) > 200:
        raise Unauthorized("the bearer token is not valid (create one with: workctl tokens create)")
    row = s.conn.execute("SELECT name, scope, expires_at, revoked_at FROM api_tokens WHERE secret_hash = ?",
                         (_hash(secret),)).fetchone()
    now = s.now()
    if row is None or row["revoked_at"] or (row["expires_at"] and row["expires_at"] <= now):
        raise Unauthorized("the bearer token is not valid: unknown, revoked or expired")
    return {"name": row["name"], "scope": row["scope"]}
