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
    allow_fields = ["email"]    # when set, the only columns a sync may write
    max_value_chars = 65536     # the longest string a sync may write

    [types."user.data.sync"]
    deny_fields = ["ssn", "salary"]   # added to the built-in deny-list (credentials, keys, tokens, roles, …)
    lookback_seconds = 0              # delta sync: start every window this much earlier

    [approve]                   # the guards of sync --approve / run --approve (a held order stays submitted)
    max_changed_users = 500     # more users changed than this: held
    max_changed_ratio = 0.2     # a larger share of the order's users changed: held
    never_auto_fields = ["email"]   # an order that changes any of these always waits for a person

Unknown tables and keys are refused (``config_invalid``, exit 5, with a did-you-mean): a typo must never
silently fall back to a default. ``[sources.*]`` and ``[[webhooks]]`` are checked key by key where they are
used (``sources.config``, ``core.outbox``); ``[types."<type>"]`` belongs to each order type.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Invalid
from .limits import MAX_DAYS, MAX_SECONDS, MAX_TTL_SECONDS

DEFAULT_CONFIG = "workctl.toml"


def default_agent() -> str:
    """The agent id when none is given (``--agent``, ``WORKCTL_AGENT_ID``): ``USER@HOSTNAME``."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "agent"
    return f"{user}@{os.uname().nodename}"


# Every table and key of workctl.toml that this module reads: anything else is refused.
KNOWN_KEYS: dict[str, frozenset[str] | None] = {
    "lease": frozenset({"ttl_seconds", "heartbeat_every_seconds", "retry_backoff_seconds",
                        "retry_backoff_cap_seconds"}),
    "retention": frozenset({"idempotency_days", "event_days", "dead_letter_after_seconds"}),
    "target": frozenset({"db", "allow_fields", "max_value_chars"}),  # the last two: read by user.data.sync
    "approve": frozenset({"max_changed_users", "max_changed_ratio", "never_auto_fields"}),
    "types": None,      # one table per order type, read by the type
    "sources": None,    # one table per source, checked by workctl.sources.config
    "webhooks": None,   # an array of tables, checked by workctl.core.outbox
}


# The largest value of each numeric key (the smallest is given where it is read).
NUMBER_RANGES: dict[str, float] = {
    "ttl_seconds": MAX_TTL_SECONDS, "heartbeat_every_seconds": MAX_TTL_SECONDS,
    "retry_backoff_seconds": MAX_SECONDS, "retry_backoff_cap_seconds": MAX_SECONDS,
    "idempotency_days": MAX_DAYS, "event_days": MAX_DAYS, "dead_letter_after_seconds": MAX_SECONDS,
}


@dataclass(frozen=True)
class ApproveRules:
    """``[approve]``: what an automatic approval (sync/run --approve) may apply without a person."""

    max_changed_users: int | None = None
    max_changed_ratio: float | None = None
    never_auto_fields: tuple[str, ...] = ()


def _suggest(name: str, known: Any) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"


def check_known(raw: dict[str, Any], where: str) -> None:
    """Refuse unknown tables and keys, naming the closest known one."""
    for table, value in raw.items():
        if table not in KNOWN_KEYS:
            raise Invalid(f"config {where}: unknown table [{table}]{_suggest(table, KNOWN_KEYS)}",
                          code="config_invalid")
        keys = KNOWN_KEYS[table]
        if keys is None:
            continue
        if not isinstance(value, dict):
            raise Invalid(f"config {where}: [{table}] must be a table", code="config_invalid")
        for key in value:
            if key not in keys:
                raise Invalid(f"config {where}: unknown key {key!r} in [{table}]{_suggest(key, keys)}",
                              code="config_invalid")


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
    approve: ApproveRules = field(default_factory=ApproveRules)
    types: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def type_settings(self, name: str, known: frozenset[str] | None = None) -> dict[str, Any]:
        """The ``[types."<name>"]`` table; with ``known`` (the keys the type reads), an unknown key is
        refused as a typo would be anywhere else in the config."""
        table = self.types.get(name, {})
        if not isinstance(table, dict):
            raise Invalid(f"config {self.path}: [types.\"{name}\"] must be a table", code="config_invalid")
        if known is not None:
            for key in table:
                if key not in known:
                    hint = _suggest(key, known) if known else " (this type reads no settings)"
                    raise Invalid(f"config {self.path}: unknown key {key!r} in [types.\"{name}\"]{hint}",
                                  code="config_invalid")
        return dict(table)


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
    check_known(raw, str(candidate))

    def number(section: str, key: str, default: float, minimum: float = 0) -> Any:
        value = raw.get(section, {}).get(key, default)
        # TOML has inf and nan (nan passes every comparison) and 1e300: each would overflow a date or an
        # integer deep inside an operation, so every key has a finite range.
        maximum = NUMBER_RANGES[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not minimum <= value <= maximum:
            raise Invalid(f"config {candidate}: [{section}] {key} must be a number from {minimum} to {maximum}, "
                          f"not {str(value)[:40]}", code="config_invalid")
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
        approve=_approve_rules(raw.get("approve", {}), str(candidate)),
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


def _approve_rules(section: dict[str, Any], where: str) -> ApproveRules:
    def bad(message: str) -> Invalid:
        return Invalid(f"config {where}: [approve] {message}", code="config_invalid")

    users = section.get("max_changed_users")
    if users is not None and (isinstance(users, bool) or not isinstance(users, int) or not 0 <= users < 2**63):
        raise bad("max_changed_users must be a whole number >= 0")
    ratio = section.get("max_changed_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                              or not 0 <= ratio <= 1):
        raise bad("max_changed_ratio must be a number from 0 to 1")
    fields = section.get("never_auto_fields", [])
    if not isinstance(fields, list) or not all(isinstance(f, str) and f for f in fields):
        raise bad("never_auto_fields must be a list of field names")
    return ApproveRules(max_changed_users=users, max_changed_ratio=None if ratio is None else float(ratio),
                        never_auto_fields=tuple(fields))
