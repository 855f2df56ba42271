"""workctl export [--output FILE] / workctl import FILE|- : move a store's orders to another store (e.g.
from SQLite to PostgreSQL)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..cli import render
from ._common import Json, boundary, open_workctl


@boundary
def export(
    ctx: typer.Context,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write to this file (default: stdout).")] = None,
) -> None:
    """Write every order, item, event and record of the store as JSON lines (for workctl import).

    Example: workctl --db workctl.db export -o store.jsonl"""
    with open_workctl(ctx) as wc:
        if output is None:
            wc.export_store(sys.stdout)
            return
        try:
            handle = open(output, "x", encoding="utf-8")
        except OSError as exc:
            from ..errors import Usage

            raise Usage(f"cannot write {output}: {exc.strerror} (export never overwrites a file)",
                        code="usage") from None
        with handle:
            result = wc.export_store(handle)
    sys.stderr.write(f"Exported {result['lines']} lines to {output}\n")


@boundary
def import_(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="An export file, or - for stdin.", metavar="FILE")],
    json_: Json = False,
) -> None:
    """Load an export into a new, empty store, all or nothing (orders, items, events, keys, tokens).

    Example: workctl --db postgresql://db.internal/workctl import store.jsonl"""
    with open_workctl(ctx) as wc:
        if source == "-":
            result = wc.import_store(sys.stdin.buffer)
        else:
            try:
                handle = open(source, "rb")
            except OSError as exc:
                from ..errors import Invalid

                raise Invalid(f"cannot read {source}: {exc.strerror}", code="input_unreadable") from None
            with handle:
                result = wc.import_store(handle)
    if json_:
        render.print_json(result)
        return
    tables = ", ".join(f"{n} {t}" for t, n in result["imported"].items() if n)
    render.line(f"Imported {result['rows']} rows ({tables or 'nothing'})")
