"""``workctl run --exec CMD``: the agent loop for shell commands, in one process.

For each item: check out, start CMD (through the shell) with the item JSON on stdin and
WORKCTL_ITEM_ID / WORKCTL_ORDER_ID / WORKCTL_LEASE_TOKEN / WORKCTL_AGENT_ID in its environment,
heartbeat while it runs, and submit what it prints on stdout as the result. A non-zero exit, output
that is not JSON, a refused result or a timeout releases the item with the error (a counted
attempt) and the loop goes on. A lease lost while the command ran drops its result.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import Conflict, Invalid, NoWork
from ..cli.progress import Quiet
from .heartbeat import Heartbeats, beat_interval
from .pool import run_workers

STDERR_TAIL = 2000


@dataclass
class RunOptions:
    command: str
    order_id: str | None = None
    type_name: str | None = None
    agent: str | None = None
    parallel: int = 1
    max_items: int | None = None
    ttl: int | None = None
    timeout: float | None = None


@dataclass
class RunReport:
    submitted: int = 0
    released: int = 0
    lost: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def to_dict(self) -> dict[str, Any]:
        done = self.submitted + self.released + self.lost
        return {"items": {"submitted": self.submitted, "released": self.released, "lost": self.lost},
                "errors": self.errors, "seconds": round(self.seconds, 3),
                "items_per_second": round(done / self.seconds, 1) if self.seconds else None}


class Runner:
    def __init__(self, wc: Any, options: RunOptions, *, listener: Any = None, heartbeat_every: float | None = None):
        from ..api import default_agent

        self.wc = wc
        self.options = options
        self.agent = options.agent or default_agent()
        self.listener = listener or Quiet()
        self.heartbeat_every = heartbeat_every
        self.report = RunReport()
        self.claimed = 0
        self.claim_lock = threading.Lock()
        self.stopping = threading.Event()

    def _open(self) -> Any:
        from ..api import Workctl
        return Workctl(self.wc.db_path, config=self.wc.config, clock=self.wc.clock)

    def run(self) -> RunReport:
        started = time.monotonic()
        if self.options.order_id:
            self.wc.show(self.options.order_id)  # NotFound before any work
        self.listener.started(self.wc.pending_item_count(self.options.order_id, self.options.type_name))
        every = self.heartbeat_every or beat_interval(self.wc.config, self.options.ttl)
        try:
            with Heartbeats(self._open, ttl=self.options.ttl, every=every) as self.heartbeats:
                # Ctrl-C: each worker finishes (submits or releases) the item it holds, then exit 130.
                run_workers(self._worker, max(1, self.options.parallel), stopping=self.stopping,
                            name="workctl-run")
        finally:
            self.report.seconds = time.monotonic() - started
        return self.report

    def _take_slot(self) -> bool:
        with self.claim_lock:
            if self.stopping.is_set():
                return False
            if self.options.max_items is not None and self.claimed >= self.options.max_items:
                return False
            self.claimed += 1
            return True

    def _worker(self, n: int) -> None:
        agent = self.agent if self.options.parallel == 1 else f"{self.agent}#{n + 1}"
        with self._open() as wc:
            while self._take_slot():
                try:
                    item = wc.checkout(self.options.order_id, agent=agent, type_name=self.options.type_name,
                                       ttl=self.options.ttl)["item"]
                except NoWork:
                    return
                self._one(wc, item, agent)

    def _one(self, wc: Any, item: dict[str, Any], agent: str) -> None:
        self.listener.item_started(item)
        env = {**os.environ, "WORKCTL_ITEM_ID": item["id"], "WORKCTL_ORDER_ID": item["order_id"],
               "WORKCTL_LEASE_TOKEN": item["lease_token"], "WORKCTL_AGENT_ID": agent}
        with self.heartbeats.keep(item, agent) as beat:
            proc = subprocess.Popen(self.options.command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
            try:
                out, err = proc.communicate(json.dumps(item), timeout=self.options.timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                timed_out = True
        if beat.lost is not None:
            return self._lost(item, str(beat.lost))
        problem = None
        if timed_out:
            problem = f"command timed out after {self.options.timeout} s"
        elif proc.returncode != 0:
            problem = f"command exited {proc.returncode}: {err.strip()[-STDERR_TAIL:]}"
        else:
            try:
                result = json.loads(out)
            except json.JSONDecodeError as exc:
                problem = f"command printed invalid JSON on stdout: {exc.msg} at line {exc.lineno}"
        if problem is None:
            try:
                wc.submit(item["id"], result, agent=agent, lease_token=item["lease_token"])
                with self.report.lock:
                    self.report.submitted += 1
                self.listener.item_finished(item, "submitted", 1, 0)
                return
            except Conflict as exc:
                return self._lost(item, exc.message)
            except Invalid as exc:
                problem = f"result refused: {exc.message}"
        try:
            released = wc.release(item["id"], agent=agent, error=problem, lease_token=item["lease_token"])
        except Conflict as exc:
            return self._lost(item, exc.message)
        with self.report.lock:
            self.report.released += 1
            self.report.errors.append({"item_id": item["id"], "error": problem, "state": released["item"]["state"]})
        self.listener.message(f"item {item['id']}: {problem}; released ({released['item']['state']})")
        self.listener.item_finished(item, "released", 0, 1)

    def _lost(self, item: dict[str, Any], why: str) -> None:
        with self.report.lock:
            self.report.lost += 1
            self.report.errors.append({"item_id": item["id"], "error": f"lease lost: {why}", "state": "lost"})
        self.listener.message(f"lease on item {item['id']} was lost ({why}); its result was dropped")
        self.listener.item_finished(item, "lost", 0, 0)
