"""The effective configuration, each value with its origin (``workctl config``).

Values come from four places, in this order of precedence: a global option (``--db``, ``--config``), an
environment variable, the config file, the built-in default. The report says which one each value came
from, so "why does cron write to another store?" is one command. Secrets never appear: a source's
token, a webhook's secret and the lease token are reported as ``set`` or ``not set`` with the variable
they are read from.
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

from .config import DEFAULT_CONFIG, Config, default_agent, load_config

# [table] key -> Config attribute, for the settings with a built-in default.
_DEFAULTS = {
    ("lease", "ttl_seconds"): "ttl_seconds",
    ("lease", "heartbeat_every_seconds"): "heartbeat_every_seconds",
    ("lease", "retry_backoff_seconds"): "retry_backoff_seconds",
    ("lease", "retry_backoff_cap_seconds"): "retry_backoff_cap_seconds",
    ("retention", "idempotency_days"): "idempotency_days",
    ("retention", "event_days"): "event_days",
    ("retention", "dead_letter_after_seconds"): "dead_letter_after_seconds",
}
# Settings with no default value: shown as "not set" unless the file sets them.
_OPTIONAL = [("target", "allow_fields"), ("target", "max_value_chars"), ("approve", "max_changed_users"),
             ("approve", "max_changed_ratio"), ("approve", "never_auto_fields")]


def _setting(key: str, value: Any, origin: str) -> dict[str, Any]:
    return {"key": key, "value": value, "origin": origin}


def _secret(key: str, variable: str | None) -> dict[str, Any]:
    if not variable:
        return _setting(key, "not needed", "default")
    return _setting(key, "set" if os.environ.get(variable) else "not set", f"env {variable}")


def _masked_store(location: str) -> str:
    from .sources.config import mask_url

    return mask_url(location) if "://" in location else os.path.abspath(location)


def effective_config(*, db: str | None = None, db_origin: str = "default", config: str | None = None,
                     config_origin: str = "default") -> dict[str, Any]:
    """``{"settings": [{"key", "value", "origin"}, …]}``; Invalid (config_invalid) if the file is malformed."""
    from .store import DEFAULT_DB, is_url

    location = db or os.environ.get("WORKCTL_DB") or DEFAULT_DB
    if not db and os.environ.get("WORKCTL_DB"):
        db_origin = "env WORKCTL_DB"
    settings = [_setting("store", _masked_store(location), db_origin),
                _setting("backend", "postgresql" if is_url(location) else "sqlite", "from store")]
    loaded = load_config(config)
    path = loaded.path
    if path is None:
        settings.append(_setting("config_file", f"none (no {DEFAULT_CONFIG} here)", "default"))
    else:
        if not config and not os.environ.get("WORKCTL_CONFIG"):
            config_origin = f"default (./{DEFAULT_CONFIG})"
        elif not config:
            config_origin = "env WORKCTL_CONFIG"
        settings.append(_setting("config_file", os.path.abspath(path), config_origin))
    in_file = f"file {path}"
    agent = os.environ.get("WORKCTL_AGENT_ID")
    settings.append(_setting("agent", agent or default_agent(), "env WORKCTL_AGENT_ID" if agent else
                             "default (USER@HOSTNAME)"))
    settings.append(_secret("lease_token", "WORKCTL_LEASE_TOKEN"))
    raw = loaded.raw
    defaults = {f.name: f.default for f in fields(Config)}
    for (table, key), attribute in _DEFAULTS.items():
        if key in (raw.get(table) or {}):
            settings.append(_setting(f"{table}.{key}", getattr(loaded, attribute), in_file))
        else:
            settings.append(_setting(f"{table}.{key}", defaults[attribute], "default"))
    target_env = os.environ.get("WORKCTL_TARGET_DB")
    if target_env:
        settings.append(_setting("target.db", os.path.abspath(target_env), "env WORKCTL_TARGET_DB"))
    elif loaded.target_db:
        settings.append(_setting("target.db", loaded.target_db, in_file))
    else:
        settings.append(_setting("target.db", "the store's own database", "default"))
    for table, key in _OPTIONAL:
        if key in (raw.get(table) or {}):
            settings.append(_setting(f"{table}.{key}", raw[table][key], in_file))
        else:
            settings.append(_setting(f"{table}.{key}", "not set", "default"))
    for type_name, table in sorted((raw.get("types") or {}).items()):
        for key, value in sorted((table or {}).items()):
            settings.append(_setting(f'types."{type_name}".{key}', value, in_file))
    settings += _sources(raw, in_file)
    settings += _webhooks(loaded, in_file)
    return {"settings": settings}


def _sources(raw: dict[str, Any], in_file: str) -> list[dict[str, Any]]:
    from .sources.config import _env_url, configured_sources, load_source

    out = []
    for name in configured_sources(raw):
        section = (raw.get("sources") or {}).get(name) or {}
        try:
            source = load_source(name, raw)
        except Exception as exc:  # one broken source is reported, not fatal: the report is for finding it
            out.append(_setting(f"sources.{name}", f"invalid: {exc}", in_file))
            continue
        for key, value in source.describe().items():
            if key in ("name", "token_env"):
                continue
            if key == "base_url" and _env_url(name):
                origin = f"env WORKCTL_SOURCE_{name.upper().replace('-', '_')}_URL"
            else:
                origin = in_file if key in section else "default"
            out.append(_setting(f"sources.{name}.{key}", value, origin))
        out.append(_secret(f"sources.{name}.token", source.token_env if source.auth != "none" else None))
    return out


def _webhooks(loaded: Config, in_file: str) -> list[dict[str, Any]]:
    from .core.outbox import configured
    from .sources.config import mask_url

    out = []
    for index, hook in enumerate(configured(loaded), start=1):
        out.append(_setting(f"webhooks.{index}.url", mask_url(hook.url), in_file))
        out.append(_setting(f"webhooks.{index}.events", list(hook.events), in_file))
        out.append(_secret(f"webhooks.{index}.secret", hook.secret_env))
    return out
