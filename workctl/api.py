"""The library API: ``Workctl`` — everything the CLI does, usable without it.

    from workctl import Workctl
    with Workctl("workctl.db") as wc:
        order = wc.propose("user.data.sync", {"source": "crm", "user_ids": [1, 2, 3]})
        item = wc.checkout(agent="agent-1")["item"]
        wc.submit(item["id"], result, agent="agent-1", lease_token=item["lease_token"])
        wc.approve(order["order"]["id"])

Every method returns the JSON-shaped dict documented in the README and raises ``WorkctlError``
subclasses (each with its exit code); SQLite errors surface as ``StoreError`` (exit 8).

Only the session and the read queries are imported with this module; every operation, the agent
commands' leases and submit included, imports its module when it is first called (an operator's
``workctl orders`` does not load the lease code, and the agent commands load nothing else).
"""

from __future__ import annotations

import functools
import os
import sqlite3
from typing import IO, Any, Callable, TypeVar

from .clock import Clock, clock_from_env
from .config import Config, default_agent, load_config
from .core import queries
from .core.lifecycle import Actor
from .core.session import Session
from .errors import ExitCode, Invalid, WorkctlError
from .limits import INT64_MAX, INT64_MIN, bounded_int, checked_name, checked_text
from .store import checked_location, is_url, open_store

__all__ = ["Workctl", "default_agent"]

F = TypeVar("F", bound=Callable[..., Any])


# Parameters that name an order or an item: every method taking one accepts a unique id prefix (>= 8
# characters, like git), resolved here, once, before the operation runs (core.ids.resolve_prefix).
_ID_PARAMETERS = {"order_id": "orders", "next_order": "orders", "item_id": "items"}


def _id_positions(method: Callable[..., Any]) -> list[tuple[str, int, str]]:
    """(name, positional index after self, table) of each id parameter of ``method``. Read from its code
    object, not ``inspect.signature``: this runs at import, on every command's start-up."""
    code = method.__code__
    names = list(code.co_varnames[1:code.co_argcount + code.co_kwonlyargcount])
    return [(name, index, _ID_PARAMETERS[name]) for index, name in enumerate(names) if name in _ID_PARAMETERS]


def _resolve_ids(self: Workctl, positions: list[tuple[str, int, str]], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    from .core.ids import FULL_ID_LENGTH, resolve_prefix

    for name, index, table in positions:
        if index < len(args):
            given = args[index]
            if isinstance(given, str) and len(given) < FULL_ID_LENGTH:
                args = (*args[:index], resolve_prefix(self.session.conn, table, given), *args[index + 1:])
        else:
            given = kwargs.get(name)
            if isinstance(given, str) and len(given) < FULL_ID_LENGTH:
                kwargs[name] = resolve_prefix(self.session.conn, table, given)
    return args, kwargs


def _store_errors(method: F) -> F:
    positions = _id_positions(method)

    @functools.wraps(method)
    def wrapper(self: Workctl, *args: Any, **kwargs: Any) -> Any:
        try:
            if positions:
                args, kwargs = _resolve_ids(self, positions, args, kwargs)
            return method(self, *args, **kwargs)
        except WorkctlError:
            raise
        except UnicodeEncodeError as exc:  # a lone surrogate in some text: SQLite cannot store it
            raise Invalid(f"text holds a character that is not valid Unicode ({exc.reason} at position {exc.start}); "
                          "pass UTF-8 text", code="invalid_text") from None
        except Exception as exc:  # the store's driver errors, as StoreError (exit 8) saying what happened
            conn = self._session.conn if self._session is not None else None
            if conn is not None and isinstance(exc, conn.driver_errors):
                error = conn.translate(exc)
                if error.code == "store_unavailable":  # e.g. the server restarted: the next call reconnects
                    self._drop_session()
                raise error from exc
            if isinstance(exc, sqlite3.Error):  # a second SQLite file (the target) failed
                from .store.sqlite import translate

                raise translate(exc, self.db_path) from exc
            raise
    return wrapper  # type: ignore[return-value]


def effective_config(*, db: str | None = None, db_origin: str = "default", config: str | None = None,
                     config_origin: str = "default") -> dict[str, Any]:
    """The effective configuration, each value with its origin; secrets as set / not set. Opens no store."""
    from .config_report import effective_config as report

    return report(db=db, db_origin=db_origin, config=config, config_origin=config_origin)


def _names(**values: str | None) -> None:
    """Every identifier a call takes from outside, checked before anything is read or written."""
    for what, value in values.items():
        checked_name(value, f"the {what.replace('_', ' ')}")


class Workctl:
    """The library facade. Only operations that create work (``init``, ``propose``, and ``sync`` when it
    proposes) create a missing SQLite store; everything else raises ``store_missing`` (exit 8) and
    creates nothing, so a mistyped path never looks like an empty queue. ``create=True`` lets every
    operation of this handle create the store (for callers that manage their own files)."""

    def __init__(self, db: str | os.PathLike[str] | None = None, *, config: Config | None = None,
                 clock: Clock | None = None, user: str | None = None, create: bool = False):
        self.db_path = checked_location(db)
        self.config = config if config is not None else load_config()
        self.clock = clock or clock_from_env()
        self.user = user or os.environ.get("USER") or "operator"
        self.create = create
        self._session: Session | None = None

    # -- plumbing --------------------------------------------------------------------------------
    @property
    def session(self) -> Session:
        return self._open(create=self.create)

    def _open(self, *, create: bool) -> Session:
        if self._session is None:
            conn = open_store(self.db_path, create=create)
            self._session = Session(conn, self.db_path, self.config, self.clock, hot=conn.hot)
        return self._session

    def peer(self) -> Workctl:
        """Another handle on the same store, config and clock, with its own connection: what the
        agent loops give each worker thread (a connection is never shared between threads)."""
        return Workctl(self.db_path, config=self.config, clock=self.clock, user=self.user, create=self.create)

    @_store_errors
    def init(self) -> dict[str, Any]:
        """Create (or migrate) the store; say where it is and whether it was new."""
        from .store import describe

        existed = os.path.exists(os.path.realpath(self.db_path)) if not is_url(self.db_path) else None
        conn = self._open(create=True).conn
        created = bool(getattr(conn, "migrated", False)) if existed is None else not existed
        return {"store": {**conn.describe(), "path": describe(self.db_path), "created": created}}

    @_store_errors
    def export_store(self, out: IO[str]) -> dict[str, Any]:
        """Write every row of the store to ``out`` as export lines (``core/transfer``); how many rows."""
        from .core.transfer import export_lines

        rows = 0
        for line in export_lines(self.session):
            out.write(line)
            out.write("\n")
            rows += 1
        return {"lines": rows}

    @_store_errors
    def import_store(self, stream: IO[bytes]) -> dict[str, Any]:
        """Load an export into this store (created if missing; refused unless it has no orders and no
        tokens), in one transaction."""
        from .core.transfer import import_lines

        return import_lines(self._open(create=True), stream)

    def _drop_session(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 — the connection is already broken; closing it may fail too
            self._session = None

    def close(self) -> None:
        if self._session is not None:
            self._session.conn.close()
            self._session = None

    def __enter__(self) -> Workctl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _operator(self) -> Actor:
        return Actor("user", self.user)

    # -- order types -----------------------------------------------------------------------------
    def types(self) -> list[dict[str, Any]]:
        from .types import list_types
        return [t.describe() for t in list_types()]

    def type_schema(self, name: str) -> dict[str, Any]:
        from .types import get_type
        order_type = get_type(name)
        return {"name": order_type.name, "description": order_type.description, "schema": order_type.schema}

    # -- the lifecycle ---------------------------------------------------------------------------
    @_store_errors
    def propose(self, type_name: str, payload: Any, *, priority: int = 0, idempotency_key: str | None = None,
                resume: bool = False) -> dict[str, Any]:
        """Propose an order; with ``resume``, return the open order of the same scope instead if there is one
        (``"resumed": true``)."""
        from .core.propose import propose
        checked_name(idempotency_key, "the idempotency key")
        self._open(create=True)  # proposing creates work, so it may create the store
        return propose(self.session, type_name, payload, priority=priority, actor=self._operator(),
                       idempotency_key=idempotency_key, resume=resume)

    @_store_errors
    def checkout(self, order_id: str | None = None, *, agent: str | None = None, type_name: str | None = None,
                 ttl: int | None = None) -> dict[str, Any]:
        from .core import leases  # the agent operations' modules: loaded by the agent commands only

        _names(order_id=order_id, agent=agent, type=type_name)
        return leases.checkout(self.session, agent=agent or default_agent(), order_id=order_id,
                               type_name=type_name, ttl=ttl)

    @_store_errors
    def heartbeat(self, item_id: str, *, agent: str | None = None, ttl: int | None = None,
                  lease_token: str | None = None) -> dict[str, Any]:
        from .core import leases

        _names(item_id=item_id, agent=agent, lease_token=lease_token or None)  # none: lease_token_required
        return leases.heartbeat(self.session, item_id, agent=agent or default_agent(), ttl=ttl, token=lease_token)

    @_store_errors
    def release(self, item_id: str, *, agent: str | None = None, error: str | None = None,
                lease_token: str | None = None, unavailable: str | None = None,
                failed_users: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Give a lease back. ``error`` counts the attempt, unless ``unavailable`` names the source that
        could not be reached (an outage is not the item's fault); ``failed_users`` go to the failure ledger."""
        from .core import leases

        _names(item_id=item_id, agent=agent, lease_token=lease_token or None)  # none: lease_token_required
        checked_text(error, "the error")
        result = leases.release(self.session, item_id, agent=agent or default_agent(), error=error,
                                token=lease_token, unavailable=unavailable, failed_users=failed_users)
        if result["order"]["state"] in ("failed", "dead_lettered"):  # rare: the order.failed alert goes out now
            self._after_commit({})
        return result

    @_store_errors
    def submit(self, item_id: str, result: Any, *, agent: str | None = None, lease_token: str | None = None,
               idempotency_key: str | None = None, next: bool = False, next_order: str | None = None,
               next_type: str | None = None, ttl: int | None = None) -> dict[str, Any]:
        """Submit a leased item's result. With ``next`` (or ``next_order``/``next_type``), also lease the next
        item in the same transaction — one commit per item for an agent working through a queue — and
        return it as ``"next"`` (None when there is no work)."""
        from .core.submit import Next, submit

        _names(item_id=item_id, agent=agent, lease_token=lease_token or None, idempotency_key=idempotency_key)
        then = Next(order_id=next_order, type_name=next_type, ttl=ttl) if next or next_order or next_type else None
        return submit(self.session, item_id, result, agent=agent or default_agent(), token=lease_token,
                      idempotency_key=idempotency_key, then=then)

    @_store_errors
    def approve(self, order_id: str, *, dry_run: bool = False, idempotency_key: str | None = None,
                on_commit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Apply the order. ``on_commit`` is called with the response as soon as the transaction has
        committed, before any webhook is sent (the CLI prints the result there); the deliveries that follow
        never change the outcome."""
        from .core.approve import approve
        _names(order_id=order_id, idempotency_key=idempotency_key)
        response = approve(self.session, order_id, actor=self._operator(), dry_run=dry_run,
                           idempotency_key=idempotency_key)
        if dry_run:
            return response
        if on_commit is not None:
            on_commit(response)
        return self._after_commit(response, order_id=order_id)

    @_store_errors
    def approve_guarded(self, order_id: str) -> dict[str, Any]:
        """An automatic approval (sync/run --approve): approve only if the dry run's diff passes the
        ``[approve]`` rules; otherwise the order stays submitted, ``approval_held`` is recorded, the
        ``order.held`` webhook fires and Conflict(approval_held, exit 6) is raised."""
        from .core.autoapprove import hold

        preview = self.approve(order_id, dry_run=True)
        held = hold(self.session, order_id, preview["diff"])
        if held is not None:
            self._after_commit({}, order_id=order_id)
            raise held
        return self.approve(order_id)

    @_store_errors
    def reject(self, order_id: str, *, reason: str, requeue: bool = False,
               idempotency_key: str | None = None) -> dict[str, Any]:
        from .core.reject import reject
        _names(order_id=order_id, idempotency_key=idempotency_key)
        checked_text(reason, "the reason")
        return reject(self.session, order_id, reason=reason, requeue=requeue, actor=self._operator(),
                      idempotency_key=idempotency_key)

    @_store_errors
    def cancel(self, order_id: str, *, reason: str | None = None) -> dict[str, Any]:
        """Withdraw an order that was not applied: it and its open items become ``cancelled``."""
        from .core.cancel import cancel
        _names(order_id=order_id)
        checked_text(reason, "the reason")
        result = cancel(self.session, order_id, reason=reason, actor=self._operator())
        return self._after_commit(result, order_id=order_id)

    @_store_errors
    def cancel_preview(self, order_id: str) -> dict[str, Any]:
        """What ``cancel`` would do (for a confirmation): the order's state and its open items by state."""
        from .core.cancel import preview
        return preview(self.session, order_id)

    @_store_errors
    def retry(self, item_id: str | None = None, *, order_id: str | None = None) -> dict[str, Any]:
        from .core.retry import retry
        _names(item_id=item_id, order_id=order_id)
        return retry(self.session, item_id=item_id, order_id=order_id, actor=self._operator())

    @_store_errors
    def maintain(self, *, dry_run: bool = False) -> dict[str, Any]:
        from .core.maintain import maintain
        if dry_run:
            return maintain(self.session, dry_run=True)
        # Re-send what is pending and due, after the maintenance commit.
        return self._after_commit(maintain(self.session))

    # -- failures, delta cursors, webhooks (user.data.sync variations 1, 4, 5) -------------------
    @_store_errors
    def failures(self, order_id: str | None = None, *, source: str | None = None, error_class: str | None = None,
                 since: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The per-user error ledger: every failed user of every submitted, refused or released batch (oldest
        first). An unknown ``source`` or ``error_class`` is a usage error listing the valid ones."""
        return list(self.failures_page(order_id, source=source, error_class=error_class, since=since,
                                       limit=limit)["failures"])

    @_store_errors
    def failures_page(self, order_id: str | None = None, *, source: str | None = None,
                      error_class: str | None = None, since: str | None = None, limit: int = 1000) -> dict[str, Any]:
        """``failures`` (the newest ``limit``, at or after ``since``) and ``more``: how many older ones match."""
        from .core.filters import ERROR_CLASSES, check_choice, is_error_class
        from .sources.config import KNOWN_SOURCES, configured_sources
        from .types.user_data_sync.ledger import failures_page

        _names(order_id=order_id)
        conn = self.session.conn
        if source is not None:
            seen = [r[0] for r in conn.execute("SELECT DISTINCT source FROM sync_failures")]
            check_choice("--source", source, [*KNOWN_SOURCES, *configured_sources(self.config.raw)], also=seen)
        if error_class is not None and not is_error_class(error_class):
            seen = [r[0] for r in conn.execute("SELECT DISTINCT error_class FROM sync_failures")]
            check_choice("--class", error_class, [*ERROR_CLASSES, "http_<status>"], also=seen)
        return failures_page(self.session, order_id, source=source, error_class=error_class, since=_since(since),
                             limit=limit)

    @_store_errors
    def retry_failed(self, order_id: str, *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Propose a new order for exactly the users of ``order_id`` that failed (and are not synced since)."""
        from .types.user_data_sync.ledger import SYNC_TYPE, retry_payload
        return self.propose(SYNC_TYPE, retry_payload(self.session, order_id), idempotency_key=idempotency_key)

    @_store_errors
    def cursors(self) -> list[dict[str, Any]]:
        """The delta-sync watermarks, per scope (source and fields): how many users have one, the oldest and
        the newest (moved only by the apply of a delta order)."""
        from .types.user_data_sync.delta import cursors
        return cursors(self.session.conn)

    @_store_errors
    def outbox(self, *, order_id: str | None = None, state: str | None = None,
               limit: int = 1000) -> list[dict[str, Any]]:
        """Webhook notifications: pending, sent or failed (after their last attempt)."""
        from .core.outbox import outbox
        return outbox(self.session, order_id=order_id, state=state, limit=limit)

    def _after_commit(self, response: dict[str, Any], *, order_id: str | None = None) -> dict[str, Any]:
        """Send the due outbox rows (of one order, or all) once an operation has committed, and add the
        delivery counts to its response. A failed delivery is recorded for ``maintain`` to retry; it never
        undoes what was committed, so nothing here may raise."""
        from .core import outbox

        hooks = outbox.configured(self.config)
        if not hooks:
            return response
        try:
            self._queue_alerts(hooks)
            sent: dict[str, Any] = outbox.deliver(self.session, hooks, order_id=order_id)
        except Exception as exc:  # noqa: BLE001 — committed already; maintain sends what is left
            sent = {"sent": 0, "failed": 0, "error": f"{type(exc).__name__}: {exc}"}
        except KeyboardInterrupt:  # between two sends: the rest waits in the outbox
            sent = {"sent": 0, "failed": 0, "interrupted": True}
        return {**response, "webhooks": sent}

    # -- API tokens (workctl serve) --------------------------------------------------------------
    @_store_errors
    def create_token(self, *, scope: str, name: str | None = None, expires: str | None = None) -> dict[str, Any]:
        """A bearer token for the HTTP API; its secret is in the response and nowhere else, ever."""
        from .core import tokens
        return tokens.create(self.session, scope=scope, name=name, expires=expires)

    @_store_errors
    def tokens(self) -> list[dict[str, Any]]:
        from .core import tokens
        return tokens.list_tokens(self.session)

    @_store_errors
    def revoke_token(self, name: str) -> dict[str, Any]:
        from .core import tokens
        return tokens.revoke(self.session, name)

    @_store_errors
    def authenticate(self, secret: str) -> dict[str, Any]:
        """The token ({name, scope}) a bearer secret belongs to; Unauthorized when it is not valid."""
        from .core import tokens
        return tokens.authenticate(self.session, secret)

    def _queue_alerts(self, hooks: list[Any]) -> int:
        """Queue order.failed for orders that failed or were dead-lettered since the last look."""
        from .core import outbox
        from .store import write_tx

        if not any("order.failed" in h.events for h in hooks):
            return 0
        with write_tx(self.session.conn) as conn:
            return outbox.queue_order_alerts(conn, hooks, self.session.now())

    # -- views -----------------------------------------------------------------------------------
    @_store_errors
    def status(self, order_id: str | None = None, *, limit: int | None = 100) -> dict[str, Any]:
        """Counts per state (from the orders' counters: O(orders)); or one order with a page of ``limit``
        items (``items_more`` says how many follow), its counters, progress and ETA."""
        _names(order_id=order_id)
        if order_id:
            return queries.order_status(self.session, order_id, limit=limit)
        return queries.status(self.session)

    @_store_errors
    def orders(self, *, state: str | None = None, type_name: str | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
        """Orders, newest first; an unknown ``state`` or ``type_name`` is a usage error listing the valid ones."""
        from .core.filters import check_choice
        from .core.lifecycle import ORDER_STATES

        check_choice("--state", state, ORDER_STATES)
        if type_name is not None:
            from .types import list_types
            check_choice("--type", type_name, [t.name for t in list_types()])
        return list(queries.list_orders(self.session, state=state, type_name=type_name, limit=limit))

    @_store_errors
    def orders_listing(self, *, state: str | None = None, type_name: str | None = None,
                       limit: int = 100) -> dict[str, Any]:
        """``{"orders": [...], "more": N}``: the orders ``orders`` lists, and how many more match beyond
        ``limit`` (counted only when the listing was cut)."""
        listed = self.orders(state=state, type_name=type_name, limit=limit)
        more = 0
        if len(listed) == limit:
            more = max(queries.count_orders(self.session, state=state, type_name=type_name) - limit, 0)
        return {"orders": listed, "more": more}

    @_store_errors
    def show(self, order_id: str) -> dict[str, Any]:
        return queries.show(self.session, order_id)

    @_store_errors
    def show_page(self, order_id: str, *, limit: int | None = None, brief: bool = False) -> dict[str, Any]:
        """The order in full (``brief``: its summary, a large payload left out); its items a ``queries.Page``
        streamed from the store (at most ``limit``)."""
        return queries.show_page(self.session, order_id, limit=limit, brief=brief)

    @_store_errors
    def order_state(self, order_id: str) -> str:
        """The order's state (one indexed read of one column; NotFound for an unknown id)."""
        return queries.order_state(self.session, order_id)

    @_store_errors
    def troubles(self, *, order_id: str | None = None, type_name: str | None = None) -> dict[str, Any]:
        """Failed/dead-lettered orders and items waiting for an unavailable source, in an agent run's scope."""
        return queries.troubles(self.session, order_id=order_id, type_name=type_name)

    @_store_errors
    def pending_sync_sources(self, order_id: str | None = None) -> list[str]:
        return queries.pending_sources(self.session, "user.data.sync", order_id)

    @_store_errors
    def pending_item_count(self, order_id: str | None = None, type_name: str | None = None) -> int:
        return queries.pending_items(self.session, order_id=order_id, type_name=type_name)

    @_store_errors
    def local_user_ids(self) -> list[int]:
        """Ids of the users table in the target database (for ``sync --users all``)."""
        from .store.target import local_user_ids
        return local_user_ids(self.session.target())

    @_store_errors
    def log(self, order_id: str, *, after_id: int = 0) -> list[dict[str, Any]]:
        return queries.log(self.session, order_id, after_id=after_id)

    @_store_errors
    def log_page(self, order_id: str, *, after_id: int = 0, since: str | None = None,
                 limit: int | None = None) -> queries.Page:
        """The order's events oldest first, streamed (constant memory): after ``after_id``, at or after the
        ISO-8601 time ``since``, at most ``limit``; the page's ``more()`` counts the rest."""
        return queries.log_page(self.session, order_id, after_id=after_id, since=_since(since), limit=limit)

    @_store_errors
    def item_log(self, item_id: str, *, limit: int = 100) -> dict[str, Any]:
        """An item's events and its order's own events, oldest first (the newest ``limit``)."""
        return queries.item_log(self.session, item_id, limit=limit)

    @_store_errors
    def has_leased(self, agent_prefix: str, *, order_id: str | None = None, item_id: str | None = None) -> bool:
        """Whether an agent whose id is ``agent_prefix`` (or starts with ``agent_prefix/``) ever leased this
        item, or an item of this order: what an agent-scoped API token may read."""
        return queries.has_leased(self.session, agent_prefix, order_id=order_id, item_id=item_id)

    # -- agents that run inside workctl ----------------------------------------------------------
    @_store_errors
    def sync(self, options: Any, *, listener: Any = None) -> dict[str, Any]:
        """Run the fetch loop (workctl.agents.sync), proposing or resuming first when the options say so;
        returns the run's report. A run that did not succeed carries ``"error"`` (see ``run_error``)."""
        from dataclasses import replace

        from .agents.sync import Syncer
        from .core.ids import resolve_prefix
        if options.source or options.users or options.retry_failed:
            self._open(create=True)  # sync proposes here: it may create the store
        for name in ("order_id", "retry_failed"):
            if getattr(options, name):
                options = replace(options, **{name: resolve_prefix(self.session.conn, "orders",
                                                                   getattr(options, name))})
        syncer = Syncer(self, options, listener=listener).run()
        return self._finish_run("sync", syncer.to_dict(), syncer.error)

    @_store_errors
    def run_exec(self, options: Any, *, listener: Any = None) -> dict[str, Any]:
        """Run a shell command per item (workctl.agents.exec); returns the run's report (with ``"error"``
        when it did not succeed)."""
        from dataclasses import replace

        from .agents.exec import Runner
        from .core.ids import resolve_prefix
        if options.order_id:
            options = replace(options, order_id=resolve_prefix(self.session.conn, "orders", options.order_id))
        checked_text(getattr(options, "command", None), "the --exec command")
        runner = Runner(self, options, listener=listener).run()
        return self._finish_run("run", runner.to_dict(), runner.error)

    def _finish_run(self, command: str, report: dict[str, Any], error: WorkctlError | None) -> dict[str, Any]:
        """Alerts at the end of an agent run: run.failed for a run that exits 7 (with its report), and the
        order.failed alerts of orders that failed meanwhile; deliveries never change the verdict."""
        from .core import outbox
        from .store import write_tx

        hooks = outbox.configured(self.config)
        if not hooks:
            return report
        queued = self._queue_alerts(hooks)
        if error is not None and error.exit_code == ExitCode.REMOTE:
            summary = {k: report[k] for k in ("orders", "items", "unavailable_sources", "failed_orders",
                                              "waiting_for_source", "errors") if k in report}
            with write_tx(self.session.conn) as conn:
                queued += outbox.notify(conn, hooks, "run.failed", None,
                                        {"command": command, "error": error.to_dict()["error"], "report": summary},
                                        self.session.now())
        if queued:  # only the alerts just queued are sent here; other due rows are maintain's
            report["webhooks"] = self._after_commit({}).get("webhooks")
        return report

    # -- preview, revert, provenance (user.data.sync) -------------------------------------------
    @_store_errors
    def diff(self, order_id: str) -> dict[str, Any]:
        """The field-level changes approve would make (a submitted order) or made (a completed one)."""
        from .core.approve import preview
        return preview(self.session, order_id, actor=self._operator())

    @_store_errors
    def revert(self, order_id: str, *, dry_run: bool = False) -> dict[str, Any]:
        """Restore what an applied order overwrote, where the value is still the one it wrote."""
        from .types.user_data_sync.revert import revert
        result = revert(self.session, order_id, actor=self._operator(), dry_run=dry_run)
        return result if dry_run else self._after_commit(result, order_id=order_id)

    @_store_errors
    def why(self, user_id: int, field: str | None = None) -> dict[str, Any]:
        """The recorded history of a user's fields (every value, when, by which order/source/agent)."""
        from .types.user_data_sync.provenance import history
        bounded_int(user_id, "the user id", INT64_MIN, INT64_MAX)
        _names(field=field)
        return history(self.session, user_id, field)

    def sensitive_fields(self, type_name: str = "user.data.sync") -> frozenset[str]:
        """Fields whose values human output masks (``[types."<type>"] sensitive_fields``)."""
        from .types.user_data_sync.masking import sensitive_fields
        return sensitive_fields(self.config.type_settings(type_name))


def _since(text: str | None) -> str | None:
    """``--since`` as the store writes times (so that text comparison is time order); a usage error else."""
    if text is None:
        return None
    from .clock import iso, parse
    from .errors import Usage

    try:
        return iso(parse(text))
    except ValueError:
        raise Usage(f"--since: '{text[:40]}' is not an ISO-8601 date-time (e.g. 2026-11-28T09:00:00Z)") from None
