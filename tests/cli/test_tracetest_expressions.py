"""Assertion texts from Tracetest's own tests (kubeshop/tracetest ``testing/server-tracetesting``, Pokeshop
examples): bare ``var:X`` operands, ``| json_path`` on the trigger span's response, the always-true checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tracecanary.daemon.cli.tracetest_docs import variables
from tracecanary.daemon.cli.tracetest_import import Conversion, _response_assertion

HERE = Path("test.yaml")


def response_of(*texts: str) -> tuple[dict[str, Any], Conversion]:
    conv, response = Conversion(source="buffer"), {}
    for line, text in enumerate(texts, 1):
        _response_assertion(conv, HERE, line, text, response)
    return response, conv


def test_bare_variables_in_assertions_become_environment_values() -> None:
    assert variables("attr:tracetest.run.trigger.test_id = var:HTTP_TEST_ID", expression=True) == (
        'attr:tracetest.run.trigger.test_id = "${HTTP_TEST_ID}"', {"HTTP_TEST_ID"})
    assert variables('attr:db.result contains env:POKEMON_URL', expression=True)[0] == \
        'attr:db.result contains "${POKEMON_URL}"'
    assert variables('attr:x = "var:literal"', expression=True) == ('attr:x = "var:literal"', set())
    assert variables("http://shop/var:x")[0] == "http://shop/var:x"  # not an expression: left alone


def test_trigger_span_assertions_become_expect_response() -> None:
    response, conv = response_of(
        "attr:tracetest.selected_spans.count = 1",
        "attr:tracetest.span.start_time > 0",
        "tracetest.response.status = 200",
        "attr:tracetest.response.body | json_path '$.spec.id' = var:VARIABLE_SET_ID",
        "attr:tracetest.response.body | json_path '$.items[*].spec.id' contains var:HTTP_TEST_ID",
        "attr:tracetest.response.body | json_path '$.categories' != \"[]\"",
        "attr:tracetest.response.body | json_path '$.picture' != \"\"",
        "attr:tracetest.span.duration < 500ms",
    )
    assert response == {
        "status": 200, "max_latency": "500ms",
        "json": {"$.spec.id": "${VARIABLE_SET_ID}", "$.items[*].spec.id": {"contains": "${HTTP_TEST_ID}"},
                 "$.categories": {"not": {"equals": []}}, "$.picture": {"not": {"equals": ""}}}}
    assert conv.omissions == [] and conv.env == {"VARIABLE_SET_ID", "HTTP_TEST_ID"}


def test_what_does_not_convert_is_listed() -> None:
    _, conv = response_of("attr:tracetest.selected_spans.count = 2",
                          "attr:tracetest.response.body | json_path '$.id' = 1",
                          "attr:tracetest.response.body | json_path '$.id' = 2",
                          "attr:tracetest.response.headers contains \"x\"")
    assert [o.line for o in conv.omissions] == [1, 3, 4]
    assert all(o.why.startswith("trigger assertion ") for o in conv.omissions)
    assert "a second assertion on $.id" in conv.omissions[1].why
