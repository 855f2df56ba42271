"""A real HTTP server that plays crm, analytics and billing, with fault injection.

It is the embedded default behind ``workctl demo`` and the real server behind the sync tests (no
mocked transport). Data is deterministic for any user id, so a test can predict every value.

Routes, for SOURCE in crm | analytics | billing:
    GET /SOURCE/users/{id}           -> {"data": {...user...}}           (404 for unknown users)
    GET /SOURCE/users?ids=1,2,3      -> {"data": [{...}, ...], "missing": [ids not found]}

Delta sync: every user has a deterministic ``updated_at`` (between 2026-01-01 and 2026-03-02, see
``updated_at``). With ``?updated_since=<ISO date-time>`` the per-user route answers 304 (no body)
for a user not updated after it, and the bulk route returns only the users updated after it, with
the others listed in ``"unchanged"``. A malformed ``updated_since`` is a 400.
    GET /health                      -> {"ok": true}

Faults (all off by default; a seeded RNG keeps runs repeatable):
    fail_rate      share of requests answered 500
    fail_first     the first N requests answered 503
    throttle_first the first N requests (after fail_first) answered 429 with Retry-After
    rate_limit     requests per second allowed; beyond it 429 with Retry-After
    latency        seconds added to every response
    slow_rate      share of requests delayed by a further slow_latency seconds (timeouts, slow answers)
    burst_every    5xx bursts: of every burst_every requests, the first burst_length answered 503
    malformed_rate share of responses with a truncated JSON body
    drop_rate      share of connections closed without any response
    missing        user ids that do not exist (404 / listed in "missing"); ids > max_user_id too
    token          when set, requests need "Authorization: Bearer <token>" (401 otherwise)
    hostile        one of HOSTILE: every users route answers with that attack instead (see below)
    drip_interval  seconds between bytes for the drip modes
    bomb_bytes     what the gzip bomb (and the oversized body) inflate to

Hostile modes (after auth, instead of the users route's answer; ``retry_after`` with ``throttle_first``
covers garbage Retry-After values). Each poisons every record's ``email``, so a lax client would
write it into the users table:
    redirect       302 to a login page, with a JSON body shaped exactly like user data
    gzip_bomb      ~0.25 MB of gzip that inflates to bomb_bytes of zeros (Content-Encoding: gzip)
    huge_body      bomb_bytes of zeros, no Content-Length, read until the server closes
    drip_body      headers at once, then the body one byte per drip_interval
    drip_headers   the status line, then a header one byte per drip_interval
    huge_int       a 5,000-digit integer           big_int     2**64 (beyond 64 bits)
    huge_float     1e400 (inf to a lax parser)     nan         NaN
    deep           JSON nested 100,000 deep        bad_utf8    bytes that are not UTF-8
"""

from __future__ import annotations

import functools
import json
import random
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SOURCES = ("crm", "analytics", "billing")
_COMPANIES = ("Acme Corp", "Widget Inc", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries")
_FIRST = ("Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances")
_LAST = ("Lovelace", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie", "Allen")
_PLANS = ("free", "pro", "enterprise")
_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
HOSTILE = ("redirect", "gzip_bomb", "huge_body", "drip_body", "drip_headers", "huge_int", "big_int", "huge_float",
           "nan", "deep", "bad_utf8")
# What replaces the poisoned field's JSON value in each body-poisoning mode.
_POISON = {"huge_int": b"1" * 5000, "big_int": str(2**64).encode(), "huge_float": b"1e400", "nan": b"NaN",
           "deep": b"[" * 100_000 + b"]" * 100_000, "bad_utf8": b'"\xff\xfe@example.com"'}
_MARK = "__workctl_poison__"


def updated_at(source: str, user_id: int) -> datetime:
    """When the source last changed a user: deterministic, spread over 60 days from 2026-01-01."""
    offset = SOURCES.index(source) * 1009 if source in SOURCES else 0
    return _EPOCH + timedelta(minutes=(user_id * 7919 + offset) % (60 * 24 * 60))


def sample_user(source: str, user_id: int) -> dict[str, Any]:
    """The deterministic record a source holds for a user (plus its ``updated_at``, see above)."""
    record = _sample_record(source, user_id)
    record["updated_at"] = updated_at(source, user_id).strftime("%Y-%m-%dT%H:%M:%SZ")
    return record


def _sample_record(source: str, user_id: int) -> dict[str, Any]:
    if source == "crm":
        return {"id": user_id, "email": f"user{user_id}@example.com", "phone": f"+1-555-{user_id:07d}",
                "company": _COMPANIES[user_id % len(_COMPANIES)],
                "name": f"{_FIRST[user_id % len(_FIRST)]} {_LAST[(user_id // len(_FIRST)) % len(_LAST)]}"}
    if source == "analytics":
        seen = _EPOCH + timedelta(hours=(user_id * 37) % 8000)
        return {"id": user_id, "last_seen": seen.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "sessions": (user_id * 7) % 500, "plan": _PLANS[user_id % len(_PLANS)]}
    if source == "billing":
        plan = _PLANS[user_id % len(_PLANS)]
        mrr = {"free": 0.0, "pro": 49.0, "enterprise": 499.0}[plan] + (user_id % 10)
        return {"id": user_id, "plan": plan, "mrr": mrr, "currency": ("USD", "EUR", "GBP")[user_id % 3]}
    raise KeyError(source)


@functools.lru_cache(maxsize=4)
def gzip_bomb(inflated: int) -> bytes:
    """gzip of ``inflated`` zero bytes, compressed as it streams (1 MiB at a time): ~1/1000 the size."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(1024 * 1024)
    parts = [compressor.compress(block) for _ in range(inflated // len(block))]
    parts.append(compressor.compress(bytes(inflated % len(block))))
    parts.append(compressor.flush())
    return b"".join(parts)


@dataclass
class Faults:
    fail_rate: float = 0.0
    fail_first: int = 0
    throttle_first: int = 0
    rate_limit: float = 0.0
    retry_after: str = "1"
    latency: float = 0.0
    slow_rate: float = 0.0
    slow_latency: float = 0.0
    burst_every: int = 0
    burst_length: int = 0
    malformed_rate: float = 0.0
    drop_rate: float = 0.0
    missing: frozenset[int] = frozenset()
    max_user_id: int = 10_000_000
    token: str | None = None
    seed: int = 1234
    hostile: str | None = None  # one of HOSTILE; may be changed while the server runs
    drip_interval: float = 0.7
    bomb_bytes: int = 256 * 1024 * 1024


@dataclass
class RequestLog:
    """What the server saw: for tests that count requests, measure rates or check headers."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    entries: list[dict[str, Any]] = field(default_factory=list)

    def add(self, **entry: Any) -> None:
        with self.lock:
            self.entries.append(entry)

    def __len__(self) -> int:
        return len(self.entries)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as real APIs do

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; without NODELAY, Nagle + delayed ACK add ~40 ms to
        # every keep-alive response, which no real API has.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests and demos own the terminal
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.enter()
        try:
            self._get()
        finally:
            self.server.leave()

    def _get(self) -> None:
        srv = self.server
        number, rng_value = srv.next_request()
        now = time.monotonic()
        parts = urlsplit(self.path)
        srv.log.add(n=number, path=self.path, at=now, auth=self.headers.get("Authorization"),
                    headers=dict(self.headers.items()))
        if self._fault(number, rng_value, now):
            return
        malformed = bool(srv.faults.malformed_rate) and rng_value() < srv.faults.malformed_rate
        segments = [s for s in parts.path.split("/") if s]
        if segments == ["health"]:
            return self._send(200, {"ok": True})
        if len(segments) < 2 or segments[0] not in SOURCES or segments[1] != "users":
            return self._send(404, {"error": f"no route {parts.path}"})
        self._users(segments, parse_qs(parts.query), malformed)

    def _fault(self, number: int, rng_value: Any, now: float) -> bool:
        """Answer with an injected fault (True), or leave the request to the routes (False)."""
        faults = self.server.faults
        if faults.latency:
            time.sleep(faults.latency)
        if faults.slow_rate and rng_value() < faults.slow_rate:
            time.sleep(faults.slow_latency)
        if faults.drop_rate and rng_value() < faults.drop_rate:
            self.close_connection = True
            self.connection.close()
            return True
        if faults.token and self.headers.get("Authorization") != f"Bearer {faults.token}":
            self._send(401, {"error": "unauthorized"})
        elif number <= faults.fail_first:
            self._send(503, {"error": "warming up"})
        elif faults.burst_every and (number - 1) % faults.burst_every < faults.burst_length:
            self._send(503, {"error": "overloaded (burst)"})
        elif (faults.fail_first < number <= faults.fail_first + faults.throttle_first
              or (faults.rate_limit and not self.server.admit(now))):
            self._send(429, {"error": "rate limited"}, headers={"Retry-After": faults.retry_after})
        elif faults.fail_rate and rng_value() < faults.fail_rate:
            self._send(500, {"error": "internal error"})
        else:
            return False
        return True

    def _users(self, segments: list[str], query: dict[str, list[str]], malformed: bool) -> None:
        source = segments[0]
        since = None
        if "updated_since" in query:  # delta sync
            try:
                since = datetime.fromisoformat(query["updated_since"][0].replace("Z", "+00:00"))
                if since.tzinfo is None:
                    raise ValueError("no time zone")
            except ValueError:
                return self._send(400, {"error": "updated_since must be an ISO-8601 date-time with a zone"})
        if len(segments) == 3:
            try:
                user_id = int(segments[2])
            except ValueError:
                return self._send(400, {"error": "user id must be an integer"})
            if not self._exists(user_id):
                return self._send(404, {"error": f"user {user_id} not found"})
            if self.server.faults.hostile:
                return self._hostile(source, [user_id], bulk=False)
            if since is not None and updated_at(source, user_id) <= since:
                return self._send_not_modified()
            return self._send(200, {"data": sample_user(source, user_id)}, malformed=malformed)
        try:
            ids = [int(x) for x in ",".join(query.get("ids", [])).split(",") if x]
        except ValueError:
            return self._send(400, {"error": "ids must be integers"})
        missing = [i for i in ids if not self._exists(i)]
        present = [i for i in ids if self._exists(i)]
        if self.server.faults.hostile:
            return self._hostile(source, present, bulk=True)
        if since is None:
            return self._send(200, {"data": [sample_user(source, i) for i in present], "missing": missing},
                              malformed=malformed)
        changed = [i for i in present if updated_at(source, i) > since]
        unchanged = [i for i in present if updated_at(source, i) <= since]
        return self._send(200, {"data": [sample_user(source, i) for i in changed], "missing": missing,
                                "unchanged": unchanged}, malformed=malformed)

    # -- hostile answers (Faults.hostile) ------------------------------------------------------------
    def _hostile(self, source: str, ids: list[int], *, bulk: bool) -> None:
        mode = self.server.faults.hostile
        records = [{**sample_user(source, i), "email": _MARK} for i in ids]
        document: Any = {"data": records, "missing": []} if bulk else {"data": records[0]}
        raw = json.dumps(document).encode()
        if mode in _POISON:
            return self._send_raw(200, raw.replace(json.dumps(_MARK).encode(), _POISON[mode]))
        raw = raw.replace(json.dumps(_MARK).encode(), b'"login@sso.example.com"')
        if mode == "redirect":
            return self._send_raw(302, raw, headers={"Location": "https://sso.example.com/login?next=%2Fusers"})
        if mode == "gzip_bomb":
            return self._send_raw(200, gzip_bomb(self.server.faults.bomb_bytes), headers={"Content-Encoding": "gzip"})
        if mode == "huge_body":
            return self._send_endless_zeros(self.server.faults.bomb_bytes)
        if mode == "drip_body":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            return self._drip(raw)
        if mode == "drip_headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            return self._drip(b"X-Drip: " + b"a" * 4000 + b"\r\n\r\n")
        raise ValueError(f"unknown hostile mode {mode!r} (one of {', '.join(HOSTILE)})")

    def _drip(self, data: bytes) -> None:
        """One byte per drip_interval, until done or the client hangs up (then a write fails)."""
        self.close_connection = True
        for i in range(len(data)):
            time.sleep(self.server.faults.drip_interval)
            self.wfile.write(data[i:i + 1])

    def _send_endless_zeros(self, size: int) -> None:
        # No Content-Length: the body runs until the server closes, so only the client's cap stops it.
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        block = bytes(64 * 1024)
        for _ in range(size // len(block)):
            self.wfile.write(block)

    def _send_not_modified(self) -> None:
        self.send_response(304)
        self.end_headers()

    def _exists(self, user_id: int) -> bool:
        faults = self.server.faults
        return 0 < user_id <= faults.max_user_id and user_id not in faults.missing

    def _send(self, status: int, body: Any, *, headers: dict[str, str] | None = None,
              malformed: bool = False) -> None:
        raw = json.dumps(body).encode()
        if malformed:
            raw = raw[: max(1, len(raw) // 2)]
        self._send_raw(status, raw, headers=headers)

    def _send_raw(self, status: int, raw: bytes, *, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        # A client that went away mid-response (a killed sync, a client timeout) is not a server error.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], faults: Faults):
        super().__init__(address, _Handler)
        self.faults = faults
        self.log = RequestLog()
        self._lock = threading.Lock()
        self._count = 0
        self._rng = random.Random(faults.seed)
        self._window: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def next_request(self) -> tuple[int, Any]:
        with self._lock:
            self._count += 1
            values = [self._rng.random() for _ in range(4)]
        it = iter(values)
        return self._count, lambda: next(it)

    def admit(self, now: float) -> bool:
        """Sliding one-second window: at most rate_limit requests per second are served."""
        with self._lock:
            self._window = [t for t in self._window if now - t < 1.0]
            if len(self._window) >= self.faults.rate_limit:
                return False
            self._window.append(now)
            return True


class SampleServer:
    """Run the sample source server on a thread: ``with SampleServer() as srv: srv.url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None):
        self.faults = faults or Faults()
        self._server = _Server((host, port), self.faults)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}"

    @property
    def log(self) -> RequestLog:
        return self._server.log

    @property
    def max_in_flight(self) -> int:
        """The most requests this server was handling at one moment."""
        return self._server.max_in_flight

    def start(self) -> SampleServer:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="workctl-sample-server",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> SampleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
