"""What every benchmark script shares: the machine description, the results file, a table printer,
timing helpers. Every figure is a ratio against a baseline measured in the same run (absolute times do
not carry over between machines, nor between runs on a noisy one).

The scripts run as ``python bench/NAME.py`` (this directory is then on sys.path); results go to
``bench/results/NAME.json`` unless ``--out`` says otherwise (bench/results/ is git-ignored).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(), "executable": sys.executable}


def out_path(name: str, given: str | None) -> Path:
    return Path(given) if given else RESULTS / f"{name}.json"


def write(path: Path, figure: str, result: dict[str, Any]) -> None:
    document = {"figure": figure, "machine": machine(), "argv": sys.argv[1:],
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"wrote {path}")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _numeric(text: str) -> bool:
    return bool(text) and text.replace(",", "").replace(".", "").replace("-", "").replace("×", "").isdigit()


def verdict(ratio: float, target: float, higher_is_better: bool) -> str:
    ok = ratio >= target if higher_is_better else ratio <= target
    return f"{ratio:.2f}× ({'≥' if higher_is_better else '≤'} {target}×: {'met' if ok else 'MISSED'})"


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def compile_workctl() -> None:
    """Write workctl's .pyc files, as an installed package has them (PYTHONDONTWRITEBYTECODE may be
    set in this environment, which would otherwise make every process compile workctl from source)."""
    import compileall

    compileall.compile_dir(str(ROOT / "workctl"), quiet=1)


def workctl_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m workctl``."""
    script = Path(sys.executable).with_name("workctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "workctl"]


def peak_rss_of(code: str, env: dict[str, str] | None = None, root: Path | str = ROOT) -> int:
    """Peak RSS in bytes of a fresh interpreter running ``code`` (ru_maxrss of that child alone), importing
    workctl from ``root`` (another checkout, for a before/after pair)."""
    wrapper = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); sys.path.insert(0, {str(root)!r})\n"
               f"{code}\nimport resource; print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return int([line for line in proc.stdout.splitlines() if line.startswith("RSS ")][-1].split()[1])


def self_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def other_writer(path: str) -> Iterator[list[float]]:
    """While the block runs, another connection takes the SQLite write lock in a loop (what a concurrent
    ``checkout`` does); yields its waits, whose longest is how long the block held the lock at once."""
    stop, waits = threading.Event(), [0.0]

    def contender() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=120)
        while not stop.is_set():
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            waits.append(time.perf_counter() - started)
            conn.execute("COMMIT")
            time.sleep(0.002)
        conn.close()

    thread = threading.Thread(target=contender, daemon=True)
    thread.start()
    try:
        yield waits
    finally:
        stop.set()
        thread.join()


def pg_schema(admin_url: str, schema: str) -> str:
    """A fresh schema on the PostgreSQL server (dropped first if a run left it), as a store URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{admin_url}?options=-csearch_path%3D{schema}"
