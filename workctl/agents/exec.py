"""``workctl run --exec CMD``: the agent loop for shell commands, in one process.

For each item: check out, start CMD (through the shell) with the item JSON on stdin and
WORKCTL_ITEM_ID / WORKCTL_ORDER_ID / WORKCTL_LEASE_TOKEN / WORKCTL_AGENT_ID in its environment,
heartbeat while it runs, and submit what it prints on stdout as the result. A non-zero exit, output
that is not UTF-8 JSON, a refused result or a timeout releases the item with the error (a counted
attempt) and the loop goes on. A lease lost while the command runs stops the command and drops its result.

The command runs in a process group of its own, killed as a whole (``sh -c 'sleep 20 & …'`` included) at
``--timeout``, when its lease is lost, when it is done (stragglers), and when ``run`` exits — even by
``kill -9``: a small watchdog process, in a group of its own, holds a pipe from ``run`` and kills every
registered group when that pipe closes (``run`` died), and the shell also gets ``PR_SET_PDEATHSIG``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Any, Protocol

from ..config import default_agent
from ..errors import Conflict, Invalid, NoWork, RemoteError, WorkctlError
from ..limits import clean_text
from .heartbeat import Held
from .loop import AgentLoop, Handle, Listener

STDERR_TAIL = 2000
POLL_SECONDS = 0.1  # how often a running command is checked for its deadline and its lease

# The watchdog: reads "add PGID" / "del PGID" lines from run; at EOF (run exited or was killed) it kills
# every process group still registered.
_WATCHDOG = (
    "import os, signal, sys\n"
    "groups = set()\n"
    "for line in sys.stdin:\n"
    "    op, _, pgid = line.strip().partition(' ')\n"
    "    if pgid.isdigit():\n"
    "        (groups.add if op == 'add' else groups.discard)(int(pgid))\n"
    "for pgid in groups:\n"
    "    try:\n"
    "        os.killpg(pgid, signal.SIGKILL)\n"
    "    except OSError:\n"
    "        pass\n"
)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when run's thread that started it dies (Linux prctl)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog still covers it


class Watchdog:
    """Kills the registered process groups when this process goes away (see the module docstring)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.pipe: IO[bytes] = self.proc.stdin  # type: ignore[assignment]

    def tell(self, op: str, pgid: int) -> None:
        try:
            self.pipe.write(f"{op} {pgid}\n".encode())
            self.pipe.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        try:
            self.pipe.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


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
    approve: bool = False


class RunHandle(Handle, Protocol):
    def order_state(self, order_id: str) -> str: ...
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
        self.error: WorkctlError | None = None
        self.troubles: dict[str, Any] = {"failed_orders": [], "waiting_for_source": []}
        self.approved: list[str] = []
        self.watchdog: Watchdog | None = None  # started with the first command (a run with no work starts none)
        self._watchdog_lock = threading.Lock()

    def run(self) -> Runner:
        started = time.monotonic()
        if self.options.order_id:
            self.wc.order_state(self.options.order_id)  # NotFound before any work (reads one column)
        self.listener.started(self.wc.pending_item_count(self.options.order_id, self.options.type_name))
        try:
            self.run_loop()
        finally:
            if self.watchdog is not None:
                self.watchdog.close()
            self.seconds = time.monotonic() - started
        self.error, self.troubles = self.outcome(order_id=self.options.order_id, type_name=self.options.type_name)
        return self

    def incomplete(self, message: str) -> WorkctlError:
        return RemoteError(message, code="run_incomplete")

    def to_dict(self) -> dict[str, Any]:
        t = self.tally
        done = t.submitted + t.released + t.lost
        report = {"items": {"submitted": t.submitted, "released": t.released, "lost": t.lost,
                            "cancelled": t.cancelled},
                  "errors": self.errors, "approved": self.approved, "held": t.held,
                  "failed_orders": self.troubles["failed_orders"], "seconds": round(self.seconds, 3),
                  "items_per_second": round(done / self.seconds, 1) if self.seconds else None}
        if self.error is not None:
            report.update(self.error.to_dict())
        return report

    def agent_of(self, worker: int) -> str:
        return self.agent if self.workers == 1 else f"{self.agent}#{worker + 1}"

    def claim_scope(self) -> tuple[str | None, str | None]:
        return self.options.order_id, None if self.options.order_id else self.options.type_name

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
            problem, result = self._execute(item, env, beat)
        if beat.lost is not None:
            return self.gone(item, beat.lost)
        if problem is None:
            try:
                response = self.submit(wc, item, result, agent)
            except Conflict as exc:
                return self.gone(item, exc)
            except Invalid as exc:
                problem = f"result refused: {exc.message}"
            else:
                with self.tally.lock:
                    self.tally.submitted += 1
                self.listener.item_finished(item, "submitted", 1, 0)
                if self.options.approve and response["order"]["state"] == "submitted":
                    if self.approve_order(wc, item["order_id"]) is not None:
                        with self.tally.lock:
                            self.approved.append(item["order_id"])
                return None
        try:
            released = wc.release(item["id"], agent=agent, error=clean_text(problem), lease_token=item["lease_token"])
        except Conflict as exc:
            return self.gone(item, exc)
        with self.tally.lock:
            self.tally.released += 1
            self.errors.append({"item_id": item["id"], "error": problem, "state": released["item"]["state"]})
        self.note(f"item {item['id']}: {problem}; released ({released['item']['state']})")
        self.listener.item_finished(item, "released", 0, 1)
        return None

    def _execute(self, item: dict[str, Any], env: dict[str, str], beat: Held) -> tuple[str | None, Any]:
        """Run the command for one item: (None, result) or (the problem, None). Output is read as bytes."""
        with self._watchdog_lock:
            if self.watchdog is None:
                self.watchdog = Watchdog()
            watchdog = self.watchdog
        proc = subprocess.Popen(self.options.command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, process_group=0, preexec_fn=_die_with_parent)
        watchdog.tell("add", proc.pid)
        try:
            outcome = self._wait(proc, json.dumps(item).encode(), beat)
        finally:
            kill_group(proc.pid)  # stragglers (a command's background children) go with it
            watchdog.tell("del", proc.pid)
        if isinstance(outcome, str):
            return outcome, None
        out, err = outcome
        if proc.returncode != 0:
            tail = err.decode("utf-8", errors="replace").strip()[-STDERR_TAIL:]
            return f"command exited {proc.returncode}: {tail}", None
        try:
            text = out.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"command printed invalid UTF-8 on stdout (byte {exc.start})", None
        try:
            return None, json.loads(text)
        except json.JSONDecodeError as exc:
            return f"command printed invalid JSON on stdout: {exc.msg} at line {exc.lineno}", None
        except (ValueError, RecursionError) as exc:
            return f"command printed JSON that cannot be read: {type(exc).__name__}", None

    def _wait(self, proc: subprocess.Popen[bytes], data: bytes, beat: Held) -> tuple[bytes, bytes] | str:
        """Feed stdin and collect the output, checking the deadline and the lease every POLL_SECONDS; kill the
        command's process group when either runs out. Returns (stdout, stderr), or the problem."""
        timeout = self.options.timeout
        deadline = time.monotonic() + timeout if timeout else None
        pending: bytes | None = data
        while True:
            try:
                return proc.communicate(pending, timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pending = None  # stdin was handed over with the first call
            except BrokenPipeError:  # the command did not read its stdin: fine
                pending = None
                continue
            stop = None
            if beat.lost is not None:
                stop = f"lease lost while the command ran ({beat.lost.message}); the command was stopped"
            elif deadline is not None and time.monotonic() >= deadline:
                stop = f"command timed out after {timeout:g} s (its process group was killed)"
            if stop:
                kill_group(proc.pid)
                proc.communicate()
                return stop

    def lost(self, item: dict[str, Any], why: str) -> None:
        with self.tally.lock:
            self.errors.append({"item_id": item["id"], "error": f"lease lost: {why}", "state": "lost"})
        super().lost(item, why)
