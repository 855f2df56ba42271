"""``python -m workctl.docsgen.helps``: every command's ``--help`` in one process, plain.

Reads a JSON list of argv word lists on stdin, writes the JSON list of what ``workctl WORDS --help``
prints. Its own process because Typer decides at import whether help is drawn with rich boxes
(``TYPER_USE_RICH``), and one process instead of one per command because start-up is most of the cost.
"""

from __future__ import annotations

import os

os.environ["TYPER_USE_RICH"] = "0"  # before typer is imported: plain click help, no boxes, no colour

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402


def render(words: list[str]) -> str:
    from ..cli.app import app

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            app([*words, "--help"], prog_name="workctl", standalone_mode=False)
        except SystemExit as stop:  # click's --help exits 0 after printing
            if stop.code not in (0, None):
                raise
    return "\n".join(line.rstrip() for line in out.getvalue().strip("\n").splitlines())


if __name__ == "__main__":
    json.dump([render(words) for words in json.load(sys.stdin)], sys.stdout)
