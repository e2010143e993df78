"""Explanation helpers: what a failing span says about itself, and where a span hangs."""

from __future__ import annotations

from tests.assertions.compact import build_spans
from tracecanary.assertions.explain import MAX_QUOTE, ancestry, error_detail, forbid_message
from tracecanary.assertions.tree import SpanIndex


def test_error_detail_quotes_status_message_and_exception_event() -> None:
    [span] = build_spans([{"name": "fetch-gex-data", "service": "enrich", "status": "error",
                           "status_message": "gex timeout",
                           "events": [{"name": "exception", "attributes": {
                               "exception.type": "TimeoutError", "exception.message": "upstream took 5s"}}]}])
    assert error_detail(span) == 'status ERROR "gex timeout"; exception TimeoutError "upstream took 5s"'
    assert forbid_message(span, "any span (status error)") == (
        'span "fetch-gex-data" (svc enrich) is forbidden: matches any span (status error); '
        'status ERROR "gex timeout"; exception TimeoutError "upstream took 5s"')


def test_error_detail_cuts_long_messages_and_is_empty_for_a_quiet_span() -> None:
    [loud, quiet] = build_spans([{"name": "a", "status": "error", "status_message": "x" * 500},
                                 {"name": "b", "events": [{"name": "retry"}]}])
    assert error_detail(loud) == f'status ERROR "{"x" * MAX_QUOTE}…"'
    assert error_detail(quiet) == ""
    assert forbid_message(quiet, 'span "b"') == 'span "b" (svc svc) is forbidden: matches span "b"'


def test_ancestry_is_bounded() -> None:
    chain: dict[str, object] = {"name": "leaf"}
    for i in range(6):
        chain = {"name": f"level{i}", "children": [chain]}
    spans = build_spans([chain])
    index = SpanIndex([])
    for s in spans:
        index.add(s)
    leaf = next(s for s in spans if s.name == "leaf")
    assert ancestry(index, leaf.span_id) == ('under span "level0" (svc svc) ← span "level1" (svc svc) ← '
                                             'span "level2" (svc svc) ← span "level3" (svc svc) ← …')
    root = next(s for s in spans if s.name == "level5")
    assert ancestry(index, root.span_id) == "as a root span (no parent)"
