"""What a store or a target can hold, checked on values that are already parsed (at propose and submit).

The strict JSON reader refuses NaN, Infinity and out-of-range integers while parsing what comes in on
the command line; this module checks the same things on Python values, which also arrive through the
library and the HTTP API, and adds two rules a parser cannot know:

* ``storable_problems(value)``: every integer within signed 64 bits (SQLite's INTEGER; a larger one
  made every approve crash), every float finite (SQLite stores NaN as NULL while the diff said NaN,
  and ``json.dumps`` writes invalid JSON), every string valid Unicode (no lone surrogates) and at most
  ``max_chars`` characters, and nothing but JSON types;
* ``integer_problems(schema, value)``: no float where the JSON Schema says ``integer``. jsonschema
  accepts ``1.0`` as an integer (JSON has one number type), but ``user_ids: [1.0, 2]`` is not a list
  of ids and ``batch_size: 10.0`` is not a count: Python keeps them floats and they break later.

Each problem is ``{"path": "synced_users.3.data.mrr", "message": "…"}`` (the path of ``validate``'s
problems; ``$`` is the document itself). Large arrays of one type are checked with C-speed passes.
"""

from __future__ import annotations

import math
from typing import Any, Iterator


Problem = dict[str, str]  # {"path": "synced_users.3.verified", "message": "…"}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DEFAULT_MAX_CHARS = 65_536
MAX_PROBLEMS = 50


def _join(path: str, key: Any) -> str:
    return str(key) if path == "$" else f"{path}.{key}"


def storable_problems(value: Any, *, max_chars: int = DEFAULT_MAX_CHARS, path: str = "$") -> list[Problem]:
    """Every value in ``value`` that the store or the target could not hold as given (at most 50)."""
    problems: list[Problem] = []
    for where, message in _walk(value, path, max_chars):
        problems.append({"path": where, "message": message})
        if len(problems) >= MAX_PROBLEMS:
            break
    return problems


def scalar_problem(value: Any, max_chars: int = DEFAULT_MAX_CHARS) -> str | None:
    """Why one scalar cannot be stored, or None."""
    kind = type(value)
    if kind is str:
        if len(value) > max_chars:
            return f"a string of {len(value):,} characters is longer than the limit of {max_chars:,}"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "holds a lone surrogate (not valid Unicode text)"
        return None
    if kind is int:
        return None if INT64_MIN <= value <= INT64_MAX else "integer out of range (more than signed 64 bits)"
    if kind is float:
        return None if math.isfinite(value) else f"{value!r} is not a number JSON or the target can hold"
    if value is None or kind is bool:
        return None
    return f"a {kind.__name__} is not a JSON value"


_WHOLE = object()  # the key of an entry whose path is already whole


def _walk(value: Any, path: str, max_chars: int) -> Iterator[tuple[str, str]]:
    # Each entry keeps its parent's path and its key: the path string is built only for a container (its
    # children need it) or a problem, never for the many scalars that are fine (a submit walks thousands).
    stack: list[tuple[Any, str, Any]] = [(value, path, _WHOLE)]
    while stack:
        current, parent, name = stack.pop()
        kind = type(current)
        if kind is dict:
            where = parent if name is _WHOLE else _join(parent, name)
            for key, sub in reversed(list(current.items())):
                if type(key) is not str:
                    yield _join(where, key), "object keys must be strings"
                elif len(key) > max_chars:
                    yield where, f"an object key is longer than the limit of {max_chars:,} characters"
                else:
                    stack.append((sub, where, key))
        elif kind is list:
            if not _uniform_ok(current, max_chars):
                where = parent if name is _WHOLE else _join(parent, name)
                stack.extend((sub, where, i) for i, sub in reversed(list(enumerate(current))))
        else:
            problem = scalar_problem(current, max_chars)
            if problem:
                yield (parent if name is _WHOLE else _join(parent, name)), problem


def _uniform_ok(values: list[Any], max_chars: int) -> bool:
    """True when a list is all ints (or all strings) and all of them are storable: proven in C-speed passes."""
    if not values:
        return True
    kinds = set(map(type, values))
    if kinds == {int}:
        return INT64_MIN <= min(values) and max(values) <= INT64_MAX
    if kinds == {str}:
        if max(map(len, values)) > max_chars:
            return False
        try:
            "".join(values).encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    return False


def integer_problems(schema: Any, value: Any, path: str = "$") -> list[Problem]:
    """Floats where ``schema`` says ``integer`` (through properties, additionalProperties, items, prefixItems)."""
    problems: list[Problem] = []
    _integers(schema, value, path, problems)
    return problems[:MAX_PROBLEMS]


def _says_integer(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "integer" or (isinstance(kind, list) and "integer" in kind and "number" not in kind)


def _integers(schema: Any, value: Any, path: str, problems: list[Problem]) -> None:
    if not isinstance(schema, dict) or len(problems) >= MAX_PROBLEMS:
        return
    if type(value) is float:
        if _says_integer(schema):
            problems.append({"path": path, "message": f"{value!r} is not an integer (a whole number is written "
                                                      "without a decimal point or exponent)"})
        return
    if type(value) is dict:
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            _integers(properties.get(key, extra), sub, _join(path, key), problems)
    elif type(value) is list:
        prefix = schema.get("prefixItems") or []
        items = schema.get("items")
        if not prefix and isinstance(items, dict) and not set(map(type, value)) & {float, dict, list}:
            return  # nothing in it could be a float where an integer belongs (map(type) runs at C speed: 1M ids)
        for i, sub in enumerate(value):
            _integers(prefix[i] if i < len(prefix) else items, sub, _join(path, i), problems)
