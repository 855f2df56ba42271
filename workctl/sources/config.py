"""Source configuration: ``[sources.<name>]`` in workctl.toml, environment overrides, secrets from env.

    [sources.crm]
    base_url = "https://crm.example.com/api"   # or env WORKCTL_SOURCE_CRM_URL
    user_path = "/users/{user_id}"
    bulk_path = "/users?ids={ids}"             # optional: one request per batch
    data_path = "data"                         # where the user object sits in the response ("" = body)
    auth = "bearer"                            # none | bearer | header | query | basic
    token_env = "CRM_TOKEN"                    # the secret's environment variable (never the secret)
    timeout = 10
    rate_limit = 20                            # requests per second (0 = unlimited)
    burst = 5
    concurrency = 8
    max_attempts = 5
    field_map = { email_address = "email", mobile = "phone" }   # external name -> local column
    delta_param = "updated_since"              # delta sync: ?updated_since=<since> ("" = no filtering)

crm, analytics and billing need no section at all when ``WORKCTL_SOURCE_<NAME>_URL`` is set: they then
use the defaults above (the sample server's layout).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import Invalid

KNOWN_SOURCES = ("crm", "analytics", "billing")
AUTH_KINDS = ("none", "bearer", "header", "query", "basic")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_PARAM = re.compile(r"^[A-Za-z0-9_.\-\[\]]{0,64}$")


class MissingSecret(Invalid):
    default_code = "secret_missing"


@dataclass(frozen=True)
class SourceConfig:
    name: str
    base_url: str
    user_path: str = "/users/{user_id}"
    bulk_path: str | None = "/users?ids={ids}"
    data_path: str = "data"
    id_field: str = "id"
    auth: str = "none"
    token_env: str | None = None
    username_env: str | None = None
    auth_header: str = "X-API-Key"
    auth_param: str = "api_key"
    timeout: float = 10.0
    rate_limit: float = 0.0
    burst: int = 1
    concurrency: int = 8
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    retry_after_cap: float = 300.0
    field_map: Mapping[str, str] = field(default_factory=dict)
    delta_param: str = "updated_since"  # delta sync: the query parameter carrying `since` ("" = cannot filter)

    def secret(self) -> str | None:
        """The secret from the environment, or None when the source needs none."""
        if self.auth == "none":
            return None
        if not self.token_env:
            raise Invalid(f"source {self.name}: auth = {self.auth!r} needs token_env (the environment variable "
                          "holding the secret)", code="source_invalid")
        value = os.environ.get(self.token_env)
        if not value:
            raise MissingSecret(f"source {self.name}: environment variable {self.token_env} is not set "
                                f"(it holds the {self.auth} secret)")
        return value

    def username(self) -> str:
        if not self.username_env or not os.environ.get(self.username_env):
            raise MissingSecret(f"source {self.name}: basic auth needs username_env set to a variable that "
                                "is present in the environment")
        return os.environ[self.username_env]

    def describe(self) -> dict[str, Any]:
        """Safe to print: names the secret's variable, never its value."""
        return {"name": self.name, "base_url": self.base_url, "user_path": self.user_path,
                "bulk_path": self.bulk_path, "auth": self.auth, "token_env": self.token_env,
                "rate_limit": self.rate_limit, "burst": self.burst, "concurrency": self.concurrency,
                "timeout": self.timeout, "max_attempts": self.max_attempts, "field_map": dict(self.field_map)}


def _env_url(name: str) -> str | None:
    return os.environ.get(f"WORKCTL_SOURCE_{name.upper().replace('-', '_')}_URL") or None


def configured_sources(raw: Mapping[str, Any]) -> list[str]:
    names = set(raw.get("sources", {}) or {})
    names.update(n for n in KNOWN_SOURCES if _env_url(n))
    return sorted(names)


def load_source(name: str, raw: Mapping[str, Any]) -> SourceConfig:
    """The source's config from the config file's sources table, with env overrides; Invalid if unusable."""
    if not _NAME.match(name):
        raise Invalid(f"source name {name!r} is not valid", code="source_invalid")
    section = dict((raw.get("sources", {}) or {}).get(name, {}) or {})
    base_url = _env_url(name) or section.pop("base_url", None)
    section.pop("base_url", None)
    if not base_url:
        raise Invalid(f"source {name} is not configured: add [sources.{name}] with base_url to workctl.toml "
                      f"or set WORKCTL_SOURCE_{name.upper()}_URL", code="source_not_configured")
    if not str(base_url).startswith(("http://", "https://")):
        raise Invalid(f"source {name}: base_url must start with http:// or https://", code="source_invalid")
    known = set(SourceConfig.__dataclass_fields__) - {"name", "base_url"}
    unknown = set(section) - known
    if unknown:
        raise Invalid(f"source {name}: unknown settings {', '.join(sorted(unknown))}", code="source_invalid")
    if section.get("auth", "none") not in AUTH_KINDS:
        raise Invalid(f"source {name}: auth must be one of {', '.join(AUTH_KINDS)}", code="source_invalid")
    field_map = section.get("field_map", {})
    if not isinstance(field_map, dict) or not all(isinstance(k, str) and isinstance(v, str) and _COLUMN.match(v)
                                                  for k, v in field_map.items()):
        raise Invalid(f"source {name}: field_map must map external names to column names", code="source_invalid")
    if not isinstance(section.get("delta_param", ""), str) or not _PARAM.match(section.get("delta_param", "")):
        raise Invalid(f"source {name}: delta_param must be a query parameter name (or \"\")", code="source_invalid")
    try:
        config = SourceConfig(name=name, base_url=str(base_url).rstrip("/"), **section)
    except TypeError as exc:
        raise Invalid(f"source {name}: {exc}", code="source_invalid") from exc
    for number in ("timeout", "rate_limit", "backoff_base", "backoff_cap", "retry_after_cap"):
        value = getattr(config, number)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise Invalid(f"source {name}: {number} must be a number >= 0", code="source_invalid")
    for count in ("burst", "concurrency", "max_attempts"):
        value = getattr(config, count)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise Invalid(f"source {name}: {count} must be an integer >= 1", code="source_invalid")
    return config
