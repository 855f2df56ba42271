"""Field mapping (the seed's variation 2): external field names → local ``users`` columns, applied to
every record a source returns.

Two maps can apply to one record: the source's (``[sources.<name>] field_map``) and the order's
(payload ``field_map``). Both map external names; where they name the same external field, or map
two external fields onto the same column, the order's mapping wins. A mapped value also wins over an
unmapped external field that happens to carry the column's name. (The order's map is checked at
propose by ``workctl.types.user_data_sync.fieldmap``.)
"""

from __future__ import annotations

from typing import Any, Mapping


def apply(record: dict[str, Any], source_map: Mapping[str, str] | None,
          order_map: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The record with external names replaced by local ones (the order's map wins)."""
    if not source_map and not order_map:
        return record
    source_map = source_map or {}
    order_map = order_map or {}
    mapped = {k: v for k, v in record.items() if k not in source_map and k not in order_map}
    for external, value in record.items():  # the source's map first …
        if external in source_map and external not in order_map:
            mapped[source_map[external]] = value
    for external, value in record.items():  # … then the order's, so it wins every collision
        if external in order_map:
            mapped[order_map[external]] = value
    return mapped
