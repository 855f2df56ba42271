"""Performance rewrites that must not change a single output (issue 5).

* Large id arrays are proven valid without jsonschema walking them (workctl.types.bulkcheck), and
  validation reports exactly what full jsonschema validation reports, valid or not.
* ``orders.uuid4_text`` is ``str(uuid.UUID(bytes=…, version=4))``.
* ``jsonio.dumps`` (one cached encoder) is ``json.dumps(…, separators=(",", ":"), ensure_ascii=False)``.
"""

from __future__ import annotations

import pytest

from workctl.errors import Invalid
from workctl.types import bulkcheck, get_type
from workctl.types.base import OrderType

N = 150  # above the threshold set below


@pytest.fixture(autouse=True)
def _small_threshold(monkeypatch):
    """The same logic at a tenth of the size: full jsonschema is quadratic on arrays it cannot sort."""
    monkeypatch.setattr(bulkcheck, "THRESHOLD", 100)


def outcome(order_type: OrderType, payload):
    try:
        order_type.validate_payload(payload)
    except Invalid as exc:
        return exc.code, exc.message, exc.details
    return None


def ids(n=N):
    return list(range(1, n + 1))


def with_(values, index, value):
    values = list(values)
    values[index] = value
    return values


PAYLOADS = {
    "valid": {"source": "crm", "user_ids": ids()},
    "valid-unsorted": {"source": "crm", "user_ids": ids()[::-1], "fields": ["email"]},
    "valid-big-ints": {"source": "crm", "user_ids": [2**63 - 1 - i for i in range(N)]},
    "float-that-looks-like-an-integer": {"source": "crm", "user_ids": with_(ids(), 7, 8.0)},
    "zero": {"source": "crm", "user_ids": with_(ids(), 3, 0)},
    "negative": {"source": "crm", "user_ids": with_(ids(), 120, -5)},
    "too-big": {"source": "crm", "user_ids": with_(ids(), 10, 2**63)},
    "duplicate": {"source": "crm", "user_ids": with_(ids(), 20, 5)},
    "string": {"source": "crm", "user_ids": with_(ids(), 0, "7")},
    "bool": {"source": "crm", "user_ids": with_(ids(), 99, True)},
    "float": {"source": "crm", "user_ids": with_(ids(), 99, 1.5)},
    "null": {"source": "crm", "user_ids": with_(ids(), 149, None)},
    "several-errors": {"source": "nope", "user_ids": with_(with_(ids(), 5, 0), 140, "x"), "extra": 1},
    "other-field-wrong": {"source": "nope", "user_ids": ids(), "batch_size": 0},
    "fields-wrong": {"source": "crm", "user_ids": ids(), "fields": ["bad name"]},
}


class Capped(OrderType):
    """The shape of user.data.sync's array with a cap small enough to test (1,000,000 ids is slow in full)."""

    name = "capped"
    schema = {"type": "object", "required": ["ids"], "additionalProperties": False,
              "properties": {"ids": {"type": "array", "minItems": 1, "maxItems": N + 10, "uniqueItems": True,
                                     "items": {"type": "integer", "minimum": 1}}}}


@pytest.mark.parametrize("n, valid", [(N + 10, True), (N + 11, False)])
def test_max_items(n, valid, monkeypatch):
    fast = outcome(Capped(), {"ids": ids(n)})
    assert (bulkcheck.reduced_schema(Capped.schema, {"ids": ids(n)}) is not None) == valid
    monkeypatch.setattr(bulkcheck, "reduced_schema", lambda schema, payload: None)
    assert fast == outcome(Capped(), {"ids": ids(n)})
    assert (fast is None) == valid


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_same_outcome_as_full_jsonschema(name, monkeypatch):
    order_type = get_type("user.data.sync")
    payload = PAYLOADS[name]
    fast = outcome(order_type, payload)
    monkeypatch.setattr(bulkcheck, "reduced_schema", lambda schema, payload: None)
    full = outcome(order_type, payload)
    assert fast == full
    assert (fast is None) == name.startswith("valid")


def test_only_proven_arrays_skip_jsonschema():
    schema = get_type("user.data.sync").schema
    assert bulkcheck.reduced_schema(schema, PAYLOADS["valid"])["properties"]["user_ids"] == {}
    for name in ("zero", "duplicate", "string", "bool", "float-that-looks-like-an-integer"):
        assert bulkcheck.reduced_schema(schema, PAYLOADS[name]) is None, name
    small = {"source": "crm", "user_ids": ids(bulkcheck.THRESHOLD - 1)}
    assert bulkcheck.reduced_schema(schema, small) is None  # small arrays: jsonschema as before
    assert bulkcheck.reduced_schema(schema, ["not", "an", "object"]) is None


@pytest.mark.parametrize("sub", [
    {"type": "array", "items": {"type": "integer", "multipleOf": 2}},  # a keyword it does not decide
    {"type": "array", "items": {"type": "number"}},
    {"type": "array", "items": {"type": "integer"}, "contains": {"const": 1}},
    {"type": "array"},
    {"type": "array", "items": {"type": "integer", "minimum": "1"}},
])
def test_unknown_keywords_are_left_to_jsonschema(sub):
    assert not bulkcheck.array_is_valid(sub, ids())


def test_task_batch_is_unaffected():
    order_type = get_type("task.batch")
    assert outcome(order_type, {"tasks": list(range(N))}) is None
    assert outcome(order_type, {"tasks": []})[0] == "payload_invalid"


def test_uuid4_text_is_uuid4():
    import os
    import uuid

    from workctl.core.ids import new_id, uuid4_text

    for raw in [bytes(16), b"\xff" * 16, *(os.urandom(16) for _ in range(2000))]:
        assert uuid4_text(raw) == str(uuid.UUID(bytes=raw, version=4))
    assert uuid.UUID(new_id()).version == 4


@pytest.mark.parametrize("value", ["é ü \u2028 \"quoted\"", 1, 1.5, float("nan"), None, True, [], {},
                                   {"b": [1, {"c": None}], "a": "x"}, [1, "2", 3.0], "\x00"])
def test_dumps_is_compact_json_dumps(value):
    import json

    from workctl.jsonio import dumps

    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_dumps_refuses_what_json_dumps_refuses():
    from workctl.jsonio import dumps

    with pytest.raises(TypeError):
        dumps({"x": object()})
    circular: list = []
    circular.append(circular)
    with pytest.raises(ValueError):
        dumps(circular)


# -- schemacheck: a payload decided valid without jsonschema is one jsonschema finds valid ----------------
def _jsonschema_errors(schema, payload):
    import jsonschema

    validator_cls = jsonschema.validators.validator_for(schema)
    return list(validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER).iter_errors(payload))


@pytest.mark.parametrize("type_name, payload", [
    ("user.data.sync", {"source": "crm", "user_ids": [1, 2, 3]}),
    ("user.data.sync", {"source": "billing", "user_ids": ids(), "fields": ["email", "phone"], "batch_size": 10}),
    ("task.batch", {"tasks": [{"n": 1}], "note": "x", "max_attempts": 2}),
])
def test_schemacheck_passes_common_valid_payloads_without_jsonschema(type_name, payload):
    from workctl.types.schemacheck import surely_valid

    schema = get_type(type_name).schema
    assert surely_valid(schema, payload)
    assert _jsonschema_errors(schema, payload) == []


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_schemacheck_never_passes_what_jsonschema_refuses(name):
    from workctl.types.schemacheck import surely_valid

    schema = get_type("user.data.sync").schema
    payload = PAYLOADS[name]
    decided = surely_valid(schema, payload)
    if decided:
        assert _jsonschema_errors(schema, payload) == []
    assert decided == name.startswith("valid")  # 8.0 for an id is valid to jsonschema, left to it


def _payloads():
    from hypothesis import strategies as st

    scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**64), st.floats(allow_nan=True),
                       st.text(max_size=5), st.sampled_from(["crm", "billing", "email", "phone", "bad name",
                                                             "2026-01-01T00:00:00Z", "replace", "fill_empty"]))
    value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4) |
                         st.dictionaries(st.sampled_from(["a", "email", "n", "x y"]), inner, max_size=3),
                         max_leaves=8)
    keys = st.sampled_from(["source", "user_ids", "fields", "batch_size", "max_attempts", "since", "mode",
                            "field_map", "policies", "min_success_ratio", "extra", "tasks", "note"])
    return st.dictionaries(keys, value, max_size=6) | value


def test_schemacheck_agrees_with_jsonschema_on_generated_payloads():
    """Property: for any payload, "surely valid" implies jsonschema reports nothing (the other way round
    is allowed: undecided payloads go to jsonschema)."""
    from hypothesis import given, settings

    from workctl.types.schemacheck import surely_valid

    schemas = [get_type("user.data.sync").schema, get_type("task.batch").schema]

    @settings(max_examples=400, deadline=None)
    @given(_payloads())
    def check(payload):
        for schema in schemas:
            if surely_valid(schema, payload):
                assert _jsonschema_errors(schema, payload) == [], payload

    check()
