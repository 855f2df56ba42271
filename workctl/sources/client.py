"""The HTTP client of one source, on httpx: auth, keep-alive, a shared token bucket and concurrency
cap, retries with full-jitter exponential backoff, Retry-After, and secrets redacted from every error.

Retried: 408, 425, 429, 500, 502, 503, 504, timeouts, connection errors, protocol errors and
malformed JSON. Other 4xx fail that user at once with the status in the error. A Retry-After longer
than ``retry_after_cap`` fails the user as ``rate_limited`` instead of hanging the run.

Time is injected (``clock`` for the bucket, ``sleep`` for every wait, ``wall`` for HTTP dates), so
tests observe each wait instead of sleeping through it.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl, urlencode
from typing import Any, Callable, Iterable

import httpx

from ..types.user_data_sync import fieldmap
from .config import SourceConfig

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Failures that are the source's (or the network's), not the batch's: a batch whose users all failed with
# one of these is released as source_unavailable without spending an attempt (agents/sync).
TRANSPORT_CLASSES = frozenset({"connection", "timeout", "server_error"})
NOT_MODIFIED = object()  # get_json's answer to a 304 (delta sync: the user did not change)
logging.getLogger("httpx").setLevel(logging.WARNING)  # httpx logs full URLs (secrets) at INFO
logging.getLogger("httpcore").setLevel(logging.WARNING)

WaitListener = Callable[[str, str, float], None]  # (source, reason, seconds)


@dataclass
class UserOutcome:
    user_id: int
    data: dict[str, Any] | None = None
    error_class: str | None = None
    error: str | None = None
    unchanged: bool = False  # delta sync: the source did not change this user since `since`

    @property
    def ok(self) -> bool:
        return self.data is not None


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    waits: list[tuple[str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, *, request: bool = False, retry: bool = False) -> None:
        with self.lock:
            self.requests += request
            self.retries += retry


class TokenBucket:
    """``rate`` requests per second with bursts of ``burst``, shared by every worker of the process."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rate, self.capacity = rate, max(1, burst)
        self.tokens = float(self.capacity)
        self.clock, self.sleep = clock, sleep
        self.updated = clock()
        self.lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, waiting as needed; return the seconds waited."""
        if not self.rate:
            return 0.0
        waited = 0.0
        while True:
            with self.lock:
                now = self.clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1 - 1e-9:  # tolerance: float refills can land a hair below 1 forever
                    self.tokens = max(0.0, self.tokens - 1)
                    return waited
                wait = (1 - self.tokens) / self.rate
            self.sleep(wait)
            waited += wait


class _Failure(Exception):
    def __init__(self, error_class: str, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.error_class, self.message = error_class, message
        self.retryable, self.retry_after = retryable, retry_after


class Redactor:
    def __init__(self, secrets: Iterable[str | None]):
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class SourceClient:
    def __init__(self, config: SourceConfig, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], datetime] | None = None,
                 rng: Callable[[], float] = random.random, on_wait: WaitListener | None = None,
                 transport: httpx.BaseTransport | None = None):
        self.config = config
        self.sleep, self.rng = sleep, rng
        self.wall = wall or (lambda: datetime.now(timezone.utc))
        self.on_wait = on_wait
        self.stats = ClientStats()
        secret = config.secret()
        self.redact = Redactor([secret])
        headers = {"Accept": "application/json", "User-Agent": "workctl"}
        params: dict[str, str] = {}
        auth: httpx.Auth | None = None
        if config.auth == "bearer":
            headers["Authorization"] = f"Bearer {secret}"
        elif config.auth == "header":
            headers[config.auth_header] = str(secret)
        elif config.auth == "query":
            params[config.auth_param] = str(secret)
        elif config.auth == "basic":
            auth = httpx.BasicAuth(config.username(), str(secret))
        limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
        self.http = httpx.Client(base_url=config.base_url, headers=headers, params=params, auth=auth,
                                 timeout=config.timeout, limits=limits, transport=transport)
        self.bucket = TokenBucket(config.rate_limit, config.burst, clock=clock, sleep=sleep)
        self.slots = threading.Semaphore(config.concurrency)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SourceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request, with retries ---------------------------------------------------------------
    def get_json(self, path: str) -> Any:
        """GET ``path`` with the retry policy; raise _Failure when it gives up."""
        # Hand the query to httpx as params: it validates a raw URL character by character, which
        # for a bulk request of 50 ids cost more CPU than the rest of the batch's work together.
        path, _, query = path.partition("?")
        params = parse_qsl(query, keep_blank_values=True) if query else None
        attempts = self.config.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return self._once(path, params)
            except _Failure as failure:
                if not failure.retryable or attempt == attempts:
                    if failure.retryable:
                        failure.message += f" (gave up after {attempts} attempts)"
                    raise
                wait = self._delay(attempt, failure)
                self.stats.count(retry=True)
                self._wait(f"{failure.message}: retry {attempt}/{attempts - 1} in {wait:.1f} s", wait)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, failure: _Failure) -> float:
        if failure.retry_after is not None:
            if failure.retry_after > self.config.retry_after_cap:
                raise _Failure("rate_limited", f"{failure.message}; Retry-After {failure.retry_after:.0f} s "
                               f"exceeds the {self.config.retry_after_cap:.0f} s cap", retryable=False)
            return failure.retry_after
        # Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))].
        return self.rng() * min(self.config.backoff_cap, self.config.backoff_base * 2 ** (attempt - 1))

    def _wait(self, reason: str, seconds: float) -> None:
        with self.stats.lock:
            self.stats.waits.append((reason, seconds))
        if self.on_wait:
            self.on_wait(self.config.name, reason, seconds)
        self.sleep(seconds)

    def _once(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        waited = self.bucket.acquire()
        if waited and self.on_wait:
            self.on_wait(self.config.name, "rate limit", waited)
        where = f"GET {self.config.name}{path}"
        with self.slots:
            self.stats.count(request=True)
            try:
                response = self.http.get(path, params=params)
            except httpx.TimeoutException as exc:
                raise _Failure("timeout", f"{where}: timed out ({type(exc).__name__})", retryable=True) from None
            except (httpx.TransportError, httpx.StreamError) as exc:
                raise _Failure("connection", f"{where}: {self.redact(type(exc).__name__ + ': ' + str(exc))}",
                               retryable=True) from None
        status = response.status_code
        if status == 304:  # delta sync: "not modified since" (only asked for with a since parameter)
            return NOT_MODIFIED
        if status >= 400:
            retryable = status in RETRY_STATUSES
            error_class = ("rate_limited" if status == 429 else "server_error" if status >= 500
                           else "not_found" if status == 404 else "auth" if status in (401, 403)
                           else f"http_{status}")
            raise _Failure(error_class, f"{where}: HTTP {status}", retryable=retryable,
                           retry_after=self._retry_after(response) if retryable else None)
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Failure("malformed", f"{where}: response is not valid JSON", retryable=True) from None

    def _retry_after(self, response: httpx.Response) -> float | None:
        value = response.headers.get("Retry-After")
        if not value:
            return None
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, (when - self.wall()).total_seconds())

    # -- users -------------------------------------------------------------------------------------
    def _extract(self, body: Any) -> Any:
        for key in [k for k in self.config.data_path.split(".") if k]:
            if not isinstance(body, dict) or key not in body:
                raise _Failure("malformed", f"response has no '{self.config.data_path}'", retryable=False)
            body = body[key]
        return body

    def _mapped(self, record: dict[str, Any], order_map: dict[str, str] | None = None) -> dict[str, Any]:
        """External names to local columns: the source's field_map, then the order's (which wins)."""
        return fieldmap.apply(record, self.config.field_map, order_map)

    def _delta(self, path: str, since: str | None) -> str:
        """``path`` with the source's delta parameter when a delta fetch has a ``since``."""
        if not since or not self.config.delta_param:
            return path
        return f"{path}{'&' if '?' in path else '?'}{urlencode({self.config.delta_param: since})}"

    def fetch_user(self, user_id: int, *, field_map: dict[str, str] | None = None,
                   since: str | None = None) -> UserOutcome:
        try:
            body = self.get_json(self._delta(self.config.user_path.format(user_id=user_id), since))
            if body is NOT_MODIFIED:
                if since and self.config.delta_param:
                    return UserOutcome(user_id, unchanged=True)
                raise _Failure("http_304", f"GET {self.config.name}: HTTP 304 to a request that was not "
                               "conditional", retryable=False)
            record = self._extract(body)
            if not isinstance(record, dict):
                raise _Failure("malformed", "user record is not an object", retryable=False)
            return UserOutcome(user_id, data=self._mapped(record, field_map))
        except _Failure as failure:
            return UserOutcome(user_id, error_class=failure.error_class, error=self.redact(failure.message))

    def fetch_batch(self, user_ids: list[int], *, workers: int | None = None,
                    field_map: dict[str, str] | None = None, since: str | None = None) -> list[UserOutcome]:
        """Every user of the batch, in order: one bulk request if configured, else parallel GETs.

        ``field_map`` is the order's map (over the source's); ``since`` makes it a delta fetch."""
        if self.config.bulk_path:
            return self._fetch_bulk(user_ids, field_map=field_map, since=since)
        with ThreadPoolExecutor(max_workers=min(workers or self.config.concurrency, len(user_ids) or 1)) as pool:
            return list(pool.map(lambda u: self.fetch_user(u, field_map=field_map, since=since), user_ids))

    def _fetch_bulk(self, user_ids: list[int], *, field_map: dict[str, str] | None = None,
                    since: str | None = None) -> list[UserOutcome]:
        path = self.config.bulk_path.format(ids=",".join(str(u) for u in user_ids))  # type: ignore[union-attr]
        delta = bool(since and self.config.delta_param)
        try:
            body = self.get_json(self._delta(path, since))
            if body is NOT_MODIFIED:
                if not delta:
                    raise _Failure("http_304", f"GET {self.config.name}: HTTP 304 to a request that was not "
                                   "conditional", retryable=False)
                return [UserOutcome(u, unchanged=True) for u in user_ids]
            records = self._extract(body)
            if not isinstance(records, list):
                raise _Failure("malformed", "bulk response is not a list of users", retryable=False)
        except _Failure as failure:
            message = self.redact(failure.message)
            return [UserOutcome(u, error_class=failure.error_class, error=message) for u in user_ids]
        by_id = {r.get(self.config.id_field): r for r in records if isinstance(r, dict)}
        if delta:
            # A delta response holds only changed users. The rest are unchanged, except users the source
            # lists as "missing"; when it also lists "unchanged", a user in neither list is not found.
            top = body if isinstance(body, dict) else {}
            missing = set(top.get("missing") or ()) if isinstance(top.get("missing"), list) else set()
            listed = top.get("unchanged")
            unchanged = set(listed) if isinstance(listed, list) else None
        outcomes = []
        for u in user_ids:
            if u in by_id:
                outcomes.append(UserOutcome(u, data=self._mapped(by_id[u], field_map)))
            elif delta and u not in missing and (unchanged is None or u in unchanged):
                outcomes.append(UserOutcome(u, unchanged=True))
            else:
                outcomes.append(UserOutcome(u, error_class="not_found",
                                            error=f"user {u} not found in {self.config.name}"))
        return outcomes
