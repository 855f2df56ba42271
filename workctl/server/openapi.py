"""The OpenAPI 3.1 document of the HTTP API, built from the route table (``routes.OPS``), so it is true to
the routes by construction; tests check the served routes against it and fuzz them with schemathesis."""

from __future__ import annotations

from typing import Any

from .. import __version__
from .routes import OPS, Field, Op

ERROR = {"$ref": "#/components/schemas/Error"}
_STATUSES = {400: "Bad request (missing header, bad header value)",
             401: "Missing, unknown, revoked or expired bearer token",
             403: "The token's scope does not allow this request",
             404: "No such order, item or route",
             409: "Conflict: no work to lease, an illegal transition, a lease held or lost, an idempotency key reused "
                  "with another request",
             413: "The request body is too large",
             422: "The input failed validation (every problem in error.details)",
             428: "This route needs an X-Idempotency-Key header",
             502: "A source or webhook failed",
             503: "The store is unavailable (locked, full, read-only, missing or too new)"}


def _schema(spec: Field) -> dict[str, Any]:
    schema: dict[str, Any] = {} if spec.kind == "any" else {"type": spec.kind}
    for key, value in (("minimum", spec.minimum), ("maximum", spec.maximum), ("maxLength", spec.max_length)):
        if value is not None:
            schema[key] = value
    if spec.enum is not None:
        schema["enum"] = list(spec.enum)
    if spec.description:
        schema["description"] = spec.description
    return schema


def _header(name: str, description: str, *, required: bool) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "description": description,
            "schema": {"type": "string", "maxLength": 200}}


def _operation(op: Op) -> dict[str, Any]:
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "maxLength": 200}}
                  for name in _path_names(op.path)]
    parameters += [{"name": name, "in": "query", "required": spec.required, "schema": _schema(spec)}
                   for name, spec in op.query.items()]
    if op.scope == "agent" and op.method == "POST":
        parameters.append(_header("X-Agent-ID", "The agent's id; events record '<token name>/<X-Agent-ID>'.",
                                  required=False))
    if op.idempotency:
        parameters.append(_header("X-Idempotency-Key", "Replays with the same key and body return the first "
                                  "response; the same key with another body is 409.", required=True))
    if op.fenced:
        parameters.append(_header("X-Lease-Token", "The lease token from checkout (the fence).", required=True))
    operation: dict[str, Any] = {
        "operationId": op.name, "summary": op.summary, "parameters": parameters,
        "security": [{"bearer": []}],
        "x-workctl-scope": op.scope,
        "responses": {str(op.status): {"description": "The same document as the CLI's --json",
                                       "content": {"application/json": {"schema": {"type": "object"}}}},
                      **{str(code): {"description": text, "content": {"application/json": {"schema": ERROR}}}
                         for code, text in _STATUSES.items()}},
    }
    if op.method == "POST":
        required = [name for name, spec in op.body.items() if spec.required]
        body_schema: dict[str, Any] = {"type": "object", "additionalProperties": False,
                                       "properties": {name: _schema(spec) for name, spec in op.body.items()}}
        if required:
            body_schema["required"] = required
        operation["requestBody"] = {"required": bool(required),
                                    "content": {"application/json": {"schema": body_schema}}}
    return operation


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPS:
        paths.setdefault(op.full_path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "workctl", "version": __version__,
                 "description": "The seed's work-order API: propose, check out, heartbeat, release, submit, approve."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A token from `workctl tokens create`."}},
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message", "details"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                               "details": {"type": "array"}}}}}},
        },
    }
