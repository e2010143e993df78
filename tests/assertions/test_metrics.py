"""The pure side of ``expect.metrics``: PromQL selectors, increases, histogram quantiles, and when a check
is final (held for good, broken at once) or waits for its window's end."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from tracecanary.assertions.metrics import MetricCheck, judge_metric
from tracecanary.assertions.series import Sample, Selector, bucket_quantile, increases
from tracecanary.assertions.verdict import Verdict

REQ = "http_requests_total"


def s(name: str, value: float, **labels: str) -> Sample:
    return Sample(name, labels, value)


@pytest.mark.parametrize(("selector", "hits"), [
    ('http_requests_total{route="/a"}', ["/a"]),
    ('http_requests_total{route!="/a"}', ["/b", "/ab"]),
    ('http_requests_total{route=~"/a.*"}', ["/a", "/ab"]),
    ('http_requests_total{route=~"/a"}', ["/a"]),  # anchored, as in PromQL
    ('http_requests_total{route!~"/a.*"}', ["/b"]),
    ("http_requests_total{route='/b', code=\"\"}", ["/b"]),  # an absent label equals ""
    ('{__name__="http_requests_total", route=`/ab`}', ["/ab"]),
    ('{__name__=~"http_.*_total", route="/b"}', ["/b"]),
])
def test_selector_matchers(selector: str, hits: list[str]) -> None:
    samples = [s(REQ, 1, route=r) for r in ("/a", "/b", "/ab")] + [s("other_total", 1, route="/a")]
    assert [x.labels["route"] for x in Selector.parse(selector).select(samples)] == hits


@pytest.mark.parametrize(("text", "why"), [
    ('x{a~"b"}', "cannot read label matcher"),
    ('x{a="b"', "expected name{"),
    ("{}", "name a metric"),
    ('x{a=~"("}', "bad regex"),
    ('x{a="b",,c="d"}', "cannot read label matcher"),
])
def test_bad_selectors_are_explained(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("{", r"\{").replace("(", r"\(")):
        Selector.parse(text)


def test_increases_count_new_series_from_zero_and_resets_as_the_new_value() -> None:
    before = [s(REQ, 5, route="/a"), s(REQ, 9, route="/b")]
    after = [s(REQ, 7, route="/a"), s(REQ, 2, route="/b"), s(REQ, 3, route="/c")]
    assert [(str(x), was, d) for x, was, d in increases(before, after)] == [
        ('http_requests_total{route="/a"}', 5, 2), ('http_requests_total{route="/b"}', 9, 2),
        ('http_requests_total{route="/c"}', None, 3)]


def test_bucket_quantile_follows_promql() -> None:
    inf = math.inf
    assert bucket_quantile(0.95, {0.1: 10, 0.5: 20, inf: 20}) == pytest.approx(0.46)
    assert bucket_quantile(0.5, {0.25: 0, 0.5: 1, inf: 1}) == pytest.approx(0.375)
    assert bucket_quantile(0.99, {0.1: 0, 1.0: 0, inf: 3}) == 1.0  # in +Inf: the highest finite bound
    assert bucket_quantile(0.5, {0.1: 0, inf: 0}) is None  # no observations
    assert bucket_quantile(0.5, {0.1: 1}) is None  # no +Inf bucket


def check(**fields: object) -> MetricCheck:
    return MetricCheck.model_validate({"scrape": "http://127.0.0.1:9/metrics", **fields})


def test_delta_holds_at_once_and_fails_naming_series_and_both_values() -> None:
    c = check(delta={"metric": f'{REQ}{{route="/a"}}', "gte": 1})
    before = [s(REQ, 3, route="/a", method="POST")]
    held = judge_metric(c, before, [s(REQ, 4, route="/a", method="POST")], window_closed=False)
    assert held.findings == [] and held.final
    waiting = judge_metric(c, before, before, window_closed=False)
    assert not waiting.final
    [miss] = judge_metric(c, before, before, window_closed=True, elapsed_s=2).findings
    assert miss.message == ('metrics scrape http://127.0.0.1:9/metrics: http_requests_total{route="/a"} moved by 0 '
                            'within 2s, expected >= 1 (scraped before → after: '
                            'http_requests_total{method="POST",route="/a"}: 3 → 3)')
    assert miss.observed == [{"series": 'http_requests_total{method="POST",route="/a"}', "before": 3, "after": 3}]


def test_delta_upper_bound_waits_for_the_window_and_fails_at_once_when_exceeded() -> None:
    c = check(delta={"metric": "errors_total", "lte": 0})
    before = [s("errors_total", 1)]
    quiet = judge_metric(c, before, before, window_closed=False)
    assert quiet.findings == [] and not quiet.final  # a negative check is judged when its window closes
    assert judge_metric(c, before, before, window_closed=True).findings == []
    broken = judge_metric(c, before, [s("errors_total", 2)], window_closed=False)
    assert broken.final and "moved by 1" in broken.findings[0].message


def test_value_gauge_sum_degraded_and_missing() -> None:
    c = check(value={"metric": "queue_depth", "lte": 10, "degraded": {"lte": 5}})
    assert judge_metric(c, None, [s("queue_depth", 2, q="a"), s("queue_depth", 1, q="b")], window_closed=False).final
    [soft] = judge_metric(c, None, [s("queue_depth", 7)], window_closed=False).findings
    assert soft.severity is Verdict.DEGRADED and "queue_depth = 7, degraded: expected <= 5" in soft.message
    [miss] = judge_metric(c, None, [s("other", 1)], window_closed=True).findings
    assert "queue_depth: no series matched (1 series read, none of that name)" in miss.message


def test_quantile_over_bucket_increases_waits_for_an_observation() -> None:
    c = check(value={"metric": "d", "quantile": 0.95, "lte": 0.25})

    def buckets(*counts: float) -> list[Sample]:
        return [s("d_bucket", n, le=le) for le, n in zip(("0.1", "0.5", "+Inf"), counts, strict=True)] + [
            s("d_count", counts[-1])]

    before = buckets(5, 5, 5)  # earlier traffic is not part of the window
    assert not judge_metric(c, before, before, window_closed=False).final
    [none] = judge_metric(c, before, before, window_closed=True).findings
    assert "no observations in 3 bucket series during the window" in none.message
    assert judge_metric(c, before, buckets(6, 6, 6), window_closed=False).findings == []
    [slow] = judge_metric(c, before, buckets(5, 6, 6), window_closed=True).findings
    assert "p95 of d = 0.48 " in slow.message and slow.observed["bucket_increases"] == {"0.1": 0, "0.5": 1, "+Inf": 1}


def test_present_names_what_was_seen() -> None:
    c = check(present=[f'{REQ}{{route="/a"}}'])
    assert judge_metric(c, None, [s(REQ, 0, route="/a")], window_closed=False).final
    [miss] = judge_metric(c, None, [s(REQ, 0, route="/b")], window_closed=True).findings
    assert miss.message.endswith('(1 series of that name: http_requests_total{route="/b"})')


@pytest.mark.parametrize(("fields", "why"), [
    ({"query": "up"}, "exactly one source"),
    ({}, "at least one of present, delta, value"),
    ({"delta": {"gte": 1}}, "delta.metric is required with scrape"),
    ({"value": {"metric": "x"}}, "state at least one bound"),
    ({"value": {"metric": "x", "lte": 1, "quantile": 2}}, "less than or equal to 1"),
])
def test_invalid_checks(fields: dict[str, object], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        check(**fields)
