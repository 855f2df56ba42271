"""Progress for long runs (sync, run --exec), on stderr: a rich live bar on a terminal, one plain line
per batch otherwise (cron logs), nothing with --quiet; --verbose: plain lines everywhere, one more
when each batch starts."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from ..agents.loop import Quiet


class LineProgress:
    """No animation: one line per finished batch and per wait, for logs."""

    def __init__(self, stream: Any = None, *, unit: str = "batch", counted: str = "users", verbose: bool = False):
        # sync counts batches and users; run --exec counts items and results.
        self.unit, self.counted, self.verbose = unit, counted, verbose
        self.stream = stream or sys.stderr
        self.done = self.ok = self.failed = 0
        self.total: int | None = None
        self.started_at = time.monotonic()
        self.lock = threading.Lock()

    def _write(self, text: str) -> None:
        with self.lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def started(self, total_items: int | None) -> None:
        self.total = total_items
        self.started_at = time.monotonic()

    def item_started(self, item: dict[str, Any]) -> None:
        if self.verbose:
            self._write(f"workctl: {self.unit} {item.get('id')} of order {item.get('order_id')} started")

    def item_finished(self, item: dict[str, Any], outcome: str, synced: int, failed: int) -> None:
        self.done += 1
        self.ok += synced
        self.failed += failed
        total = f"/{self.total}" if self.total else ""
        rate = self.ok / max(time.monotonic() - self.started_at, 1e-6)
        self._write(f"workctl: {self.unit} {self.done}{total} {outcome}: {synced} {self.counted} ok, {failed} failed "
                    f"(total {self.ok} ok, {self.failed} failed, {rate:.0f} {self.counted}/s)")

    def waiting(self, source: str, reason: str, seconds: float) -> None:
        if seconds >= 1:
            self._write(f"workctl: {source}: {reason}: waiting {seconds:.1f} s")

    def message(self, text: str) -> None:
        self._write(f"workctl: {text}")

    def close(self) -> None:
        pass


class RichProgress(LineProgress):
    """A live bar: batches done / total, users ok / failed, users per second, the current wait, ETA."""

    def __init__(self, *, unit: str = "batch", counted: str = "users") -> None:
        super().__init__(unit=unit, counted=counted)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.bar = Progress(TextColumn(f"{unit}es" if unit.endswith("ch") else f"{unit}s"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[detail]}", markup=False), console=self.console,
                            transient=False)
        self.task = self.bar.add_task("sync", total=None, detail="")
        self.wait_note = ""
        self.bar.start()

    def started(self, total_items: int | None) -> None:
        super().started(total_items)
        self.bar.update(self.task, total=total_items)

    def _detail(self) -> str:
        rate = self.ok / max(time.monotonic() - self.started_at, 1e-6)
        return f"{self.counted} {self.ok} ok / {self.failed} failed, {rate:.0f}/s {self.wait_note}"

    def item_finished(self, item: dict[str, Any], outcome: str, synced: int, failed: int) -> None:
        self.done += 1
        self.ok += synced
        self.failed += failed
        self.wait_note = ""
        self.bar.update(self.task, completed=self.done, detail=self._detail())

    def waiting(self, source: str, reason: str, seconds: float) -> None:
        self.wait_note = f"| {source}: {reason}: waiting {seconds:.0f} s" if seconds >= 1 else ""
        self.bar.update(self.task, detail=self._detail())

    def message(self, text: str) -> None:
        self.bar.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.bar.stop()


def make_progress(*, quiet: bool, unit: str = "batch", counted: str = "users",
                  verbose: bool = False) -> LineProgress | Quiet:
    if quiet:
        return Quiet()
    if verbose:
        return LineProgress(unit=unit, counted=counted, verbose=True)
    return RichProgress(unit=unit, counted=counted) if sys.stderr.isatty() else LineProgress(unit=unit, counted=counted)
