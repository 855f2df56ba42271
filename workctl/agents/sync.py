"""The fetch loop (the seed's "Agent Processes Batch", automated): checkout → fetch → verify →
submit, with heartbeats in the background, per-user errors, and optional approval.

Sources and their secrets are resolved before any lease is taken, so a misconfigured source never
strands an item. A user that still fails after the client's retries goes to ``failed_users`` with
its error class and message; whether the batch is then accepted is the order's
``min_success_ratio`` (a refused batch is released with the error, a counted attempt).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol

from ..clock import iso
from ..config import default_agent
from ..errors import Conflict, Invalid, NoWork, RemoteError, Usage, WorkctlError
from ..limits import INT64_MAX, clean_text
from ..sources.client import TRANSPORT_CLASSES, SourceClient, UserOutcome
from ..sources.config import SourceConfig, load_source
from ..types.user_data_sync.delta import fetch_since
from .loop import AgentLoop, Handle, Listener, Tally

SYNC_TYPE = "user.data.sync"
MAX_ID_FILE_BYTES = 64 * 1024 * 1024
MAX_USERS = 1_000_000  # the user.data.sync schema's maxItems


@dataclass
class SyncReport:
    orders: list[str] = field(default_factory=list)
    users_synced: int = 0
    users_failed: int = 0
    users_unchanged: int = 0  # delta sync: not changed at the source, so not fetched
    failures_by_class: Counter[str] = field(default_factory=Counter)
    failed_users: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    approved: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False
    proposed: bool = False  # this run created the order it synced (sync --source … / --retry-failed)
    unavailable: dict[str, str] = field(default_factory=dict)  # source -> why (the run's circuit breaker)
    released_unavailable: int = 0

    def to_dict(self, tally: Tally) -> dict[str, Any]:
        return {"orders": self.orders, "resumed": self.resumed, "proposed": self.proposed,
                "items": {"submitted": tally.submitted, "released": tally.released, "lost": tally.lost,
                          "cancelled": tally.cancelled, "released_unavailable": self.released_unavailable},
                "unavailable_sources": self.unavailable, "held": tally.held,
                "users": {"synced": self.users_synced, "failed": self.users_failed,
                          "failed_by_class": dict(self.failures_by_class), "unchanged": self.users_unchanged},
                "failed_users": self.failed_users, "requests": self.requests, "retries": self.retries,
                "seconds": round(self.seconds, 3),
                "users_per_second": round(self.users_synced / self.seconds, 1) if self.seconds else None,
                "approved": self.approved, "messages": tally.messages}


_SCALARS = frozenset({str, int, float, bool})


def verify(outcome: UserOutcome, fields: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    """(data, None) when every requested field is present, non-empty and a scalar; else (None, why)."""
    record = outcome.data or {}
    data = {f: record.get(f) for f in fields}
    # Fast path first: this runs once per user, so it builds no message unless something is wrong.
    if all(type(v) in _SCALARS and v != "" for v in data.values()):
        return data, None
    missing = [f for f, v in data.items() if v is None or v == ""]
    if missing:
        return None, f"missing or empty fields: {', '.join(missing)}"
    bad = [f for f, v in data.items() if type(v) not in _SCALARS]
    return None, f"fields with non-scalar values: {', '.join(bad)}"


def build_result(user_ids: list[int], outcomes: list[UserOutcome],
                 fields: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The submission for a batch, plus the failed users with their error classes (for the report)."""
    synced, failed, unchanged = [], [], []
    for outcome in outcomes:
        if outcome.unchanged:  # delta sync: not changed at the source since the order's `since`
            unchanged.append({"user_id": outcome.user_id})
            continue
        if outcome.data is not None:
            data, why = verify(outcome, fields)
            if data is not None:
                synced.append({"user_id": outcome.user_id, "data": data, "verified": True})
                continue
            failed.append({"user_id": outcome.user_id, "error": why, "error_class": "unverified"})
        else:
            failed.append({"user_id": outcome.user_id, "error": outcome.error or "failed",
                           "error_class": outcome.error_class or "error"})
    result = {"success": not failed, "synced_users": synced,
              "failed_users": [{"user_id": f["user_id"], "error": f"{f['error_class']}: {f['error']}"} for f in failed],
              "errors": sorted({str(f["error_class"]) for f in failed})}
    if unchanged:
        result["unchanged_users"] = unchanged
    return result, failed


@dataclass
class SyncOptions:
    order_id: str | None = None
    # Propose (or resume) first: --source S --users SPEC [--fields …] [--batch-size] [--delta] [--since],
    # or --retry-failed ORDER_ID. ``new`` proposes even when an open order of the same scope exists.
    source: str | None = None
    users: str | None = None
    fields: str | None = None
    batch_size: int | None = None
    delta: bool = False
    since: str | None = None
    retry_failed: str | None = None
    new: bool = False
    agent: str | None = None
    concurrency: int | None = None
    max_items: int | None = None
    approve: bool = False
    ttl: int | None = None
    workers: int | None = None  # batches in flight (default: the source's concurrency cap)


class SyncHandle(Handle, Protocol):
    """What the fetch loop needs of the library besides the agent operations."""

    def pending_sync_sources(self, order_id: str | None = None) -> list[str]: ...
    def pending_item_count(self, order_id: str | None = None, type_name: str | None = None) -> int: ...
    def order_state(self, order_id: str) -> str: ...
    def retry_failed(self, order_id: str, *, idempotency_key: str | None = None) -> dict[str, Any]: ...
    def propose(self, type_name: str, payload: Any, *, priority: int = 0, idempotency_key: str | None = None,
                resume: bool = False) -> dict[str, Any]: ...
    def local_user_ids(self) -> list[int]: ...


class Syncer(AgentLoop):
    name = "workctl-sync"

    def __init__(self, wc: SyncHandle, options: SyncOptions, *, listener: Listener | None = None,
                 client_factory: Callable[[SourceConfig, Callable[..., None]], SourceClient] | None = None,
                 heartbeat_every: float | None = None):
        super().__init__(wc, agent=options.agent or default_agent(), workers=1, max_items=options.max_items,
                         ttl=options.ttl, listener=listener, heartbeat_every=heartbeat_every)
        self.wc = wc
        self.options = options
        self.client_factory = client_factory or (lambda config, on_wait: SourceClient(config, on_wait=on_wait))
        self.clients: dict[str, SourceClient] = {}
        self.report = SyncReport()
        self.lock = threading.Lock()  # guards the report and the clients

    def client(self, source: str) -> SourceClient:
        with self.lock:
            if source not in self.clients:
                config = load_source(source, self.wc.config.raw)
                if self.options.concurrency:
                    config = replace(config, concurrency=self.options.concurrency)
                self.clients[source] = self.client_factory(config, self.listener.waiting)
            return self.clients[source]

    def prepare(self) -> None:
        """Resolve every source this run may need (config + secret) before leasing anything."""
        for source in self.wc.pending_sync_sources(self.options.order_id):
            self.client(source)

    def run(self) -> Syncer:
        """Propose or resume the order the options name (if any); then work batches in parallel (``workers``
        at once, each with its own store connection) until no work is left; the source client (rate limit,
        concurrency cap) is shared by all of them. The run's verdict is ``self.error`` (see outcome)."""
        started = time.monotonic()
        self.error: WorkctlError | None = None
        self._propose_first()
        try:
            self.prepare()
            pending = self.wc.pending_item_count(self.options.order_id, SYNC_TYPE)
            self.listener.started(pending)
            self.workers = max(1, min(self.options.workers or self._default_workers(), pending or 1))
            self.run_loop()
        finally:
            for client in self.clients.values():
                self.report.requests += client.stats.requests
                self.report.retries += client.stats.retries
                client.close()
            self.report.seconds = time.monotonic() - started
        if self.options.approve and self.options.order_id:
            self._approve_if_ready(self.options.order_id)
        self.error, troubles = self.outcome(order_id=self.options.order_id, type_name=SYNC_TYPE,
                                            unavailable=self.report.unavailable)
        self.troubles = troubles
        return self

    def incomplete(self, message: str) -> WorkctlError:
        return RemoteError(message, code="sync_incomplete")

    def _propose_first(self) -> None:
        options = self.options
        if options.retry_failed:
            options.order_id = self.wc.retry_failed(options.retry_failed)["order"]["id"]
            self.report.orders.append(options.order_id)
            self.report.proposed = True
        elif options.source or options.users:
            proposed = propose_from_source(self.wc, source=options.source, users=options.users, fields=options.fields,
                                           batch_size=options.batch_size, delta=options.delta, since=options.since,
                                           resume=not options.new)
            options.order_id = proposed["order"]["id"]
            self.report.orders.append(options.order_id)
            self.report.resumed = bool(proposed.get("resumed"))
            self.report.proposed = not self.report.resumed
            if self.report.resumed:
                self.listener.message(f"resuming order {options.order_id} "
                                      f"({proposed['order']['state']}; --new proposes a new one)")

    def _approve_if_ready(self, order_id: str) -> None:
        """A resumed order may already be submitted (held by a rule on an earlier run): try it again."""
        if order_id in {a["order_id"] for a in self.report.approved} or \
                order_id in {h["order_id"] for h in self.tally.held}:
            return
        if self.wc.order_state(order_id) == "submitted":
            self._approve(self.wc, order_id)

    def _approve(self, wc: Handle, order_id: str) -> None:
        approved = self.approve_order(wc, order_id)
        if approved is not None:
            with self.lock:
                self.report.approved.append({"order_id": order_id, "diff": approved["diff"]})
            self.listener.message(f"approved order {order_id}: {approved['diff'].get('summary')}")

    def to_dict(self) -> dict[str, Any]:
        report = self.report.to_dict(self.tally)
        report["failed_orders"] = self.troubles["failed_orders"]
        report["waiting_for_source"] = self.troubles["waiting_for_source"]
        if self.error is not None:
            report.update(self.error.to_dict())
        return report

    def _default_workers(self) -> int:
        return min((c.config.concurrency for c in self.clients.values()), default=1)

    def claim_scope(self) -> tuple[str | None, str | None]:
        return self.options.order_id, None if self.options.order_id else SYNC_TYPE

    def checkout(self, wc: Handle, agent: str) -> dict[str, Any] | None:
        try:
            return wc.checkout(self.options.order_id, agent=agent, type_name=SYNC_TYPE, ttl=self.options.ttl)["item"]
        except NoWork:
            return None

    def work(self, wc: Handle, item: dict[str, Any], agent: str) -> None:
        with self.lock:
            if item["order_id"] not in self.report.orders:
                self.report.orders.append(item["order_id"])
        spec = item["input"]
        source = spec["source"]
        with self.lock:
            broken = self.report.unavailable.get(source)
        if broken is not None:  # the circuit breaker: this run takes no more batches from that source
            unfetched = [{"user_id": u, "error": f"{broken.partition(': ')[0]}: not fetched, source {source} "
                                                 "unavailable in this run"} for u in spec["user_ids"]]
            self._unavailable(wc, item, agent, source, broken, [], unfetched)
            return
        try:
            client = self.client(source)
        except WorkctlError:
            wc.release(item["id"], agent=agent, lease_token=item["lease_token"])
            raise
        fetched_at = iso(wc.clock())  # skip_if_newer compares local change times with this
        try:
            with self.heartbeats.keep(item, agent) as beat:
                outcomes = client.fetch_batch(spec["user_ids"], field_map=spec.get("field_map"),
                                              since=fetch_since(spec))
        except BaseException:
            wc.release(item["id"], agent=agent, lease_token=item["lease_token"])
            raise
        result, failed = build_result(spec["user_ids"], outcomes, spec["fields"])
        result["fetched_at"] = fetched_at
        if beat.lost is not None:
            self.gone(item, beat.lost)
            return
        if failed and len(failed) == len(spec["user_ids"]) and all(f["error_class"] in TRANSPORT_CLASSES
                                                                   for f in failed):
            why = f"{failed[0]['error_class']}: {failed[0]['error']}"
            with self.lock:
                self.report.unavailable.setdefault(source, why)
            self._unavailable(wc, item, agent, source, why, failed, result["failed_users"])
            return
        try:
            response = self.submit(wc, item, result, agent)
        except Conflict as exc:
            self.gone(item, exc)
            return
        except Invalid as exc:
            self._refused(wc, item, agent, failed, exc, result["failed_users"])
            return
        self._submitted(item, result, failed)
        # Only the submit that completed the order sees it 'submitted', so exactly one worker approves.
        if self.options.approve and response["order"]["state"] == "submitted":
            self._approve(wc, item["order_id"])

    def _unavailable(self, wc: Handle, item: dict[str, Any], agent: str, source: str, why: str,
                     failed: list[dict[str, Any]], ledger: list[dict[str, Any]] | None = None) -> None:
        """The source could not be reached for the whole batch: give it back without spending an attempt."""
        self._record_failures(item, failed)
        try:
            wc.release(item["id"], agent=agent, lease_token=item["lease_token"], error=clean_text(f"source {source} "
                       f"unavailable: {why}"), unavailable=source, failed_users=ledger or None)
        except Conflict as exc:
            self.gone(item, exc)
            return
        with self.lock:
            self.report.released_unavailable += 1
        self.note(f"batch {item['id']}: source {source} unavailable ({why}); released without spending an attempt")
        self.listener.item_finished(item, "released", 0, len(failed))

    def _submitted(self, item: dict[str, Any], result: dict[str, Any], failed: list[dict[str, Any]]) -> None:
        synced = len(result["synced_users"])
        with self.tally.lock:
            self.tally.submitted += 1
        with self.lock:
            self.report.users_synced += synced
            self.report.users_unchanged += len(result.get("unchanged_users", ()))
        self._record_failures(item, failed)
        self.listener.item_finished(item, "submitted", synced, len(failed))

    def _refused(self, wc: Handle, item: dict[str, Any], agent: str, failed: list[dict[str, Any]],
                 exc: Invalid, ledger: list[dict[str, Any]]) -> None:
        """The batch's result was refused (below min_success_ratio, …): release it with the reason; its failed
        users go to the failure ledger with their class."""
        self._record_failures(item, failed)
        why = "; ".join(f"{d['path']}: {d['message']}" for d in exc.details[:3] if "path" in d) or exc.message
        released = wc.release(item["id"], agent=agent, lease_token=item["lease_token"], error=clean_text(why),
                              failed_users=ledger or None)
        with self.tally.lock:
            self.tally.released += 1
        self.note(f"batch {item['id']} not accepted ({why}); released as attempt "
                  f"{item['attempts']}/{item['max_attempts']}, now {released['item']['state']}")
        self.listener.item_finished(item, "released", 0, len(failed))

    def _record_failures(self, item: dict[str, Any], failed: list[dict[str, Any]]) -> None:
        with self.lock:
            self.report.users_failed += len(failed)
            for entry in failed:
                self.report.failures_by_class[entry["error_class"]] += 1
                self.report.failed_users.append({"order_id": item["order_id"], "item_id": item["id"], **entry})


def parse_users(spec: str, all_ids: Callable[[], list[int]]) -> list[int]:
    """``all`` | ``1-150,200`` | ``@ids.txt`` (ids separated by whitespace or commas) → unique ids in order.

    Errors about a file say where (the token's number), never what: the file may not be an id list at
    all, and its content must not end up in a terminal log."""
    spec = spec.strip()
    if spec == "all":
        ids = all_ids()
    elif spec.startswith("@"):
        try:
            with open(spec[1:], "rb") as handle:
                raw = handle.read(MAX_ID_FILE_BYTES + 1)
        except OSError as exc:
            raise Invalid(f"--users: cannot read {spec[1:]}: {exc.strerror}", code="input_unreadable") from exc
        if len(raw) > MAX_ID_FILE_BYTES:
            raise Invalid(f"--users: {spec[1:]} is larger than {MAX_ID_FILE_BYTES // (1024 * 1024)} MiB",
                          code="input_too_large")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid(f"--users: {spec[1:]} is not UTF-8 text", code="invalid_users") from None
        ids = _ints(text.replace(",", " ").split(), origin=spec[1:], echo=False)
    else:
        ids = []
        for part in [p for p in spec.split(",") if p.strip()]:
            low, _, high = part.partition("-")
            first, last = _ints([low], origin="--users")[0], _ints([high or low], origin="--users")[0]
            if last < first:
                raise Invalid(f"--users: range {part!r} runs backwards", code="invalid_users")
            if last - first >= MAX_USERS:
                raise Invalid(f"--users: range {part!r} holds more than {MAX_USERS:,} users", code="invalid_users")
            ids.extend(range(first, last + 1))
    unique = list(dict.fromkeys(ids))
    if not unique:
        raise Invalid(f"--users {spec[:40]!r} selects no users", code="invalid_users")
    return unique


def _ints(tokens: list[str], *, origin: str, echo: bool = True) -> list[int]:
    """Positive 64-bit ids; the first bad token is named by its position (and shown only if ``echo``)."""
    ids = []
    for position, token in enumerate(tokens, start=1):
        value = int(token) if token.isascii() and token.isdigit() and len(token) <= 19 else 0
        if not 1 <= value <= INT64_MAX:
            shown = f" ({token[:20]!r})" if echo else ""
            raise Invalid(f"{origin}: entry {position}{shown} is not a user id (a positive 64-bit integer)",
                          code="invalid_users")
        ids.append(value)
    return ids


def propose_from_source(wc: Any, *, source: str | None, users: str | None, fields: str | None,
                        batch_size: int | None, delta: bool = False, since: str | None = None,
                        resume: bool = True) -> dict[str, Any]:
    """The cron one-liner's first step: propose a user.data.sync order, or (``resume``) find the open order
    of the same source, user set and fields; return propose's answer (``"resumed": true`` for the latter).

    ``delta`` (implied by ``since``) makes it a delta order, for ``--users all`` unless told otherwise;
    without ``since`` it starts from the source's stored cursor (types/user_data_sync/delta)."""
    delta = delta or since is not None
    if delta and source and not users:
        users = "all"
    if not source or not users:
        raise Usage("--source and --users go together (e.g. --source crm --users 1-150)")
    payload: dict[str, Any] = {"source": source, "user_ids": parse_users(users, wc.local_user_ids)}
    if delta:
        payload["sync_mode"] = "delta"
    if since is not None:
        payload["since"] = since
    if fields:
        payload["fields"] = [f.strip() for f in fields.split(",") if f.strip()]
    if batch_size:
        payload["batch_size"] = batch_size
    load_source(source, wc.config.raw)  # a missing source is reported before anything is written
    proposed: dict[str, Any] = wc.propose(SYNC_TYPE, payload, resume=resume)
    return proposed
