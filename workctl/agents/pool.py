"""Running a loop on several threads, as sync and run --exec do, with a clean Ctrl-C."""

from __future__ import annotations

import threading
from typing import Callable


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
        for thread, done in zip(threads, finished):
            if thread.ident is not None:  # started, so it will set its event
                done.wait()
        raise
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
