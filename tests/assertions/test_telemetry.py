"""The `unknown` rule, pure: which services an expectation names, and when a miss becomes `unknown`."""

from __future__ import annotations

import pytest

from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.telemetry import (
    FINDING_TYPE,
    Silence,
    named_services,
    no_telemetry,
    service_text,
    silent,
    telemetry_flowed,
)
from tracecanary.assertions.verdict import Finding, Verdict, rank, verdict_of, worst


def exp(doc: dict[str, object]) -> TraceExpectation:
    return TraceExpectation.model_validate(doc)


def test_named_services_walks_the_tree_and_alternatives_but_not_forbid() -> None:
    e = exp({
        "tree": [{"span": "POST /webhook", "service": "ingest",
                  "children": [{"span": "enrich", "descendants": [{"span": "db", "service": "store"}]}],
                  "linked": [{"span": "orders process", "service": "worker"}]}],
        "forbid": [{"service": "legacy"}],
        "any_of": [{"tree": [{"span": "cache.get", "service": {"matches": "^cache-"}}]},
                   {"tree": [{"span": "x", "service": "ingest"}]}],
    })
    assert [service_text(p) for p in named_services(e)] == ["ingest", "matches '^cache-'", "store", "worker"]
    assert named_services(exp({"tree": [{"span": "a", "children": [{"span": "b"}]}]})) == []


def test_silent_needs_named_services_and_no_span_of_theirs_anywhere() -> None:
    pats = named_services(exp({"tree": [{"span": "a", "service": "shop-*"}, {"span": "b", "service": "worker"}]}))
    assert silent(pats, {"tracecanary"}, set())
    assert not silent([], {"tracecanary"}, set())  # names no service: never unknown
    assert not silent(pats, {"tracecanary", "shop-api"}, set())  # the trace holds one of theirs (glob)
    assert not silent(pats, {"tracecanary"}, {"worker"})  # it sent spans for other traces: a real miss
    assert not silent(pats, {"tracecanary"}, None)  # the intake cannot tell: no claim of silence
    assert silent(pats, {"tracecanary"}, {"billing", "shop"})  # "shop" does not match "shop-*"


MISS = Finding(type="trace.missing", path="expect.trace.tree[0]", message='expected span "a" (svc ingest), not found')
SILENCE = Silence(services=("ingest", "worker"), since_trigger_s=60.0)


def test_silence_finding_says_what_was_missing_and_since_when() -> None:
    f = SILENCE.finding()
    assert f.type == FINDING_TYPE and f.severity is Verdict.UNKNOWN and f.path == "expect.trace"
    assert f.message == ("no spans from ingest, worker since the trigger 1m ago (never seen by the intake): "
                         "the telemetry pipeline may be down")
    seen = Silence(("ingest",), 4.0, {"ingest": 754.0}, pull="sentry failed: GET /trace/: 503").finding()
    assert seen.message == ("no spans from ingest since the trigger 4s ago (last seen: ingest 12.6m ago; "
                            "sentry failed: GET /trace/: 503): the telemetry pipeline may be down")
    assert seen.details["last_seen_ago_s"] == {"ingest": 754.0} and seen.details["pull"].startswith("sentry")


def test_a_trace_miss_alone_becomes_unknown_and_keeps_its_explanation() -> None:
    degraded = Finding(type="response.degraded", severity=Verdict.DEGRADED, message="latency 2s > degraded 1s")
    any_of = Finding(type="trace.any_of", path="expect.trace.any_of", message="none of the 2 alternatives holds")
    out = no_telemetry([degraded, MISS, any_of], SILENCE)
    assert out[0].type == FINDING_TYPE
    assert [(f.type, f.severity) for f in out[1:]] == [
        ("response.degraded", Verdict.DEGRADED), ("trace.missing", Verdict.UNKNOWN), ("trace.any_of", Verdict.UNKNOWN)]
    assert out[2].message == MISS.message
    assert verdict_of(out) is Verdict.UNKNOWN


@pytest.mark.parametrize("other", [
    Finding(type="response.status", path="expect.response.status", message="status 500, expected 200"),
    Finding(type="side_effect", path="expect.side_effects[0]", message="slack C1: no message within 60s"),
    Finding(type="trace.forbid", path="expect.trace.forbid[0]", message='span "x" is forbidden'),
    Finding(type="trace.limit", path="expect.trace.limits.max_spans", message="501 spans > max 500"),
    Finding(type="trace.count", path="expect.trace.tree[0]", message="expected at most 1 × span a, observed 2"),
    Finding(type="teardown", message="teardown failed: 500"),
    Finding(type="error", severity=Verdict.ERROR, message="trigger refused"),
], ids=lambda f: f.type)
def test_anything_but_an_excusable_trace_miss_keeps_the_verdict(other: Finding) -> None:
    findings = [MISS, other]
    assert no_telemetry(findings, SILENCE) == findings
    assert verdict_of(no_telemetry(findings, SILENCE)) in (Verdict.FAIL, Verdict.ERROR)


def test_no_silence_or_nothing_failed_changes_nothing() -> None:
    assert no_telemetry([MISS], None) == [MISS]
    ok = [Finding(type="trace.degraded", severity=Verdict.DEGRADED, message="slow")]
    assert no_telemetry(ok, SILENCE) == ok  # passed anyway (an alternative naming no service held)


def test_unknown_sits_between_degraded_and_fail() -> None:
    assert worst([Verdict.DEGRADED, Verdict.UNKNOWN]) is Verdict.UNKNOWN
    assert worst([Verdict.UNKNOWN, Verdict.FAIL]) is Verdict.FAIL
    assert rank(Verdict.PASS) < rank(Verdict.DEGRADED) < rank(Verdict.UNKNOWN) < rank(Verdict.FAIL) < rank(Verdict.ERROR)
    assert not Verdict.UNKNOWN.ok


def test_telemetry_flowed_reads_the_trace_report() -> None:
    assert telemetry_flowed(None) is None
    assert telemetry_flowed({"verdict": "pass"}) is None
    assert telemetry_flowed({"telemetry": {"services": ["a"], "flowed": True}}) is True
    assert telemetry_flowed({"telemetry": {"services": ["a"], "flowed": False}}) is False
    assert telemetry_flowed({"telemetry": {"services": ["a"], "flowed": None}}) is None
