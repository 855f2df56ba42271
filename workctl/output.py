"""The one renderer. JSON goes to stdout with ``json.dumps`` (never through rich); human tables use a
stdout rich Console created on first use; errors and warnings go to stderr.

User- and source-supplied strings are rendered as ``Text`` (no markup interpretation).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from rich.console import Console

from .errors import WorkctlError

_console: Console | None = None


def console() -> Console:
    global _console
    if _console is None:
        from rich.console import Console
        _console = Console(highlight=False)
    return _console


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def print_nl(documents: Iterable[Any]) -> None:
    for document in documents:
        sys.stdout.write(json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


def line(text: str = "") -> None:
    """A plain line for humans (no markup)."""
    sys.stdout.write(text + "\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    grid = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
    console().print(grid)


def error(exc: WorkctlError, *, as_json: bool) -> None:
    if as_json:
        print_json(exc.to_dict())
    sys.stderr.write(f"workctl: error: {exc.message}\n")
    for detail in exc.details[:20]:
        if "path" in detail and "message" in detail:
            sys.stderr.write(f"  {detail['path']}: {detail['message']}\n")
    if len(exc.details) > 20:
        sys.stderr.write(f"  … and {len(exc.details) - 20} more (see --json)\n")


def warn(message: str) -> None:
    sys.stderr.write(f"workctl: warning: {message}\n")


def compact(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"
