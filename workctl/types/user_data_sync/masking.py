"""Masking of sensitive field values in human output (``[types."user.data.sync"] sensitive_fields``).

Only what people read is masked: tables of ``diff``, ``approve``, ``revert`` and ``why``. JSON output
stays exact, because scripts (and revert) need the real values; protect it like the database itself.

    user1@example.com  ->  u***@example.com      (an e-mail keeps its first character and its domain)
    +1-555-0000001     ->  ***01                 (anything else keeps its last two characters, if it has 7+)
    short              ->  ***
    null               ->  null                  (an empty value is not a secret)
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ...errors import Invalid


def sensitive_fields(settings: Mapping[str, Any]) -> frozenset[str]:
    value = settings.get("sensitive_fields", ())
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
        raise Invalid('config: [types."user.data.sync"] sensitive_fields must be a list of strings',
                      code="config_invalid")
    return frozenset(value)


def mask(value: Any) -> Any:
    if value is None or value == "":
        return value
    text = str(value)
    if "@" in text:
        local, _, domain = text.partition("@")
        return f"{local[:1]}***@{domain}"
    return f"***{text[-2:]}" if len(text) >= 7 else "***"


class Masker:
    """``masker(field, value)``: the value to show people."""

    def __init__(self, fields: Iterable[str] = ()):
        self.fields = frozenset(fields)

    def __call__(self, field: str, value: Any) -> Any:
        return mask(value) if field in self.fields else value
