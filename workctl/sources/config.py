"""Source configuration: ``[sources.<name>]`` in workctl.toml, environment overrides, secrets from env.

    [sources.crm]
    base_url = "https://crm.example.com/api"   # or env WORKCTL_SOURCE_CRM_URL
    user_path = "/users/{user_id}"
    bulk_path = "/users?ids={ids}"             # optional: one request per batch
    data_path = "data"                         # where the user object sits in the response ("" = body)
    auth = "bearer"                            # none | bearer | header | query | basic
    token_env = "CRM_TOKEN"                    # the secret's environment variable (never the secret)
    timeout = 10                               # seconds for the whole request: connect, headers and body
    max_body_bytes = 33554432                  # 32 MiB: the most a response may hold, after decompression
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

import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import Invalid
from ..limits import MAX_SECONDS

KNOWN_SOURCES = ("crm", "analytics", "billing")
AUTH_KINDS = ("none", "bearer", "header", "query", "basic")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_PARAM = re.compile(r"^[A-Za-z0-9_.\-\[\]]{0,64}$")
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # a bulk page of 50 users is ~20 KB: room for odd sources, not for bombs
MAX_BODY_BYTES_RANGE = (1024, 1024 * 1024 * 1024)


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
    timeout: float = 10.0  # the deadline of one request: connect, headers and the whole body
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # decompressed; more is a too_large failure
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
        _check_secret(self.name, self.token_env, value, header=self.auth in ("bearer", "header"))
        return value

    def username(self) -> str:
        if not self.username_env or not os.environ.get(self.username_env):
            raise MissingSecret(f"source {self.name}: basic auth needs username_env set to a variable that "
                                "is present in the environment")
        value = os.environ[self.username_env]
        _check_secret(self.name, self.username_env, value, header=False)
        if ":" in value:
            raise InvalidSecret(f"source {self.name}: environment variable {self.username_env} (the basic-auth "
                                "username) contains ':', which basic auth cannot carry in a username")
        return value

    def describe(self) -> dict[str, Any]:
        """Safe to print: names the secret's variable, never its value."""
        return {"name": self.name, "base_url": mask_url(self.base_url), "user_path": mask_url(self.user_path),
                "bulk_path": mask_url(self.bulk_path) if self.bulk_path else self.bulk_path, "auth": self.auth,
                "token_env": self.token_env, "rate_limit": self.rate_limit, "burst": self.burst,
                "concurrency": self.concurrency, "timeout": self.timeout, "max_body_bytes": self.max_body_bytes,
                "max_attempts": self.max_attempts, "field_map": dict(self.field_map)}


class InvalidSecret(Invalid):
    default_code = "secret_invalid"


def _check_secret(source: str, variable: str, value: str, *, header: bool) -> None:
    """Refuse a secret that cannot be sent as it is. Names the variable, never the value: a control
    character is almost always a pasted or file-read newline, and httpx would either refuse the header
    with the secret in its message or send something the source rejects."""
    for char in value:
        if unicodedata.category(char) == "Cc":
            what = {"\n": "a newline", "\r": "a carriage return", "\x00": "a NUL byte", "\t": "a tab"}.get(
                char, "a control character")
            raise InvalidSecret(f"source {source}: environment variable {variable} contains {what}; remove it "
                                f"(a value read from a file often ends in a newline: export {variable}=\"$(tr -d "
                                "'\\r\\n' < FILE)\")")
    if header and not value.isascii():
        raise InvalidSecret(f"source {source}: environment variable {variable} contains non-ASCII characters, "
                            "which an HTTP header cannot carry; check the value (use auth = \"query\" if the "
                            "source really expects such a key)")


def mask_url(url: str) -> str:
    """``url`` safe to show: userinfo as ``***@`` and every query (and fragment) value as ``***``.

    ``https://user:pw@host/p?key=abc&x=1`` -> ``https://***@host/p?key=***&x=***``. Template fields
    (``ids={ids}``) stay, since they are ours. Never raises: the URL may be a source's Location header."""
    rest, hash_, fragment = url.partition("#")
    rest, question, query = rest.partition("?")
    scheme, sep, remainder = rest.partition("://")
    if sep:
        end = remainder.find("/")
        end = len(remainder) if end < 0 else end
        authority, path = remainder[:end], remainder[end:]
        if "@" in authority:
            authority = "***@" + authority.rpartition("@")[2]
        rest = f"{scheme}://{authority}{path}"
    shown = rest
    if question:
        shown += "?" + _mask_query(query)
    if hash_:
        shown += "#" + _mask_query(fragment)
    return shown


def mask_urls(text: str) -> str:
    """``text`` (an error message, say) with every URL in it shown as ``mask_url`` shows it."""
    return _URL.sub(_mask_match, text) if "://" in text else text


def _mask_match(match: re.Match[str]) -> str:
    url = match.group()
    bare = url.rstrip(".,;:!?)]}")  # punctuation after a URL in prose is not part of it
    return mask_url(bare) + url[len(bare):]


def _mask_query(query: str) -> str:
    masked = []
    for piece in query.split("&"):
        name, equals, value = piece.partition("=")
        if not equals:  # a bare word: could be a key on its own
            masked.append("***" if name and not _TEMPLATE.match(name) else name)
        elif not value or _TEMPLATE.match(value):
            masked.append(piece)
        else:
            masked.append(f"{name}=***")
    return "&".join(masked)


_TEMPLATE = re.compile(r"^\{[a-z_]+\}$")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


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
    # Unknown keys first: `url = …` for `base_url = …` must be named as the typo it is, not reported as
    # "not configured".
    known = set(SourceConfig.__dataclass_fields__) - {"name"}
    unknown = set(section) - known
    if unknown:
        from ..config import _suggest

        first = sorted(unknown)[0]
        raise Invalid(f"source {name}: unknown settings {', '.join(sorted(unknown))}{_suggest(first, known)}",
                      code="source_invalid")
    base_url = _env_url(name) or section.pop("base_url", None)
    section.pop("base_url", None)
    if not base_url:
        raise Invalid(f"source {name} is not configured: add [sources.{name}] with base_url to workctl.toml "
                      f"or set WORKCTL_SOURCE_{name.upper()}_URL", code="source_not_configured")
    _check_url(name, str(base_url))
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
    _check_numbers(config)
    low, high = MAX_BODY_BYTES_RANGE
    body = config.max_body_bytes
    if isinstance(body, bool) or not isinstance(body, int) or not low <= body <= high:
        raise Invalid(f"source {name}: max_body_bytes must be an integer from {low} to {high} "
                      f"(default {DEFAULT_MAX_BODY_BYTES}, 32 MiB)", code="source_invalid")
    return config


def _check_url(name: str, url: str) -> None:
    if not url.isprintable() or any(c.isspace() for c in url):
        raise Invalid(f"source {name}: base_url holds spaces or control characters; percent-encode them",
                      code="source_invalid")
    if not url.startswith(("http://", "https://")):
        raise Invalid(f"source {name}: base_url must start with http:// or https://", code="source_invalid")


MAX_COUNT = 1_000_000  # burst, concurrency and attempts: more is a typo (threads and retries are real costs)


def _check_numbers(config: SourceConfig) -> None:
    """Every number finite and within a range (TOML has inf and nan: an infinite timeout is no deadline,
    nan passes every comparison, and 1e300 seconds overflows a deadline)."""
    name = config.name
    for number in ("timeout", "rate_limit", "backoff_base", "backoff_cap", "retry_after_cap"):
        value = getattr(config, number)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= MAX_SECONDS:
            raise Invalid(f"source {name}: {number} must be a finite number from 0 to {MAX_SECONDS}",
                          code="source_invalid")
    if not config.timeout > 0:  # the timeout is each request's deadline: 0 would fail every request at once
        raise Invalid(f"source {name}: timeout must be a number of seconds > 0", code="source_invalid")
    for count in ("burst", "concurrency", "max_attempts"):
        value = getattr(config, count)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
            raise Invalid(f"source {name}: {count} must be an integer from 1 to {MAX_COUNT}", code="source_invalid")
