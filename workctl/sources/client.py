"""The HTTP client of one source, on httpx: auth, keep-alive, a shared token bucket and concurrency
cap, retries with full-jitter exponential backoff, Retry-After, and secrets redacted from every error.

Everything from the source is bounded, and every failure ends as a classified ``UserOutcome``:

    each request has a deadline (the source's ``timeout``) covering connect, headers and body; a
        source that drips bytes is cut off when it passes, as ``timeout``
    the body is streamed and decompressed here, at most ``max_body_bytes`` of it (after
        decompression, so a gzip bomb stops at the cap): more is ``too_large``
    the body is read by ``workctl.strictjson``: not JSON at all is ``malformed`` (retried: a body cut
        short is usually transient); JSON that breaks a rule (not UTF-8, NaN, an integer beyond 64
        bits, 1e400, nesting deeper than 64) is ``bad_response``, not retried
    a 3xx (but 304 to a delta request) is ``redirect``: never followed, never taken as data
    ``Retry-After`` counts only as ASCII digits (up to 10) or an HTTP date in the future
    anything else the response causes (a bug included) is ``bad_response`` with the exception's type

Retried: 408, 425, 429, 500, 502, 503, 504, timeouts, connection errors, protocol errors and
malformed JSON. Other 4xx fail that user at once with the status in the error. A Retry-After longer
than ``retry_after_cap`` fails the user as ``rate_limited`` instead of hanging the run.

Time is injected (``clock`` for the bucket, ``sleep`` for every wait, ``wall`` for HTTP dates), so
tests observe each wait instead of sleeping through it. The request deadline is real time
(``time.monotonic``): it is measured against real sockets.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, quote, quote_plus, urlencode

import httpcore
import httpx

from .. import strictjson
from . import fieldmap
from .config import SourceConfig, mask_url, mask_urls

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Failures that are the source's (or the network's), not the batch's: a batch whose users all failed with
# one of these is released as source_unavailable without spending an attempt (agents/sync).
TRANSPORT_CLASSES = frozenset({"connection", "timeout", "server_error"})
NOT_MODIFIED = object()  # get_json's answer to a 304 (delta sync: the user did not change)
# Failures of the path to the source, not of the item: the source was down, slow or overloaded for
# every user alike, and the same batch will most likely succeed once it is back. Spending an item's
# attempts on these turns an outage into permanently failed items. Every other class (not_found,
# auth, http_4xx, redirect, malformed, bad_response, too_large, rate_limited, http_304) is an answer
# the source gave about this request, which a retry of the item alone would get again.
TRANSPORT_CLASSES = frozenset({"connection", "timeout", "server_error"})
_DRAIN_BYTES = 64 * 1024  # an error body up to this size is read (and dropped) to keep the connection
_INFLATE_STEP = 256 * 1024  # decompressed bytes per zlib call: the most a single step can overshoot
_log = logging.getLogger("workctl.sources")
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
    """Replaces every form a secret takes in text: raw, as repr and bytes repr show it (an httpx or h11
    error quoting a header), JSON-escaped, URL-encoded (urllib's and httpx's, either hex case), base64
    alone and inside Basic auth's ``base64(user:secret)``."""

    def __init__(self, secrets: Iterable[str | None], *, basic_user: str | None = None):
        forms: set[str] = set()
        for secret in (s for s in secrets if s):
            forms.update(_forms(secret))
            if basic_user is not None:
                forms.add(base64.b64encode(f"{basic_user}:{secret}".encode()).decode())
        self.secrets = sorted((f for f in forms if f), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


def _forms(secret: str) -> set[str]:
    encoded = [quote(secret, safe=""), quote(secret), quote_plus(secret, safe=""), quote_plus(secret),
               str(httpx.QueryParams({"k": secret}))[2:]]
    forms = {secret, repr(secret)[1:-1], repr(secret.encode())[2:-1], json.dumps(secret)[1:-1],
             json.dumps(secret, ensure_ascii=False)[1:-1], base64.b64encode(secret.encode()).decode(), *encoded}
    forms.update(_lower_hex(e) for e in encoded if "%" in e)
    return forms


def _lower_hex(text: str) -> str:
    parts = text.split("%")
    return parts[0] + "".join("%" + p[:2].lower() + p[2:] for p in parts[1:])


# -- the request deadline ----------------------------------------------------------------------------
# httpx's timeouts are per socket operation: a source that sends a byte every 0.9 s never trips a 1 s
# read timeout and can hold a request for hours (headers included: h11 accepts 16 KB of them). The
# client sets a deadline per request in a thread-local; this network backend shortens every connect,
# read and write to the time left and fails the one that would start after it.
_deadline = threading.local()


def _time_left(timeout: float | None, error: type[Exception]) -> float | None:
    deadline = getattr(_deadline, "at", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname,
                                                      _time_left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend):
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_tcp(host, port, _time_left(timeout, httpcore.ConnectTimeout),
                                                         local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(path, _time_left(timeout, httpcore.ConnectTimeout),
                                                                 socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _tls_for(base_url: str) -> Any:
    """What the transport verifies TLS with. An ``https`` source: the default (the CA bundle, about 0.25 s
    to load). A plain ``http`` source never does TLS (paths are relative to its base URL and redirects
    are not followed), so it gets a context that verifies against no CA at all: it costs nothing to make,
    and should an https URL ever reach it, verification fails closed."""
    if base_url.lower().startswith("https:"):
        return True
    import ssl

    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED: on by default


def _deadline_transport(limits: httpx.Limits, base_url: str = "https:") -> tuple[httpx.HTTPTransport, bool]:
    """httpx's own transport with the deadline backend underneath; (transport, installed).

    httpx has no public way to pass httpcore a network backend, so this sets the pool's attribute.
    Should a later httpx lay out its transport differently, the deadline still holds between body
    chunks and every read is capped at the time left; only a source dripping its headers could
    then outlast it (``tests/test_hostile_sources.py`` fails if that happens)."""
    transport = httpx.HTTPTransport(limits=limits, verify=_tls_for(base_url))
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(pool, httpcore.ConnectionPool) and isinstance(backend, httpcore.NetworkBackend):
        pool._network_backend = _DeadlineBackend(backend)
        return transport, True
    return transport, False


class _Inflater:
    """Content-Encoding gzip or deflate, decoded here rather than by httpx, whose decoders inflate a
    whole network chunk at once (64 KB of zeros is 64 MB): at most ``_INFLATE_STEP`` per call."""

    def __init__(self, encoding: str):
        self.encoding = encoding
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS)
        self._started = False

    def feed(self, data: bytes, body: bytearray, limit: int) -> None:
        """Append what ``data`` inflates to onto ``body``, stopping once it is past ``limit``."""
        while data and not self._zlib.eof and len(body) <= limit:
            try:
                body += self._zlib.decompress(data, min(_INFLATE_STEP, limit + 1 - len(body)))
            except zlib.error:
                if self._started or self.encoding != "deflate":
                    raise
                # "deflate" is zlib-wrapped by the standard and raw by some servers: try raw once.
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                continue
            self._started = True
            data = self._zlib.unconsumed_tail

    def finish(self, body: bytearray) -> None:
        body += self._zlib.flush()


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
        # gzip and deflate only: they are what _Inflater bounds (httpx would also offer br and zstd
        # when their packages happen to be installed, and decode them unbounded).
        headers = {"Accept": "application/json", "Accept-Encoding": "gzip, deflate", "User-Agent": "workctl"}
        params: dict[str, str] = {}
        auth: httpx.Auth | None = None
        username = None
        if config.auth == "bearer":
            headers["Authorization"] = f"Bearer {secret}"
        elif config.auth == "header":
            headers[config.auth_header] = str(secret)
        elif config.auth == "query":
            params[config.auth_param] = str(secret)
        elif config.auth == "basic":
            username = config.username()
            auth = httpx.BasicAuth(username, str(secret))
        self.redact = Redactor([secret], basic_user=username)
        limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
        self.deadline_backend = False  # whether even a source dripping its headers is cut off at the deadline
        if transport is None:
            transport, self.deadline_backend = _deadline_transport(limits, config.base_url)
        self.http = httpx.Client(base_url=config.base_url, headers=headers, params=params, auth=auth,
                                 timeout=config.timeout, limits=limits, transport=transport, follow_redirects=False)
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

    def _where(self, path: str) -> str:
        return f"GET {self.config.name}{mask_url(path)}"

    def _once(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        waited = self.bucket.acquire()
        if waited and self.on_wait:
            self.on_wait(self.config.name, "rate limit", waited)
        with self.slots:
            self.stats.count(request=True)
            body = self._exchange(path, params)
        if body is NOT_MODIFIED:
            return body
        # Parsed outside the slot: the connection is back in the pool and CPU work holds no slot.
        return self._parse(body, path)

    def _exchange(self, path: str, params: list[tuple[str, str]] | None) -> Any:
        """One GET: NOT_MODIFIED, or the (decompressed, size-checked) body; _Failure otherwise."""
        _deadline.at = deadline = time.monotonic() + self.config.timeout
        try:
            with self.http.stream("GET", path, params=params) as response:  # type: ignore[arg-type]
                return self._answer(response, path, deadline)
        except httpx.TimeoutException as exc:
            raise _Failure("timeout", f"{self._where(path)}: no complete answer within the {self.config.timeout:g} s "
                           f"timeout ({type(exc).__name__})", retryable=True) from None
        except (httpx.TransportError, httpx.StreamError) as exc:
            detail = self.redact(mask_urls(f"{type(exc).__name__}: {exc}"))[:300]
            raise _Failure("connection", f"{self._where(path)}: {detail}", retryable=True) from None
        except _Failure:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a response causes ends classified, never a crash
            _log.debug("unexpected error reading %s", self._where(path), exc_info=True)
            raise _Failure("bad_response", f"{self._where(path)}: unexpected {type(exc).__name__} while reading the "
                           "response", retryable=False) from None
        finally:
            _deadline.at = None

    def _answer(self, response: httpx.Response, path: str, deadline: float) -> Any:
        status = response.status_code
        if status == 304:  # delta sync: "not modified since" (only asked for with a since parameter)
            return NOT_MODIFIED
        if 300 <= status < 400:
            # Never followed and never data: a login page's JSON once replaced users' e-mail addresses.
            location = response.headers.get("Location", "")
            target = f" to {_printable(mask_url(location))[:120]}" if location else ""
            raise _Failure("redirect", f"{self._where(path)}: HTTP {status} redirect{target}; workctl does not follow "
                           "redirects: set base_url to the final address (a login page means the credentials "
                           "were not accepted)", retryable=False)
        if status >= 400:
            retryable = status in RETRY_STATUSES
            error_class = ("rate_limited" if status == 429 else "server_error" if status >= 500
                           else "not_found" if status == 404 else "auth" if status in (401, 403)
                           else f"http_{status}")
            retry_after = self._retry_after(response) if retryable else None
            self._drain(response, deadline)
            raise _Failure(error_class, f"{self._where(path)}: HTTP {status}", retryable=retryable,
                           retry_after=retry_after)
        return self._read_body(response, path, deadline)

    def _read_body(self, response: httpx.Response, path: str, deadline: float) -> bytearray:
        limit = self.config.max_body_bytes
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            raise _Failure("bad_response", f"{self._where(path)}: response uses Content-Encoding "
                           f"{_printable(encoding)[:40]!r}, which workctl did not ask for (it accepts gzip and deflate)",
                           retryable=False)
        inflater = _Inflater(encoding) if encoding not in ("", "identity") else None
        declared = _ascii_int(response.headers.get("Content-Length"), 18)
        if inflater is None and declared is not None and declared > limit:
            raise self._too_large(path, f"announces {declared} bytes (Content-Length), more than")
        body = bytearray()
        try:
            for chunk in response.iter_raw():
                if inflater:
                    inflater.feed(chunk, body, limit)
                else:
                    body += chunk
                if len(body) > limit:
                    raise self._too_large(path, "is larger than")
                if time.monotonic() > deadline:  # also without the deadline backend (an injected transport)
                    raise httpx.ReadTimeout("the request's deadline passed")
            if inflater:
                inflater.finish(body)
        except zlib.error:
            raise _Failure("bad_response", f"{self._where(path)}: response body is not valid {encoding} data",
                           retryable=False) from None
        if len(body) > limit:
            raise self._too_large(path, "is larger than")
        return body

    def _too_large(self, path: str, how: str) -> _Failure:
        return _Failure("too_large", f"{self._where(path)}: response body {how} max_body_bytes "
                        f"({self.config.max_body_bytes}); raise max_body_bytes for source {self.config.name} if "
                        "the source really answers with that much (or use smaller batches)", retryable=False)

    def _drain(self, response: httpx.Response, deadline: float) -> None:
        """Read a small error body to the end, so the connection can be reused; give up on a big one."""
        read = 0
        try:
            for chunk in response.iter_raw():
                read += len(chunk)
                if read > _DRAIN_BYTES or time.monotonic() > deadline:
                    return
        except (httpx.TransportError, httpx.StreamError):
            return  # the status already says what happened; the connection is closed instead of reused

    def _parse(self, body: bytearray, path: str) -> Any:
        try:
            return strictjson.loads(body, max_bytes=self.config.max_body_bytes, what="response body")
        except strictjson.StrictJsonError as exc:
            if exc.kind == "syntax":  # a body cut short, usually: worth another attempt
                raise _Failure("malformed", f"{self._where(path)}: response is not valid JSON ({exc.reason} at "
                               f"{exc.path})", retryable=True) from None
            raise _Failure("bad_response", f"{self._where(path)}: response body {exc.reason} at "
                           f"{_printable(exc.path)[:200]}; the source sent JSON workctl does not accept",
                           retryable=False) from None
        except Exception as exc:  # noqa: BLE001 - MemoryError on a body of empty containers, say
            _log.debug("unexpected error parsing %s", self._where(path), exc_info=True)
            raise _Failure("bad_response", f"{self._where(path)}: unexpected {type(exc).__name__} while parsing the "
                           "response", retryable=False) from None

    def _retry_after(self, response: httpx.Response) -> float | None:
        """Seconds to wait, from ASCII digits or a future HTTP date; None for anything else (then the
        usual backoff applies). ``'²'.isdigit()`` is True, 5,000 digits parse slowly and overflow a
        float, and a date in the past (1900) says nothing: all treated as absent."""
        value = (response.headers.get("Retry-After") or "").strip()
        if not value or len(value) > 64:
            return None
        seconds = _ascii_int(value, 10)
        if seconds is not None:
            return float(seconds)
        try:
            when = parsedate_to_datetime(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            wait = (when - self.wall()).total_seconds()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
        return wait if wait >= 0 else None

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

    def _unexpected(self, exc: Exception) -> tuple[str, str]:
        _log.debug("unexpected error handling a response of %s", self.config.name, exc_info=True)
        return "bad_response", f"GET {self.config.name}: unexpected {type(exc).__name__} while handling the response"

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
        except Exception as exc:  # noqa: BLE001 - a source must not be able to crash the run
            error_class, message = self._unexpected(exc)
            return UserOutcome(user_id, error_class=error_class, error=message)

    def fetch_batch(self, user_ids: list[int], *, workers: int | None = None,
                    field_map: dict[str, str] | None = None, since: str | None = None) -> list[UserOutcome]:
        """Every user of the batch, in order: one bulk request if configured, else parallel GETs.

        ``field_map`` is the order's map (over the source's); ``since`` makes it a delta fetch.
        Never raises for anything the source does: each user gets data, unchanged, or an error class."""
        if self.config.bulk_path:
            try:
                return self._fetch_bulk(user_ids, field_map=field_map, since=since)
            except Exception as exc:  # noqa: BLE001 - a source must not be able to crash the run
                error_class, message = self._unexpected(exc)
                return [UserOutcome(u, error_class=error_class, error=message) for u in user_ids]
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
        # Only ints and strings can be ids (a list as "id" would not even hash); others match no user.
        by_id = {r.get(self.config.id_field): r for r in records
                 if isinstance(r, dict) and isinstance(r.get(self.config.id_field), (int, str))}
        if delta:
            # A delta response holds only changed users. The rest are unchanged, except users the source
            # lists as "missing"; when it also lists "unchanged", a user in neither list is not found.
            top = body if isinstance(body, dict) else {}
            missing = _id_set(top.get("missing")) or set()
            unchanged = _id_set(top.get("unchanged"))
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


def _id_set(listed: Any) -> set[Any] | None:
    """A list of ids from a response as a set (ints and strings only); None when it is not a list."""
    if not isinstance(listed, list):
        return None
    return {i for i in listed if isinstance(i, (int, str))}


def _ascii_int(value: str | None, max_digits: int) -> int | None:
    """``value`` as an int if it is 1..max_digits ASCII digits, else None (``str.isdigit`` alone also
    accepts '²' and other Unicode digits that int() and float() then refuse)."""
    if value and len(value) <= max_digits and value.isascii() and value.isdigit():
        return int(value)
    return None


def _printable(text: str) -> str:
    """``text`` with anything unprintable escaped, for a message that quotes the source."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
