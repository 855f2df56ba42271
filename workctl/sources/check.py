"""``workctl sources list`` / ``sources check NAME``: what is configured, and does it answer."""

from __future__ import annotations

import time
from typing import Any, Mapping

from ..errors import RemoteError
from .config import configured_sources, load_source, mask_url, mask_urls


# Answers that say the source is not usable as configured (down, or not answering with JSON user
# data); the rest (not_found, http_4xx …) still prove it is reachable and took the credentials.
_NOT_AN_ANSWER = frozenset({"timeout", "connection", "server_error", "malformed", "bad_response", "too_large",
                            "redirect"})


def list_sources(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    listed = []
    for name in configured_sources(raw):
        try:
            listed.append({**load_source(name, raw).describe(), "ok": True})
        except Exception as exc:  # one broken source must not hide the others
            listed.append({"name": name, "ok": False, "error": mask_urls(str(exc))})
    return listed


def check_source(name: str, raw: Mapping[str, Any], *, user_id: int = 1) -> dict[str, Any]:
    """One request (no retries) for one user: reachable? authenticated? how fast?"""
    from dataclasses import replace

    from .client import SourceClient, _Failure

    config = replace(load_source(name, raw), max_attempts=1, bulk_path=None)
    with SourceClient(config) as client:
        started = time.monotonic()
        try:
            client.get_json(config.user_path.format(user_id=user_id))
            status, auth = "ok", "ok" if config.auth != "none" else "none"
        except _Failure as failure:
            if failure.error_class in _NOT_AN_ANSWER:
                raise RemoteError(f"source {name} did not answer properly: {client.redact(failure.message)}",
                                  code="source_unreachable") from None
            status = failure.error_class
            auth = "failed" if failure.error_class == "auth" else ("ok" if config.auth != "none" else "none")
        latency_ms = (time.monotonic() - started) * 1000
    report = {"name": name, "base_url": mask_url(config.base_url), "status": status, "auth": auth,
              "latency_ms": round(latency_ms, 1)}
    if auth == "failed":
        raise RemoteError(f"source {name} refused our credentials (from ${config.token_env})", code="source_auth",
                          details=[report])
    return report


def check_sources(names: list[str] | None, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Probe each named source (default: every configured one), one request each. Returns
    ``{"sources": [report | {"name", "status": "failed", "error": {code, message}}], "failed": N}``, plus
    ``"error"`` (the first failure's code) when one failed: one source being down does not hide the
    others."""
    from ..errors import WorkctlError

    reports: list[dict[str, Any]] = []
    for name in names or configured_sources(raw):
        try:
            reports.append(check_source(name, raw))
        except WorkctlError as exc:
            reports.append({"name": name, "status": "failed", "error": exc.to_dict()["error"]})
    failed = [r for r in reports if r["status"] == "failed"]
    checked: dict[str, Any] = {"sources": reports, "failed": len(failed)}
    if failed:  # the run's verdict, as an agent run's report carries it (errors.run_error)
        checked["error"] = {"code": failed[0]["error"]["code"],
                            "message": f"{len(failed)} of {len(reports)} sources failed the check: "
                            + "; ".join(f"{r['name']}: {r['error']['message']}" for r in failed),
                            "details": [{"source": r["name"], **r["error"]} for r in failed]}
    return checked
