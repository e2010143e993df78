"""judge_response: pure judgement of a ResponseSummary.to_dict() against ResponseExpectation."""

from __future__ import annotations

from typing import Any

import pytest

from tracecanary.assertions.response import ResponseExpectation, judge_response
from tracecanary.assertions.verdict import Verdict, verdict_of
from tracecanary.probes.base import ResponseSummary


def _resp(status: int = 200, json: Any = None, latency_s: float = 0.05, **kw: Any) -> dict[str, Any]:
    return ResponseSummary(status=status, json=json, latency_s=latency_s, **kw).to_dict()


def _exp(**kw: Any) -> ResponseExpectation:
    return ResponseExpectation.model_validate(kw)


def test_default_is_any_2xx() -> None:
    assert judge_response(None, _resp(204)) == []
    [f] = judge_response(None, _resp(503, body_text="down"))
    assert f.type == "response.status" and f.observed == 503 and f.expected == "any 2xx"
    assert f.message == 'status 503, expected any 2xx; body: "down"' and f.details["body"] == "down"


@pytest.mark.parametrize(("spec", "status", "ok"), [
    (200, 200, True), (200, 201, False), ([200, 202], 202, True), ("200-299", 250, True),
    ("200-299", 300, False), ("4xx", 404, True), ("4xx", 500, False), ("201", 201, True),
])
def test_status_forms(spec: Any, status: int, ok: bool) -> None:
    assert (judge_response(_exp(status=spec), _resp(status)) == []) is ok


def test_missing_json_fields_report_missing_data() -> None:
    doc = {"signal_id": "s1", "enrichment": {"score": 3}, "items": [{"id": 1}]}
    exp = _exp(json_fields=["signal_id", "enrichment.score", "$.items[0].id", "variant", "enrichment.gex"])
    findings = judge_response(exp, _resp(json=doc))
    assert [f.expected for f in findings] == ["variant", "enrichment.gex"]
    assert all(f.type == "response.missing_data" for f in findings)
    assert findings[0].observed == ["enrichment", "items", "signal_id"]


def test_not_json_means_every_field_missing() -> None:
    [f] = judge_response(_exp(json_fields=["a"]), _resp(body_text="<html>"))
    assert f.type == "response.missing_data" and "not JSON" in f.message


def test_json_value_matchers_with_filters() -> None:
    doc = {"state": "queued", "items": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 5}]}
    exp = _exp(json={"state": {"one_of": ["queued", "done"]}, "$.items[?sku == 'B'].qty": {"gt": 3},
                     "items[0].qty": 3})
    [f] = judge_response(exp, _resp(json=doc))
    assert f.type == "response.json" and f.observed == 2 and "expected 3, got 2" in f.message


def test_headers_and_body() -> None:
    resp = _resp(headers={"Content-Type": "application/json"}, body_text='{"ok": true}')
    assert judge_response(_exp(headers={"content-type": {"contains": "json"}}, body={"matches": "ok"}), resp) == []
    findings = judge_response(_exp(headers={"X-Missing": {"exists": True}}, body={"matches": "^nope"}), resp)
    assert [f.type for f in findings] == ["response.header", "response.body"]


def test_latency_hard_and_degraded() -> None:
    exp = _exp(max_latency="2s", degraded={"max_latency": "500ms"})
    assert judge_response(exp, _resp(latency_s=0.2)) == []
    [soft] = judge_response(exp, _resp(latency_s=0.8))
    assert soft.severity == Verdict.DEGRADED and "800ms" in soft.message
    [hard] = judge_response(exp, _resp(latency_s=2.5))
    assert hard.severity == Verdict.FAIL and verdict_of([hard]) == Verdict.FAIL


def test_no_response() -> None:
    assert judge_response(None, None) == []
    [f] = judge_response(_exp(status=200), None)
    assert f.type == "response.status" and f.observed is None


def test_invalid_paths_and_status_rejected_at_load() -> None:
    with pytest.raises(ValueError, match="invalid JSONPath"):
        _exp(json_fields=["a[["])
    with pytest.raises(ValueError, match="invalid status 'abc'"):
        _exp(status="abc")
