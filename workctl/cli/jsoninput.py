"""Reading JSON options: inline JSON, ``@path/to/file.json``, or ``-`` for stdin; with a size limit."""

from __future__ import annotations

import json
import sys
from typing import Any

from ..errors import Invalid

# Larger inputs are refused before parsing (a 1,000,000-id proposal is about 8 MB).
MAX_INPUT_BYTES = 64 * 1024 * 1024


def read_json(value: str, *, option: str) -> Any:
    if value == "-":
        text = sys.stdin.read(MAX_INPUT_BYTES + 1)
        origin = "stdin"
    elif value.startswith("@"):
        path = value[1:]
        origin = path
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read(MAX_INPUT_BYTES + 1)
        except OSError as exc:
            raise Invalid(f"{option}: cannot read {path}: {exc.strerror}", code="input_unreadable") from exc
        except UnicodeDecodeError as exc:
            raise Invalid(f"{option}: {path} is not UTF-8 text", code="invalid_json") from exc
    else:
        text, origin = value, "the command line"
    if len(text) > MAX_INPUT_BYTES:
        raise Invalid(f"{option}: input from {origin} is larger than the {MAX_INPUT_BYTES // (1024 * 1024)} MiB "
                      "limit", code="input_too_large")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Invalid(f"{option}: invalid JSON from {origin}: {exc.msg} at line {exc.lineno} column {exc.colno}",
                      code="invalid_json",
                      details=[{"path": "$", "message": exc.msg, "line": exc.lineno, "column": exc.colno}]) from exc
