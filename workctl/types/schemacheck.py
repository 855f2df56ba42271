"""Deciding that a payload is valid without importing jsonschema (about 100 ms of start-up for every
``workctl propose``, more than the rest of the command).

``surely_valid(schema, value)`` is True only when jsonschema would report no error: it interprets the
keywords our order types use (type, properties, required, additionalProperties, items, min/maxItems,
uniqueItems, minimum/maximum, exclusiveMinimum/Maximum, enum, const, min/maxLength, pattern,
maxProperties/minProperties, propertyNames) with jsonschema's semantics — a keyword applies only to
instances of its type — and gives up (False) at anything else it meets: ``format``, ``$ref``, the
combinators, an integer-valued float, a non-scalar ``enum`` member. False never decides anything: the
caller then runs jsonschema, which stays the one source of error messages and paths
(``OrderType.validate_payload``). tests/test_schemacheck.py checks it against jsonschema.
"""

from __future__ import annotations

import re
from typing import Any

_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "default", "examples",
                          "deprecated", "readOnly", "writeOnly"})
_TYPES = {
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    "integer": lambda v: type(v) is int,  # jsonschema also takes 1.0: left to it (not decided here)
    "number": lambda v: type(v) in (int, float),
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}
_SCALARS = (str, int, float, bool, type(None))


class _NotDecidable(Exception):
    """A keyword or value this module does not interpret: jsonschema decides."""


def surely_valid(schema: Any, value: Any) -> bool:
    try:
        return _valid(schema, value)
    except (_NotDecidable, re.error, TypeError):
        return False


def _number(value: Any) -> bool:
    return type(value) in (int, float)


def _valid(schema: Any, value: Any) -> bool:
    if schema is True or schema == {}:
        return True
    if not isinstance(schema, dict):
        raise _NotDecidable
    for keyword, argument in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        check = _KEYWORDS.get(keyword)
        if check is None:
            raise _NotDecidable
        if not check(argument, value, schema):
            return False
    return True


def _type(argument: Any, value: Any, schema: dict[str, Any]) -> bool:
    names = [argument] if isinstance(argument, str) else argument
    if not isinstance(names, list) or not all(name in _TYPES for name in names):
        raise _NotDecidable
    if "integer" in names and type(value) is float:
        raise _NotDecidable  # 1.0 is an integer to jsonschema
    return any(_TYPES[name](value) for name in names)


def _properties(argument: Any, value: Any, schema: dict[str, Any]) -> bool:
    if type(value) is not dict:
        return True
    return all(_valid(sub, value[name]) for name, sub in argument.items() if name in value)


def _required(argument: Any, value: Any, schema: dict[str, Any]) -> bool:
    return type(value) is not dict or all(name in value for name in argument)


def _additional(argument: Any, value: Any, schema: dict[str, Any]) -> bool:
    if type(value) is not dict:
        return True
    if "patternProperties" in schema:
        raise _NotDecidable
    known = schema.get("properties", {})
    extra = [name for name in value if name not in known]
    if argument is False:
        return not extra
    return all(_valid(argument, value[name]) for name in extra)


def _items(argument: Any, value: Any, schema: dict[str, Any]) -> bool:
    if type(value) is not list:
        return True
    if "prefixItems" in schema or not isinstance(argument, (dict, bool)):
        raise _NotDecidable
    return all(_valid(argument, element) for element in value)


def _unique(argument: Any, value: Any, schema: dict[str, Any]) -> bool:
    if type(value) is not list or argument is False:
        return True
    if argument is not True:
        raise _NotDecidable
    kinds = set(map(type, value))
    if not kinds <= {str, int} or len(kinds) > 1:  # 1 == True == 1.0 to Python, not to jsonschema
        raise _NotDecidable
    return len(set(value)) == len(value)


def _bound(test: Any, applies: Any) -> Any:
    def check(argument: Any, value: Any, schema: dict[str, Any]) -> bool:
        if not applies(value):
            return True
        if not _number(argument):
            raise _NotDecidable
        return bool(test(value, argument))
    return check


def _enum(argument: Any, value: Any, schema: dict[str, Any]) -> bool:
    if not isinstance(argument, list) or not isinstance(value, _SCALARS) or \
            not all(isinstance(member, _SCALARS) for member in argument):
        raise _NotDecidable
    return any(type(member) is type(value) and member == value for member in argument)


def _const(argument: Any, value: Any, schema: dict[str, Any]) -> bool:
    return _enum([argument], value, schema)


def _pattern(argument: Any, value: Any, schema: dict[str, Any]) -> bool:
    return type(value) is not str or re.search(argument, value) is not None  # jsonschema: re.search too


def _property_names(argument: Any, value: Any, schema: dict[str, Any]) -> bool:
    return type(value) is not dict or all(_valid(argument, name) for name in value)


_KEYWORDS = {
    "type": _type,
    "properties": _properties,
    "required": _required,
    "additionalProperties": _additional,
    "items": _items,
    "uniqueItems": _unique,
    "enum": _enum,
    "const": _const,
    "pattern": _pattern,
    "propertyNames": _property_names,
    "minimum": _bound(lambda v, a: v >= a, _number),
    "maximum": _bound(lambda v, a: v <= a, _number),
    "exclusiveMinimum": _bound(lambda v, a: v > a, _number),
    "exclusiveMaximum": _bound(lambda v, a: v < a, _number),
    "minItems": _bound(lambda v, a: len(v) >= a, lambda v: type(v) is list),
    "maxItems": _bound(lambda v, a: len(v) <= a, lambda v: type(v) is list),
    "minLength": _bound(lambda v, a: len(v) >= a, lambda v: type(v) is str),
    "maxLength": _bound(lambda v, a: len(v) <= a, lambda v: type(v) is str),
    "minProperties": _bound(lambda v, a: len(v) >= a, lambda v: type(v) is dict),
    "maxProperties": _bound(lambda v, a: len(v) <= a, lambda v: type(v) is dict),
}
