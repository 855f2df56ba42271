"""The order's field map (the seed's variation 2), checked at propose; the mapping itself is applied to
source records by ``workctl.sources.fieldmap``.

The order's map is checked at propose: every target must be a column the sync may write (the same
allowlist as ``fields``), else ``field_not_allowed`` with the path ``field_map.<external name>``.
The source's map needs no such check: only the order's ``fields`` (already checked) are ever taken
from a mapped record.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from ...errors import Invalid


def check(field_map: Mapping[str, str] | None, allowed: Iterable[str]) -> None:
    """Refuse an order map that writes a column the sync may not write (exit 5, field_not_allowed)."""
    if not field_map:
        return
    allowed = list(allowed)
    problems = [{"path": f"field_map.{external}",
                 "message": f"'{external}' maps onto '{local}', which is not a column the sync may write "
                            f"(allowed: {', '.join(allowed)})"}
                for external, local in field_map.items() if local not in allowed]
    if problems:
        raise Invalid("field_map not allowed: " + "; ".join(p["message"] for p in problems[:3]),
                      code="field_not_allowed", details=problems)
