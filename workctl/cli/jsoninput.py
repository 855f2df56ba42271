"""Reading JSON options: inline JSON, ``@path/to/file.json``, or ``-`` for stdin — bounded and strict.

Everything goes through the one strict reader (``workctl.strictjson``): valid UTF-8, no NaN/Infinity,
integers within signed 64 bits, finite numbers, bounded depth; the size limit is checked while reading,
before parsing. A refusal is exit 5 (``invalid_json``, or ``input_too_large``) naming where the input came
from and the JSON path of the problem — never the input's content, which may be a file full of secrets.
"""

from __future__ import annotations

import sys
from typing import Any, BinaryIO

from .. import strictjson
from ..errors import Invalid

# Larger inputs are refused before parsing (a 1,000,000-id proposal is about 8 MB).
MAX_INPUT_BYTES = strictjson.DEFAULT_MAX_BYTES


def _read(stream: BinaryIO) -> bytes:
    return stream.read(MAX_INPUT_BYTES + 1)


def _stdin() -> bytes | str:
    """Standard input as bytes (a text stream without a buffer, as test runners give, as text)."""
    buffer = getattr(sys.stdin, "buffer", None)
    return _read(buffer) if buffer is not None else sys.stdin.read(MAX_INPUT_BYTES + 1)


_SAYS = {
    "syntax": "invalid JSON from {origin}: {reason} at {path}",
    "encoding": "{origin} is not UTF-8 text ({reason} at {path})",
    "size": "input from {origin} {reason}",
}


def read_json(value: str, *, option: str) -> Any:
    if value == "-":
        data: bytes | str = _stdin()
        origin = "stdin"
    elif value.startswith("@"):
        path = value[1:]
        origin = path
        try:
            with open(path, "rb") as handle:
                data = _read(handle)
        except OSError as exc:
            raise Invalid(f"{option}: cannot read {path}: {exc.strerror}", code="input_unreadable") from exc
    else:
        data, origin = value, "the command line"
    if len(data) > MAX_INPUT_BYTES:
        raise Invalid(f"{option}: input from {origin} is larger than the {MAX_INPUT_BYTES // (1024 * 1024)} MiB "
                      "limit", code="input_too_large")
    try:
        return strictjson.loads(data, max_bytes=MAX_INPUT_BYTES, what=f"{option} from {origin}")
    except strictjson.StrictJsonError as exc:
        code = "input_too_large" if exc.kind == "size" else "invalid_json"
        template = _SAYS.get(exc.kind, "JSON from {origin} refused: {reason} at {path}")
        reason = exc.reason.removeprefix("is ")
        raise Invalid(f"{option}: " + template.format(origin=origin, reason=reason, path=exc.path), code=code,
                      details=[{"path": exc.path, "message": exc.reason, "kind": exc.kind}]) from None
