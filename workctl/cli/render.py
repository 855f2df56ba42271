"""The one renderer. JSON goes to stdout with ``json.dumps`` (never through rich); human tables use a
stdout rich Console created on first use; errors and warnings go to stderr.

User- and source-supplied strings are rendered as ``Text`` (no markup interpretation).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

if TYPE_CHECKING:
    from rich.console import Console

from ..errors import WorkctlError
from ..errors import warn as warn  # re-exported: commands warn through the renderer

_console: Console | None = None


def console() -> Console:
    global _console
    if _console is None:
        from rich.console import Console
        _console = Console(highlight=False)
    return _console


def print_json(document: Any) -> None:
    """One JSON document: indented for a person at a terminal, one compact line for a pipe or file (an
    ``orders --json`` of many orders stays one parseable line, a fraction of the bytes)."""
    if sys.stdout.isatty():
        text = json.dumps(document, indent=2, ensure_ascii=False, default=str)
    else:
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# One encoder for every line: json.dumps with non-default options builds a new one per call, which is a
# third of the cost of a streamed listing's line (log --nl of millions of events).
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def print_nl(documents: Iterable[Any]) -> None:
    write = sys.stdout.write
    for document in documents:
        write(_compact(document) + "\n")
    sys.stdout.flush()


def print_json_stream(head: dict[str, Any], key: str, rows: Iterable[Any],
                      tail: Callable[[], dict[str, Any]] = dict) -> None:
    """One JSON document ``{**head, key: [rows…], **tail()}`` written row by row: a listing of any length in
    constant memory (``tail`` is called after the rows, e.g. for a page's "more" count). Like
    ``print_json``: a row per line on a terminal, one compact line for a pipe or a file."""
    out = sys.stdout
    tty = out.isatty()
    first_sep, sep, close, comma = ("\n  ", ",\n  ", "\n", ", ") if tty else ("", ",", "", ",")
    opening = _compact(head)[:-1]
    out.write(opening + (comma if head else "") + json.dumps(key) + ":" + (" " if tty else "") + "[")
    first = True
    for row in rows:
        out.write((first_sep if first else sep) + _compact(row))
        first = False
    rest = _compact(tail())
    out.write(("" if first else close) + "]" + ("}" if rest == "{}" else comma + rest[1:]) + "\n")
    out.flush()


def more_text(count: int, hint: str, *, what: str = "more") -> str:
    """The "… N more" line of a listing cut by ``--limit`` ('' when nothing was cut): one wording for every
    listing command."""
    return f"… {count} {what} ({hint})" if count else ""


def more_line(count: int, hint: str, *, what: str = "more", to_stderr: bool = False) -> None:
    """Print ``more_text`` (on stderr when stdout carries JSON lines)."""
    if count:
        (sys.stderr if to_stderr else sys.stdout).write(more_text(count, hint, what=what) + "\n")


def line(text: str = "") -> None:
    """A plain line for humans (no markup)."""
    sys.stdout.write(text + "\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table: rich on a terminal; plain aligned columns otherwise (a pipe, a file, ``watch``), with every
    cell whole — ids are never cut — and without importing rich, which costs more start-up than the
    command's own work."""
    if not sys.stdout.isatty():
        plain_table(title, columns, rows)
        return
    from rich.table import Table
    from rich.text import Text

    grid = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
    console().print(grid)


def plain_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cells = [[str(column) for column in columns]]
    cells += [["" if cell is None else " ".join(str(cell).splitlines()) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    out = [title] if title else []
    out += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    sys.stdout.write("\n".join(out) + "\n")


def error(exc: WorkctlError, *, as_json: bool) -> None:
    if as_json and not exc.json_shown:
        print_json(exc.to_dict())
    sys.stderr.write(f"workctl: error: {exc.message}\n")
    if exc.hint:  # the second line: what to do next
        sys.stderr.write(f"workctl: next: {exc.hint}\n")
    for detail in exc.details[:20]:
        if "path" in detail and "message" in detail:
            sys.stderr.write(f"  {detail['path']}: {detail['message']}\n")
    if len(exc.details) > 20:
        sys.stderr.write(f"  … and {len(exc.details) - 20} more (see --json)\n")


def failure_exit_code(exc: BaseException, *, as_json: bool) -> int:
    """The CLI's error boundary (used by the Typer commands and the fast path alike): report ``exc``
    the documented way and return its exit code. Under WORKCTL_DEBUG=1 a bug re-raises instead."""
    import os

    from ..errors import ExitCode

    if isinstance(exc, WorkctlError):
        error(exc, as_json=as_json)
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return int(ExitCode.INTERRUPTED)
    if isinstance(exc, BrokenPipeError):
        # The reader is gone: say nothing, and keep the interpreter's final flush from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return int(ExitCode.BROKEN_PIPE)
    if os.environ.get("WORKCTL_DEBUG"):
        raise exc
    bug = WorkctlError(f"unexpected {type(exc).__name__}: {exc} (this is a bug; set WORKCTL_DEBUG=1 "
                       "for a traceback)", code="internal_error")
    error(bug, as_json=as_json)
    return int(ExitCode.ERROR)


def after_commit(show: Callable[[], None], what: str) -> None:
    """Print the result of an operation that has committed (``what`` says which). Nothing that goes wrong
    while printing — a renderer's bug, a closed stdout, Ctrl-C — may turn that success into a failure:
    it is a warning on stderr, and the command still exits 0."""
    import os

    try:
        show()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 — committed: report, do not fail
        warn(f"{what}; printing the result failed ({type(exc).__name__}: {exc}); --json shows it")


def compact(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


# -- the agent commands' human output, shared by the Typer commands and the fast path --------------
def show_checkout(result: dict[str, Any], json_: bool) -> None:
    if json_:
        print_json(result)
        return
    item = result["item"]
    line(f"Leased item {item['id']} of order {item['order_id']} until {item['lease_expires_at']} "
         f"(attempt {item['attempts']}/{item['max_attempts']}, heartbeat every "
         f"{item['heartbeat_every_seconds']} s)")
    line(f"lease token: {item['lease_token']}")
    line(f"input: {compact(item['input'], 200)}")


def show_heartbeat(result: dict[str, Any], item_id: str, json_: bool) -> None:
    if json_:
        print_json(result)
        return
    line(f"Lease on item {item_id} extended until {result['item']['lease_expires_at']}")


def show_release(result: dict[str, Any], item_id: str, json_: bool) -> None:
    if json_:
        print_json(result)
        return
    item = result["item"]
    line(f"Released item {item_id}: now {item['state']} (attempts {item['attempts']}/{item['max_attempts']})")


def show_submit(response: dict[str, Any], item_id: str, json_: bool) -> None:
    if json_:
        print_json(response)
        return
    order = response["order"]
    line(f"Submitted item {item_id}; order {order['id']} is {order['state']}")
    if "next" in response:  # submit --next
        if response["next"] is None:
            line("No next item to lease (nothing queued in scope)")
        else:
            show_checkout({"item": response["next"]}, False)
