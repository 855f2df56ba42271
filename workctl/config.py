"""workctl.toml + environment. Secrets never live here: the config only names environment variables.

Lookup: ``--config PATH`` / ``WORKCTL_CONFIG``, else ``./workctl.toml`` if present, else defaults.

    [lease]
    ttl_seconds = 600
    heartbeat_every_seconds = 120
    retry_backoff_seconds = 10     # an item released with an error waits 10 s, 20 s, 40 s … (0: no wait)
    retry_backoff_cap_seconds = 600

    [retention]
    idempotency_days = 7        # maintain purges keys older than this
    event_days = 0              # 0 keeps the audit trail forever; N prunes events of finished orders
    dead_letter_after_seconds = 0

    [target]
    db = "app.db"               # where the users table lives (default: the store's own file)

    [types."user.data.sync"]
    deny_fields = ["ssn", "salary"]   # added to the built-in deny-list (password, token, secret, admin, role, …)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Invalid

DEFAULT_CONFIG = "workctl.toml"


def default_agent() -> str:
    """The agent id when none is given (``--agent``, ``WORKCTL_AGENT_ID``): ``USER@HOSTNAME``."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "agent"
    return f"{user}@{os.uname().nodename}"


@dataclass(frozen=True)
class Config:
    ttl_seconds: int = 600
    heartbeat_every_seconds: int = 120
    retry_backoff_seconds: float = 10
    retry_backoff_cap_seconds: float = 600
    idempotency_days: float = 7
    event_days: float = 0
    dead_letter_after_seconds: float = 0
    target_db: str | None = None
    types: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def type_settings(self, name: str) -> dict[str, Any]:
        return dict(self.types.get(name, {}))


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    explicit = path or os.environ.get("WORKCTL_CONFIG")
    candidate = Path(explicit) if explicit else Path(DEFAULT_CONFIG)
    if not candidate.exists():
        if explicit:
            raise Invalid(f"config file {candidate} does not exist", code="config_missing")
        return Config(target_db=os.environ.get("WORKCTL_TARGET_DB") or None)
    import tomllib

    try:
        with open(candidate, "rb") as handle:
            raw = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise Invalid(f"cannot read config {candidate}: {exc}", code="config_invalid") from exc

    def number(section: str, key: str, default: float, minimum: float = 0) -> Any:
        value = raw.get(section, {}).get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise Invalid(f"config {candidate}: [{section}] {key} must be a number >= {minimum}",
                          code="config_invalid")
        return value

    target = raw.get("target", {}).get("db")
    if target is not None and not isinstance(target, str):
        raise Invalid(f"config {candidate}: [target] db must be a path string", code="config_invalid")
    if target and not os.path.isabs(target):
        target = str(candidate.parent / target)
    types = raw.get("types", {})
    if not isinstance(types, dict):
        raise Invalid(f"config {candidate}: [types] must be a table", code="config_invalid")
    return Config(
        ttl_seconds=int(number("lease", "ttl_seconds", 600, 1)),
        heartbeat_every_seconds=int(number("lease", "heartbeat_every_seconds", 120, 1)),
        retry_backoff_seconds=number("lease", "retry_backoff_seconds", 10),
        retry_backoff_cap_seconds=number("lease", "retry_backoff_cap_seconds", 600),
        idempotency_days=number("retention", "idempotency_days", 7),
        event_days=number("retention", "event_days", 0),
        dead_letter_after_seconds=number("retention", "dead_letter_after_seconds", 0),
        target_db=os.environ.get("WORKCTL_TARGET_DB") or target,
        types=types,
        raw=raw,
        path=str(candidate),
    )
