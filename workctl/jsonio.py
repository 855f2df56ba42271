"""JSON as workctl stores it: compact text out (``dumps``), trusted stored text back in (``loads``).

Input from outside (CLI options, files, stdin, source bodies, command output) is read with the strict
reader instead; what comes back from the store was written by ``dumps`` and is trusted.
"""

from __future__ import annotations

import json
from typing import Any

# One encoder for every compact dump: ``json.dumps`` with non-default options builds a new JSONEncoder
# per call, which dominated approve's per-change provenance rows. Same output, same errors.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(value: Any) -> str:
    return _COMPACT(value)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Encoded(str):
    """JSON text already encoded: passed as a payload it is stored as is (a 100k-user diff is ~25 MB,
    so approve encodes it once and stores that text wherever the diff is kept)."""
