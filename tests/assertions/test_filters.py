"""Tracetest's value filters in assertions and outputs (``assertions/filters.py``), with assertion texts
taken from Tracetest's own example tests (kubeshop/tracetest ``examples/``, ``testing/``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tracecanary.assertions.expect import TraceOutput
from tracecanary.assertions.filters import FilterError, apply_filters, parse_filters
from tracecanary.assertions.outputs import trace_outputs
from tracecanary.assertions.selectors import SelectorSyntaxError, parse_assertion, run_check
from tracecanary.assertions.spans import Span, SpanKind

PAYLOAD = json.dumps({"id": 143, "fields": {"routingKey": "queue.synchronizePokemon"}, "ratio": 1.0,
                      "items": [{"spec": {"id": "a1"}}, {"spec": {"id": "b2"}}], "empty": {}, "tags": []})


def span(**attributes: Any) -> Span:
    return Span("a" * 32, "b" * 16, None, "import pokemon", SpanKind.CONSUMER, 1, 2, "worker", attributes, {})


@pytest.mark.parametrize("text", [
    """attr:messaging.payload | json_path '$.id' = "143\"""",
    """attr:messaging.payload | json_path '$.fields.routingKey' = "queue.synchronizePokemon\"""",
    """attr:messaging.payload   |   json_path   '$.id'  =  143""",
    "attr:messaging.payload | json_path '$.items[*].spec.id' contains \"b2\"",
    "attr:messaging.payload | json_path '$.items[*].spec.id' not-contains \"c3\"",
    "attr:messaging.payload | json_path '$.items[*].spec.id' | length = 2",
    "attr:messaging.payload | json_path '$.items[*].spec.id' | get_index last = b2",
    "attr:messaging.payload | json_path '$.ratio' = 1",
    "attr:messaging.payload | json_path '$.empty' = \"{}\"",
    "attr:messaging.payload | json_path '$.tags' = \"[]\"",
    "attr:messaging.payload | json_path '$.id' | type = number",
    "attr:messaging.payload | json_path '$.fields' | type = json",
    "attr:messaging.payload | regex '\"id\": [0-9]+' = '\"id\": 143'",
    "attr:messaging.payload | regex_group '\"routingKey\": \"([a-z]+)\\.' = queue",
    "attr:messaging.payload | length > 10",
])
def test_filters_hold_on_a_real_payload(text: str) -> None:
    assert run_check("", [text], [span(**{"messaging.payload": PAYLOAD})]) == []


@pytest.mark.parametrize(("text", "why"), [
    ("attr:messaging.payload | json_path '$.id' = \"6\"", "has '143'"),
    ("attr:messaging.payload | json_path '$.missing' = 1", "has no messaging.payload | json_path '$.missing'"),
    ("attr:name | json_path '$.id' = 1", "json_path: invalid JSON input"),
    ("attr:messaging.payload | json_path '$.items[*].spec.id' | get_index 5 = 1", "index out of boundaries: 5 out of 2"),
    ("attr:messaging.payload | json_path '$.items[*].spec.id' contains \"c3\"", "has ['a1', 'b2']"),
])
def test_filters_fail_with_what_they_saw(text: str, why: str) -> None:
    [message] = run_check("", [text], [span(**{"messaging.payload": PAYLOAD, "name": "not json"})])
    assert why in message, message


@pytest.mark.parametrize(("text", "error"), [
    ("attr:x | jsonpath '$.id' = 1", "unknown filter 'jsonpath'"),
    ("attr:x | json_path = 1", "filter json_path needs an argument"),
    ("attr:x | json_path '$[' = 1", "filter json_path '$['"),
    ("attr:x | regex '(' = 1", "filter regex '('"),
    ("attr:x | get_index first = 1", "filter get_index 'first'"),
])
def test_bad_filters_are_load_errors(text: str, error: str) -> None:
    with pytest.raises(SelectorSyntaxError, match="assertion") as e:
        parse_assertion(text)
    assert error in str(e.value)


def test_parse_keeps_the_rest() -> None:
    filters, rest = parse_filters(" | json_path '$.a' | length >= 2")
    assert [f.name for f in filters] == ["json_path", "length"] and rest == " >= 2"
    with pytest.raises(FilterError, match="cannot process an array"):
        apply_filters(["a"], parse_filters("| json_path '$.a'")[0])


def test_outputs_through_filters() -> None:
    outputs = [TraceOutput(name="POKEMON_ID", selector="", value="attr:db.result | json_path '$.id'"),
               TraceOutput(name="KEY", value="attr:messaging.payload | json_path '$.fields.routingKey'"),
               TraceOutput(name="GONE", value="attr:messaging.payload | json_path '$.nope'")]
    spans = [span(**{"db.result": '{"id": 52, "name": "meowth"}', "messaging.payload": PAYLOAD})]
    assert trace_outputs(outputs, spans) == {"POKEMON_ID": "52", "KEY": "queue.synchronizePokemon"}
    with pytest.raises(ValueError, match="unknown filter"):
        TraceOutput(name="X", value="attr:db.result | jq '.id'")
