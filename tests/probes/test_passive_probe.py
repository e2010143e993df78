"""kind: passive — its config, its sample (OpenTelemetry's TraceIdRatioBased decision), and how a
window's counts become the run's verdict; counts of several members add up (the cluster seam)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from tracecanary.assertions.verdict import Verdict, verdict_of
from tracecanary.probes.passive import PassiveCounts, PassiveProbe, parse_fail_if, window_findings
from tracecanary.probes.registry import PROBES


def spec(**extra: Any) -> PassiveProbe:
    return PassiveProbe.model_validate({
        "id": "webhook", "kind": "passive", "every": "60s", "entry": {"span": "POST /webhook", "service": "ingest"},
        "expect": {"trace": {"tree": [{"span": "POST /webhook"}]}}, **extra})


def test_registered_with_its_defaults() -> None:
    assert PROBES["passive"] is PassiveProbe
    p = spec()
    assert (p.sample, p.fail_if, p.min_traces, p.judges_run) == (1.0, "failure_ratio > 1%", 20, False)
    assert spec(sample="10%").sample == pytest.approx(0.1) and spec(sample=0.25).sample == 0.25


@pytest.mark.parametrize("text, parsed", [("failure_ratio > 1%", (">", 0.01)),
                                          ("failure_ratio>=0.5%", (">=", 0.005))])
def test_fail_if_forms(text: str, parsed: tuple[str, float]) -> None:
    op, ratio = parse_fail_if(text)
    assert op == parsed[0] and ratio == pytest.approx(parsed[1])


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_the_sample_is_opentelemetrys_trace_id_ratio_decision(rate: float) -> None:
    p, otel, rnd = spec(sample=rate), TraceIdRatioBased(rate), random.Random(5)
    for _ in range(2000):
        tid = rnd.getrandbits(128)
        ours = p.samples(tid.to_bytes(16, "big"))
        assert ours == (otel.should_sample(None, tid, "x").decision is Decision.RECORD_AND_SAMPLE)


def counts(judged: int, failed: int, **kinds: int) -> PassiveCounts:
    return PassiveCounts(judged=judged, failed=failed, kinds=Counter(kinds))


def test_a_window_under_min_traces_is_unknown() -> None:
    [f] = window_findings(counts(19, 19, **{"trace.missing": 19}), "failure_ratio > 1%", 20)
    assert f.severity is Verdict.UNKNOWN and f.type == "passive.too_few"
    assert f.message == "19 entry traces judged in the window, fewer than min_traces 20: the failure ratio is not judged"


def test_the_failure_ratio_against_the_threshold() -> None:
    [f] = window_findings(counts(1000, 31, **{"trace.missing": 20, "trace.forbid": 11}), "failure_ratio > 1%", 20)
    assert verdict_of([f]) is Verdict.FAIL and f.observed == 0.031 and f.expected == "failure_ratio > 1%"
    assert f.message == ("31 of 1000 entry traces failed (3.10%); fail_if failure_ratio > 1%; "
                         "findings: trace.missing ×20, trace.forbid ×11")
    assert window_findings(counts(100, 1), "failure_ratio > 1%", 20) == []  # exactly at the threshold
    assert verdict_of(window_findings(counts(100, 1), "failure_ratio >= 1%", 20)) is Verdict.FAIL
    assert window_findings(counts(100, 0), "failure_ratio > 0%", 20) == []


def test_members_counts_add_up_to_the_windows_verdict() -> None:
    """In a cluster each member judges its own partitions' traces; the owner sums the window."""
    members = [counts(400, 2, **{"trace.missing": 2}), counts(350, 5, **{"trace.forbid": 5}), counts(0, 0)]
    total = PassiveCounts.total(members)
    assert (total.judged, total.failed, dict(total.kinds)) == (750, 7, {"trace.missing": 2, "trace.forbid": 5})
    assert window_findings(members[0], "failure_ratio > 0.9%", 20) == []  # 0.5% alone
    assert verdict_of(window_findings(total, "failure_ratio > 0.9%", 20)) is Verdict.FAIL  # 0.93% together
