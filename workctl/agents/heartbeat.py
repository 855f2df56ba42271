"""Keeping leases alive while an agent works (sync, run --exec): one background thread per run
beats every lease the run holds, with its own store connection (opened at the first beat, so a run
whose batches finish quickly never opens it)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..errors import Conflict, WorkctlError


def beat_interval(config: Any, ttl: int | None) -> float:
    """How often to beat: the configured heartbeat interval, but at least three beats per lease."""
    return max(1.0, min(config.heartbeat_every_seconds, (ttl or config.ttl_seconds) / 3))


@dataclass
class Held:
    """One lease being kept alive; ``lost`` is set when a beat finds it gone."""

    item: dict[str, Any]
    agent: str
    due: float
    lost: WorkctlError | None = None


class Heartbeats:
    def __init__(self, open_workctl: Callable[[], Any], *, ttl: int | None, every: float,
                 clock: Callable[[], float] = time.monotonic):
        self.open_workctl, self.ttl, self.every, self.clock = open_workctl, ttl, every, clock
        self.tick = min(every / 2, 1.0)
        self._held: dict[str, Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="workctl-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @contextmanager
    def keep(self, item: dict[str, Any], agent: str) -> Iterator[Held]:
        held = Held(item, agent, due=self.clock() + self.every)
        with self._lock:
            self._held[item["id"]] = held
        try:
            yield held
        finally:
            with self._lock:
                self._held.pop(item["id"], None)

    def _run(self) -> None:
        with self.open_workctl() as wc:
            while not self._stop.wait(self.tick):
                now = self.clock()
                with self._lock:
                    due = [held for held in self._held.values() if held.due <= now and held.lost is None]
                for held in due:
                    try:
                        wc.heartbeat(held.item["id"], agent=held.agent, ttl=self.ttl,
                                     lease_token=held.item["lease_token"])
                        held.due = now + self.every
                    except Conflict as exc:  # the lease is gone: the worker drops its result
                        held.lost = exc
                    except WorkctlError:
                        pass  # a locked store: try again at the next tick
