"""Keeping a lease alive from a background thread while an agent works (sync, run --exec)."""

from __future__ import annotations

import threading
from typing import Any, Callable

from .errors import Conflict, WorkctlError


class Heartbeat:
    """Keeps a lease alive from a background thread with its own store connection (opened only at
    the first beat, so a batch that finishes quickly costs no connection)."""

    def __init__(self, open_workctl: Callable[[], Any], item: dict[str, Any], agent: str, ttl: int | None,
                 every: float):
        self.open_workctl, self.item, self.agent, self.ttl, self.every = open_workctl, item, agent, ttl, every
        self.stop_event = threading.Event()
        self.lost: WorkctlError | None = None
        self.thread = threading.Thread(target=self._run, name="workctl-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        with self.open_workctl() as wc:
            while not self.stop_event.wait(self.every):
                try:
                    wc.heartbeat(self.item["id"], agent=self.agent, ttl=self.ttl,
                                 lease_token=self.item["lease_token"])
                except Conflict as exc:  # the lease is gone: stop, and let the loop drop the result
                    self.lost = exc
                    return
                except WorkctlError:
                    continue  # a locked store is retried at the next beat
