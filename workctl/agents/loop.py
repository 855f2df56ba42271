"""The one agent loop that ``sync`` and ``run --exec`` share: take items, work them, keep the leases
alive, and stop cleanly.

An ``AgentLoop`` runs ``workers`` threads, each with its own store handle (``Handle.peer``); a shared
budget (``max_items``) bounds how many items the run takes; a background ``Heartbeats`` thread beats
every lease the run holds; a lease found lost makes the worker drop its result (``lost``). Subclasses
say how to check an item out and how to work it; the report counts what became of every item taken.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from ..config import Config
from ..errors import Conflict, RemoteError, WorkctlError
from .heartbeat import Heartbeats, beat_interval


class Handle(Protocol):
    """What an agent loop needs of the library (``workctl.Workctl`` is one)."""

    config: Config
    clock: Callable[[], Any]

    def peer(self) -> Handle: ...
    def __enter__(self) -> Handle: ...
    def __exit__(self, *exc: object) -> None: ...
    def checkout(self, order_id: str | None = None, *, agent: str | None = None, type_name: str | None = None,
                 ttl: int | None = None) -> dict[str, Any]: ...
    def heartbeat(self, item_id: str, *, agent: str | None = None, ttl: int | None = None,
                  lease_token: str | None = None) -> dict[str, Any]: ...
    def release(self, item_id: str, *, agent: str | None = None, error: str | None = None,
                lease_token: str | None = None, unavailable: str | None = None,
                failed_users: list[dict[str, Any]] | None = None) -> dict[str, Any]: ...
    def submit(self, item_id: str, result: Any, *, agent: str | None = None, lease_token: str | None = None,
               idempotency_key: str | None = None, next: bool = False, next_order: str | None = None,
               next_type: str | None = None, ttl: int | None = None) -> dict[str, Any]: ...
    def approve(self, order_id: str, *, dry_run: bool = False,
                idempotency_key: str | None = None) -> dict[str, Any]: ...
    def approve_guarded(self, order_id: str) -> dict[str, Any]: ...
    def troubles(self, *, order_id: str | None = None, type_name: str | None = None) -> dict[str, Any]: ...


class Listener(Protocol):
    """Progress of a run (the CLI's progress display; silent in the library)."""

    def started(self, total_items: int | None) -> None: ...
    def item_started(self, item: dict[str, Any]) -> None: ...
    def item_finished(self, item: dict[str, Any], outcome: str, ok: int, failed: int) -> None: ...
    def waiting(self, source: str, reason: str, seconds: float) -> None: ...
    def message(self, text: str) -> None: ...


class Quiet:
    """Says nothing (the library's default listener)."""

    def started(self, total_items: int | None) -> None: pass
    def item_started(self, item: dict[str, Any]) -> None: pass
    def item_finished(self, item: dict[str, Any], outcome: str, ok: int, failed: int) -> None: pass
    def waiting(self, source: str, reason: str, seconds: float) -> None: pass
    def message(self, text: str) -> None: pass
    def close(self) -> None: pass


@dataclass
class Tally:
    """What became of the items a run took: submitted, released (with an error), or lost (the lease
    went away while the item was worked, so its result was dropped)."""

    submitted: int = 0
    released: int = 0
    lost: int = 0
    cancelled: int = 0  # its order was cancelled while the item was worked: dropped, not a failure of the run
    held: list[dict[str, Any]] = field(default_factory=list)  # auto-approvals an [approve] rule held
    messages: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def run_workers(work: Callable[[int], None], count: int, *, stopping: threading.Event, name: str) -> None:
    """Run ``work(n)`` for n in 0..count-1 on threads and wait for all of them.

    The first error of a worker sets ``stopping`` (workers check it before taking new work) and is
    re-raised here once every worker has stopped. Ctrl-C reaches only this thread: it sets ``stopping``
    too, waits until every started worker has finished what it holds, and is then re-raised. Each
    worker's end is an Event of our own: after an interrupted ``join``, ``Thread.is_alive`` can be
    wrong (a worker would be abandoned holding a lease)."""
    errors: list[BaseException] = []
    finished = [threading.Event() for _ in range(count)]

    def guarded(n: int) -> None:
        try:
            work(n)
        except BaseException as exc:
            errors.append(exc)
            stopping.set()
        finally:
            finished[n].set()

    threads = [threading.Thread(target=guarded, args=(n,), name=f"{name}-{n}") for n in range(count)]
    try:
        for thread in threads:
            thread.start()
        for done in finished:
            done.wait()
    except KeyboardInterrupt:
        stopping.set()
        for thread, done in zip(threads, finished, strict=True):
            if thread.ident is not None:  # started, so it will set its event
                done.wait()
        raise
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


class AgentLoop:
    """Take and work items on ``workers`` threads until there are none left, the budget is spent,
    a worker fails, or Ctrl-C (each worker then finishes the item it holds)."""

    name = "workctl-agent"

    def __init__(self, handle: Handle, *, agent: str, workers: int, max_items: int | None, ttl: int | None,
                 listener: Listener | None = None, heartbeat_every: float | None = None):
        self.handle, self.agent, self.workers = handle, agent, max(1, workers)
        self.max_items, self.ttl = max_items, ttl
        self.listener: Listener = listener or Quiet()
        self.heartbeat_every = heartbeat_every
        self.tally = Tally()
        self.stopping = threading.Event()
        self._taken = 0
        self._budget_lock = threading.Lock()
        self._worker_state = threading.local()  # the item a submit leased next, per worker thread
        self.heartbeats: Heartbeats

    # -- what subclasses provide -----------------------------------------------------------------
    def checkout(self, wc: Handle, agent: str) -> dict[str, Any] | None:
        """The next item for this worker, or None when there is no work."""
        raise NotImplementedError

    def work(self, wc: Handle, item: dict[str, Any], agent: str) -> None:
        """Work one leased item to its end: submitted, released, or lost."""
        raise NotImplementedError

    def agent_of(self, worker: int) -> str:
        """The agent id worker ``worker`` checks out under."""
        return self.agent

    def claim_scope(self) -> tuple[str | None, str | None]:
        """(order id, type) the loop's checkouts are scoped to: the next claim of a submit uses the same."""
        return None, None

    # -- submit, and the next item in the same transaction ------------------------------------------
    def submit(self, wc: Handle, item: dict[str, Any], result: Any, agent: str) -> dict[str, Any]:
        """Submit the item's result and, while the budget allows, lease this worker's next item in the
        same transaction (``submit --next``: one commit per item). The next item is worked by the loop."""
        want = self._take_slot()
        order_id, type_name = self.claim_scope() if want else (None, None)  # a scope alone asks for a next item
        try:
            response = wc.submit(item["id"], result, agent=agent, lease_token=item["lease_token"], next=want,
                                 next_order=order_id, next_type=type_name, ttl=self.ttl)
        except BaseException:
            if want:
                self._return_slot()
            raise
        if want:
            leased = response.get("next")
            if leased is None:  # no work left in scope: this worker is done, as after an empty checkout
                self._return_slot()
                self._worker_state.exhausted = True
            self._worker_state.pending = leased
        return response

    # -- the loop --------------------------------------------------------------------------------
    def run_loop(self) -> None:
        every = self.heartbeat_every or beat_interval(self.handle.config, self.ttl)
        with Heartbeats(self.handle.peer, ttl=self.ttl, every=every) as self.heartbeats:
            if self.workers == 1:
                self._drain(self.handle, 0)
            else:
                # Ctrl-C: every worker finishes (submits or releases) the item it holds, then exit 130.
                run_workers(self._worker, self.workers, stopping=self.stopping, name=self.name)

    def _worker(self, n: int) -> None:
        peer: AbstractContextManager[Handle] = self.handle.peer()
        with peer as wc:
            self._drain(wc, n)

    def _drain(self, wc: Handle, n: int) -> None:
        agent = self.agent_of(n)
        state = self._worker_state
        state.pending, state.exhausted = None, False
        while True:
            item, state.pending = state.pending, None
            if item is None:  # nothing leased by the last submit: check out (a slot of the budget each)
                if state.exhausted or not self._take_slot():
                    return
                item = self.checkout(wc, agent)
                if item is None:
                    return
            self.listener.item_started(item)
            self.work(wc, item, agent)

    def _return_slot(self) -> None:
        with self._budget_lock:
            self._taken -= 1

    def _take_slot(self) -> bool:
        with self._budget_lock:
            if self.stopping.is_set():
                return False
            if self.max_items is not None and self._taken >= self.max_items:
                return False
            self._taken += 1
            return True

    # -- outcomes --------------------------------------------------------------------------------
    def note(self, text: str) -> None:
        with self.tally.lock:
            self.tally.messages.append(text)
        self.listener.message(text)

    def lost(self, item: dict[str, Any], why: str) -> None:
        with self.tally.lock:
            self.tally.lost += 1
        self.note(f"lease on item {item['id']} was lost ({why}); its result was dropped")
        self.listener.item_finished(item, "lost", 0, 0)

    def gone(self, item: dict[str, Any], exc: WorkctlError) -> None:
        """The lease went away while the item was worked: cancelled with its order, or lost."""
        if exc.code == "order_cancelled":
            with self.tally.lock:
                self.tally.cancelled += 1
            self.note(f"order {item['order_id']} was cancelled; item {item['id']} dropped")
            self.listener.item_finished(item, "cancelled", 0, 0)
            return
        self.lost(item, exc.message)

    def approve_order(self, wc: Handle, order_id: str) -> dict[str, Any] | None:
        """Approve an order whose last item this run submitted, unless an [approve] rule holds it."""
        try:
            return wc.approve_guarded(order_id)
        except Conflict as exc:
            if exc.code != "approval_held":
                raise
            with self.tally.lock:
                self.tally.held.append({"order_id": order_id, **(exc.details[0] if exc.details else {}),
                                        "message": exc.message})
            self.note(exc.message)
            return None

    def incomplete(self, message: str) -> WorkctlError:
        """The error of a run that took items it could not submit (each loop names its own code)."""
        raise NotImplementedError

    def outcome(self, *, order_id: str | None, type_name: str | None,
                unavailable: dict[str, str] | None = None) -> tuple[WorkctlError | None, dict[str, Any]]:
        """The run's verdict (CLI.md "Agent loops"): exit 0 only when every item taken was submitted (and
        approved, with --approve). Exit 7 when a source was unavailable, an item was released with an error
        or its lease lost, or an order in scope is failed or dead-lettered (on every run until an operator
        acts); exit 6 when an [approve] rule held an order. Returns (the error or None, the troubles found)."""
        t = self.tally
        troubles = self.handle.troubles(order_id=order_id, type_name=type_name)
        if unavailable:
            names = ", ".join(sorted(unavailable))
            first = next(iter(unavailable.values()))
            return RemoteError(f"source {names} unavailable ({first}); the batches taken were released without "
                               "spending an attempt and the next run retries them", code="source_unavailable",
                               details=[{"source": name, "error": why} for name, why in unavailable.items()]), troubles
        if t.released or t.lost:
            what = ", ".join(part for part in (f"{t.released} released with an error" if t.released else "",
                                               f"{t.lost} lost their lease" if t.lost else "") if part)
            return self.incomplete(f"{t.released + t.lost} of the items this run took were not submitted ({what}); "
                                   "they are retried by a later run (see the errors above)"), troubles
        if troubles["failed_orders"]:
            listed = troubles["failed_orders"]
            first = listed[0]["id"]
            return RemoteError(f"{len(listed)} order(s) in scope are failed or dead-lettered ("
                               + ", ".join(f"{o['id']} {o['state']}" for o in listed[:5])
                               + f"); retry them (workctl retry --order {first}) or cancel them "
                               f"(workctl cancel {first})", code="order_failed", details=listed), troubles
        if troubles["waiting_for_source"]:
            waiting = troubles["waiting_for_source"]
            return RemoteError("batches are waiting for a source that was unavailable at their last attempt ("
                               + ", ".join(f"order {w['order_id']}: {w['items']} from {w['source']}" for w in waiting[:5])
                               + "); no attempt was spent, the next run retries them", code="source_unavailable",
                               details=waiting), troubles
        if t.held:
            return Conflict(t.held[0]["message"] if len(t.held) == 1 else
                            f"{len(t.held)} auto-approvals held by [approve] rules: "
                            + "; ".join(h["message"] for h in t.held[:3]), code="approval_held", details=t.held), troubles
        return None, troubles
