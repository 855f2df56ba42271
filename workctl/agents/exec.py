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
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import default_agent
from ..errors import Conflict, Invalid, NoWork
from .loop import AgentLoop, Handle, Listener

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


class RunHandle(Handle, Protocol):
    def show(self, order_id: str) -> dict[str, Any]: ...
    def pending_item_count(self, order_id: str | None = None, type_name: str | None = None) -> int: ...


class Runner(AgentLoop):
    name = "workctl-run"

    def __init__(self, wc: RunHandle, options: RunOptions, *, listener: Listener | None = None,
                 heartbeat_every: float | None = None):
        super().__init__(wc, agent=options.agent or default_agent(), workers=options.parallel,
                         max_items=options.max_items, ttl=options.ttl, listener=listener,
                         heartbeat_every=heartbeat_every)
        self.wc = wc
        self.options = options
        self.errors: list[dict[str, Any]] = []
        self.seconds = 0.0

    def run(self) -> Runner:
        started = time.monotonic()
        if self.options.order_id:
            self.wc.show(self.options.order_id)  # NotFound before any work
        self.listener.started(self.wc.pending_item_count(self.options.order_id, self.options.type_name))
        try:
            self.run_loop()
        finally:
            self.seconds = time.monotonic() - started
        return self

    def to_dict(self) -> dict[str, Any]:
        t = self.tally
        done = t.submitted + t.released + t.lost
        return {"items": {"submitted": t.submitted, "released": t.released, "lost": t.lost},
                "errors": self.errors, "seconds": round(self.seconds, 3),
                "items_per_second": round(done / self.seconds, 1) if self.seconds else None}

    def agent_of(self, worker: int) -> str:
        return self.agent if self.workers == 1 else f"{self.agent}#{worker + 1}"

    def checkout(self, wc: Handle, agent: str) -> dict[str, Any] | None:
        try:
            return wc.checkout(self.options.order_id, agent=agent, type_name=self.options.type_name,
                               ttl=self.options.ttl)["item"]
        except NoWork:
            return None

    def work(self, wc: Handle, item: dict[str, Any], agent: str) -> None:
        env = {**os.environ, "WORKCTL_ITEM_ID": item["id"], "WORKCTL_ORDER_ID": item["order_id"],
               "WORKCTL_LEASE_TOKEN": item["lease_token"], "WORKCTL_AGENT_ID": agent}
        with self.heartbeats.keep(item, agent) as beat:
            problem, result = self._execute(item, env)
        if beat.lost is not None:
            return self.lost(item, str(beat.lost))
        if problem is None:
            try:
                wc.submit(item["id"], result, agent=agent, lease_token=item["lease_token"])
                with self.tally.lock:
                    self.tally.submitted += 1
                self.listener.item_finished(item, "submitted", 1, 0)
                return None
            except Conflict as exc:
                return self.lost(item, exc.message)
            except Invalid as exc:
                problem = f"result refused: {exc.message}"
        try:
            released = wc.release(item["id"], agent=agent, error=problem, lease_token=item["lease_token"])
        except Conflict as exc:
            return self.lost(item, exc.message)
        with self.tally.lock:
            self.tally.released += 1
            self.errors.append({"item_id": item["id"], "error": problem, "state": released["item"]["state"]})
        self.note(f"item {item['id']}: {problem}; released ({released['item']['state']})")
        self.listener.item_finished(item, "released", 0, 1)
        return None

    def _execute(self, item: dict[str, Any], env: dict[str, str]) -> tuple[str | None, Any]:
        """Run the command for one item: (None, result) or (the problem, None)."""
        proc = subprocess.Popen(self.options.command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        try:
            out, err = proc.communicate(json.dumps(item), timeout=self.options.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return f"command timed out after {self.options.timeout} s", None
        if proc.returncode != 0:
            return f"command exited {proc.returncode}: {err.strip()[-STDERR_TAIL:]}", None
        try:
            return None, json.loads(out)
        except json.JSONDecodeError as exc:
            return f"command printed invalid JSON on stdout: {exc.msg} at line {exc.lineno}", None

    def lost(self, item: dict[str, Any], why: str) -> None:
        with self.tally.lock:
            self.errors.append({"item_id": item["id"], "error": f"lease lost: {why}", "state": "lost"})
        super().lost(item, why)
