"""The ASGI app: authentication, scopes, headers, bounded strict JSON bodies, and errors as documents.

Each request runs its library call on a worker thread with that thread's own ``Workctl`` handle (a
store connection is never shared between threads). WorkctlErrors become ``{"error": {code, message,
details}}`` with the HTTP status that matches their exit code; anything else is a 500 ``internal_error``
(a bug: nothing a client sends may cause one).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import strictjson
from ..api import Workctl
from ..limits import MAX_NAME_CHARS
from ..clock import Clock
from ..config import Config
from ..errors import ExitCode, Forbidden, Invalid, NotFound, Unauthorized, Usage, WorkctlError
from .openapi import document
from .routes import OPS, Call, Field, Op

MAX_BODY_BYTES = 16 * 1024 * 1024     # a 1,000,000-id proposal is about 8 MB
MAX_HEADER_CHARS = MAX_NAME_CHARS     # X-Agent-ID, X-Idempotency-Key, X-Lease-Token

STATUS_BY_EXIT = {ExitCode.ERROR: 500, ExitCode.USAGE: 400, ExitCode.NO_WORK: 409, ExitCode.NOT_FOUND: 404,
                  ExitCode.INVALID: 422, ExitCode.CONFLICT: 409, ExitCode.REMOTE: 502, ExitCode.STORE: 503}
STATUS_BY_CODE = {"unauthorized": 401, "forbidden": 403, "idempotency_key_required": 428, "body_too_large": 413,
                  "route_not_found": 404}


def status_of(exc: WorkctlError) -> int:
    return STATUS_BY_CODE.get(exc.code) or STATUS_BY_EXIT.get(exc.exit_code, 500)


def error_response(exc: WorkctlError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="workctl"'} if exc.code == "unauthorized" else None
    return JSONResponse(exc.to_dict(), status_code=status_of(exc), headers=headers)


class Handles:
    """One ``Workctl`` per worker thread, all closed when the server stops."""

    def __init__(self, db: str | None, config: Config, clock: Clock | None):
        self.db, self.config, self.clock = db, config, clock
        self._local = threading.local()
        self._all: list[Workctl] = []
        self._lock = threading.Lock()

    def get(self) -> Workctl:
        wc = getattr(self._local, "wc", None)
        if wc is None:
            wc = Workctl(self.db, config=self.config, clock=self.clock)
            self._local.wc = wc
            with self._lock:
                self._all.append(wc)
        return wc

    def close(self) -> None:
        with self._lock:
            for wc in self._all:
                wc.close()
            self._all.clear()


def _header(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_HEADER_CHARS or not value.isprintable():
        raise Usage(f"header {name} must be at most {MAX_HEADER_CHARS} printable characters")
    return value


def _bearer(request: Request) -> str:
    scheme, _, secret = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("send 'Authorization: Bearer <token>' (create a token with: workctl tokens create)")
    return secret.strip()


async def _body(request: Request, op: Op) -> dict[str, Any]:
    """The request body: a JSON object within MAX_BODY_BYTES (checked while reading), strictly parsed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Invalid(f"the request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Invalid(f"the request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB",
                          code="body_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        body: Any = {}
    else:
        try:
            # The one strict reader (invariant 10): no NaN, integers within 64 bits, bounded depth, UTF-8.
            body = strictjson.loads(raw, max_bytes=MAX_BODY_BYTES, what="the request body")
        except strictjson.StrictJsonError as exc:
            raise Invalid(f"the request body is not acceptable JSON: {exc.reason} at {exc.path}",
                          code="invalid_json", details=[{"path": exc.path, "message": exc.reason}]) from None
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object", code="invalid_json")
    return _checked(body, op.body, where="body")


def _query(request: Request, op: Op) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in request.query_params.items():
        spec = op.query.get(name)
        if spec is not None and spec.kind == "integer":
            if not (value.lstrip("-").isascii() and value.lstrip("-").isdigit() and len(value) <= 20):
                raise Invalid(f"query parameter {name} must be an integer", code="invalid",
                              details=[{"path": f"query.{name}", "message": "must be an integer"}])
            values[name] = int(value)
        else:
            values[name] = value
    return _checked(values, op.query, where="query")


def _checked(values: dict[str, Any], fields: dict[str, Field], *, where: str) -> dict[str, Any]:
    """Every value of the right type and within its bounds; no unknown and no missing field."""
    problems = [{"path": f"{where}.{name}", "message": f"unknown field (allowed: {', '.join(fields) or 'none'})"}
                for name in values if name not in fields]
    for name, spec in fields.items():
        if name not in values:
            if spec.required:
                problems.append({"path": f"{where}.{name}", "message": "required"})
            continue
        message = _field_problem(values[name], spec)
        if message:
            problems.append({"path": f"{where}.{name}", "message": message})
    if problems:
        raise Invalid("; ".join(f"{p['path']}: {p['message']}" for p in problems[:5]), code="invalid",
                      details=problems)
    return values


def _field_problem(value: Any, spec: Field) -> str | None:
    checks: dict[str, Callable[[Any], bool]] = {
        "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "object": lambda v: isinstance(v, dict), "any": lambda v: True}
    if not checks[spec.kind](value):
        return f"must be {'an' if spec.kind[0] in 'aeiou' else 'a'} {spec.kind}"
    if spec.kind == "integer":
        if spec.minimum is not None and value < spec.minimum:
            return f"must be >= {spec.minimum}"
        if spec.maximum is not None and value > spec.maximum:
            return f"must be <= {spec.maximum}"
    if spec.kind == "string":
        if spec.max_length is not None and len(value) > spec.max_length:
            return f"must be at most {spec.max_length} characters"
        if spec.enum is not None and value not in spec.enum:
            return f"must be one of {', '.join(spec.enum)}"
    return None


def _authorize(wc: Workctl, secret: str, op: Op, params: dict[str, str]) -> dict[str, Any]:
    """The token, if its scope allows ``op`` (on this order or item, for an agent that reads)."""
    token = wc.authenticate(secret)
    if token["scope"] == "operator":
        return token
    if op.scope == "operator":
        raise Forbidden(f"token {token['name']!r} has scope 'agent'; {op.method} {op.full_path} needs 'operator'")
    if op.reads is not None:
        key = "order_id" if op.reads == "order" else "item_id"
        if not wc.has_leased(token["name"], **{key: params[key]}):
            raise Forbidden(f"token {token['name']!r} (scope 'agent') may read only what it leased")
    return token


def _endpoint(op: Op, handles: Handles) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        try:
            secret = _bearer(request)
            params = {k: str(v) for k, v in request.path_params.items()}
            # Authenticate before reading a body: a stranger's request costs one indexed lookup.
            token = await run_in_threadpool(lambda: _authorize(handles.get(), secret, op, params))
            body = await _body(request, op) if op.method == "POST" else {}
            query = _query(request, op)
            key = _header(request, "x-idempotency-key")
            if op.idempotency and key is None and not body.get("dry_run"):
                raise Usage(f"{op.method} {op.full_path} needs an X-Idempotency-Key header (a unique value per "
                            "request; a retry with the same key and body returns the first response)",
                            code="idempotency_key_required")
            lease_token = _header(request, "x-lease-token")
            if op.fenced and lease_token is None:
                raise Usage("send the lease token from checkout in the X-Lease-Token header")
            agent_id = _header(request, "x-agent-id")
            agent = f"{token['name']}/{agent_id}" if agent_id else token["name"]

            def work() -> Any:
                wc = handles.get()
                wc.user = token["name"]  # operator actions are recorded under the token's name
                return op.call(wc, Call(params, body, query, agent, key, lease_token))

            result = await run_in_threadpool(work)
        except WorkctlError as exc:
            return error_response(exc)
        return JSONResponse(result, status_code=op.status)

    endpoint.__name__ = op.name
    return endpoint


def create_app(db: str | None = None, *, config: Config | None = None, clock: Clock | None = None) -> Starlette:
    config = config if config is not None else Config()
    handles = Handles(db, config, clock)
    spec = document()

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        what = "method" if status == 405 else "route"
        error = NotFound(f"no {what} {request.method} {request.url.path} (see /openapi.json)",
                         code="route_not_found")
        return JSONResponse(error.to_dict(), status_code=status)

    async def unexpected(request: Request, exc: Exception) -> Response:
        error = WorkctlError(f"unexpected {type(exc).__name__} (this is a bug)", code="internal_error")
        return JSONResponse(error.to_dict(), status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            handles.close()

    routes = [Route(op.full_path, _endpoint(op, handles), methods=[op.method]) for op in OPS]
    routes.append(Route("/openapi.json", openapi, methods=["GET"]))
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: not_found, Exception: unexpected})
