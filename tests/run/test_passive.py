"""The passive judge over a real trace buffer: entry traces are found, judged once with the run's
completion rule (settle after the last span when a whole-trace rule needs it, else at the deadline,
``timeout`` after the entry span started), sampled by trace id, and held within the span budget.

Time is an injected clock moved by hand (monotonic and wall together): spans "arrive over several
seconds" without the test waiting for them. Spans reach the judge through the buffer's tap, both
decoded (``add_spans``) and as raw OTLP protobuf batches (``add_batch``), as the receiver adds them.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from tracecanary.assertions.spans import Span, SpanKind, StatusCode
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.run.passive import PassiveJudge
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.otlp import scan_protobuf
from tracecanary.daemon.spans.otlp_encode import encode_request
from tracecanary.probes.passive import PassiveProbe

pytestmark = pytest.mark.anyio
T0_NS = 1_790_000_000 * 10**9


class Clock:
    def __init__(self) -> None:
        self.s = 1000.0

    def mono(self) -> float:
        return self.s

    def wall_ns(self) -> int:
        return T0_NS + int((self.s - 1000.0) * 1e9)


def probe(pid: str = "webhook", **extra: Any) -> PassiveProbe:
    trace: dict[str, Any] = {"tree": [{"span": "POST /webhook", "service": "ingest",
                                       "children": [{"span": "validate"}, {"span": "charge", "service": "billing"}]}]}
    trace.update(extra.pop("trace", {}))
    return PassiveProbe.model_validate({
        "id": pid, "kind": "passive", "every": "60s", "timeout": "10s",
        "entry": {"span": "POST /webhook", "service": "ingest"}, "expect": {"trace": trace}, **extra})


class Traffic:
    def __init__(self, clock: Clock, seed: int = 3) -> None:
        self.clock, self.rnd = clock, random.Random(seed)

    def trace(self, *, broken: bool = False, error: bool = False) -> list[Span]:
        """Children first, the entry span last (as an OpenTelemetry SDK exports a server span)."""
        tid, now = f"{self.rnd.getrandbits(128):032x}", self.clock.wall_ns()
        entry, validate, charge = (f"{self.rnd.getrandbits(64) | 1:016x}" for _ in range(3))
        spans = [Span(tid, validate, entry, "validate", SpanKind.INTERNAL, now + 10, now + 20, "ingest"),
                 Span(tid, charge, entry, "charge", SpanKind.CLIENT, now + 30, now + 40, "billing",
                      status_code=StatusCode.ERROR if error else StatusCode.UNSET),
                 Span(tid, entry, None, "POST /webhook", SpanKind.SERVER, now, now + 50, "ingest")]
        return [s for s in spans if not (broken and s.name == "charge")]


def rig(*probes: PassiveProbe, max_spans: int = 100_000) -> tuple[Clock, TraceBuffer, PassiveJudge]:
    clock = Clock()
    buffer = TraceBuffer(clock=clock.mono)
    judge = PassiveJudge(max_spans, clock=clock.mono, wall_ns=clock.wall_ns)
    judge.configure(probes)
    buffer.add_tap(judge)
    return clock, buffer, judge


def as_batch(buffer: TraceBuffer, spans: list[Span]) -> None:
    buffer.add_batch(scan_protobuf(encode_request(spans).SerializeToString()))


async def test_whole_traces_pass_at_once_and_a_missing_span_fails_at_the_deadline() -> None:
    clock, buffer, judge = rig(probe())
    traffic = Traffic(clock)
    good, broken = traffic.trace(), traffic.trace(broken=True)
    as_batch(buffer, good + broken)  # raw protobuf, decoded once for the tap
    await judge.process()
    snap = judge.snapshot("webhook")
    assert snap is not None and snap.window.judged == 1 and snap.open_traces == 1
    clock.s += 9.9  # not yet: the deadline is timeout (10 s) after the entry span started
    await judge.process()
    assert judge.snapshot("webhook").window.judged == 1  # type: ignore[union-attr]
    clock.s += 0.2
    await judge.process()
    counts = judge.take("webhook")
    assert (counts.judged, counts.failed, dict(counts.kinds)) == (2, 1, {"trace.missing": 1})
    assert counts.worst == [broken[0].trace_id]
    [result] = judge.snapshot("webhook").recent  # type: ignore[union-attr]
    assert result.verdict is Verdict.FAIL and result.kinds == ("trace.missing",)
    assert 'span "charge"' in result.message and result.entry == 'span "POST /webhook" (svc ingest)'
    assert judge.take("webhook").judged == 0  # a new window
    assert judge.held_spans == 0


async def test_spans_arriving_over_several_seconds_are_judged_once_after_settle() -> None:
    forbid = {"forbid": [{"status": "error"}], "settle": "2s"}
    clock, buffer, judge = rig(probe(trace=forbid))
    validate, charge, entry = Traffic(clock).trace()
    buffer.add_spans([entry])  # the entry first this time: the trace opens, and waits
    await judge.process()
    for span in (validate, charge):
        clock.s += 1.5  # each within settle of the previous: still quiet for less than 2 s
        as_batch(buffer, [span])
        await judge.process()
        assert judge.snapshot("webhook").window.judged == 0  # type: ignore[union-attr]
    clock.s += 1.9
    await judge.process()
    assert judge.snapshot("webhook").window.judged == 0  # type: ignore[union-attr]
    clock.s += 0.2  # 2.1 s of quiet after the last span: whole-trace rules may pass now
    await judge.process()
    snap = judge.snapshot("webhook")
    assert snap is not None and snap.totals == {"pass": 1} and snap.open_traces == 0
    late = Span(entry.trace_id, "00000000000000ff", entry.span_id, "retry", SpanKind.INTERNAL,
                entry.start_ns, entry.end_ns, "ingest", status_code=StatusCode.ERROR)
    clock.s += 1
    buffer.add_spans([late, entry])  # a late span (and a re-sent entry span): no second judgement
    await judge.process()
    snap = judge.snapshot("webhook")
    assert snap is not None and snap.totals == {"pass": 1} and snap.late_spans == 2 and snap.open_traces == 0


async def test_a_forbidden_span_fails_at_once() -> None:
    clock, buffer, judge = rig(probe(trace={"forbid": [{"status": "error"}]}))
    as_batch(buffer, Traffic(clock).trace(error=True))
    await judge.process()
    counts = judge.take("webhook")
    assert (counts.judged, counts.failed, dict(counts.kinds)) == (1, 1, {"trace.forbid": 1})


async def test_traces_without_the_entry_span_are_not_judged_and_age_out() -> None:
    clock, buffer, judge = rig(probe())
    other = [s for s in Traffic(clock).trace() if s.name != "POST /webhook"]
    as_batch(buffer, other)
    await judge.process()
    assert judge.held_spans == 2 and judge.snapshot("webhook").pending_traces == 1  # type: ignore[union-attr]
    clock.s += 12.1  # timeout + settle: an entry span that started before them is past its deadline
    await judge.process()
    assert judge.held_spans == 0 and judge.take("webhook").judged == 0


async def test_sampling_is_by_trace_id_so_replicas_pick_the_same_traces_as_otel_would() -> None:
    sampled = probe(sample="10%")
    clock = Clock()
    replicas = [rig(sampled)[1:] for _ in range(2)]
    traffic = Traffic(clock, seed=11)
    traces = [traffic.trace() for _ in range(1000)]
    for buffer, judge in replicas:
        for t in traces:
            as_batch(buffer, t)
        await judge.process()
    otel = TraceIdRatioBased(0.1)
    expected = {t[0].trace_id for t in traces
                if otel.should_sample(None, int(t[0].trace_id, 16), "POST /webhook").decision
                is Decision.RECORD_AND_SAMPLE}
    judged = [judge.take("webhook").judged for _, judge in replicas]
    assert judged == [len(expected), len(expected)]
    assert 60 < len(expected) < 140
    assert {t[0].trace_id for t in traces if sampled.samples(bytes.fromhex(t[0].trace_id))} == expected


async def test_spans_held_stay_within_the_budget() -> None:
    clock, buffer, judge = rig(probe(), max_spans=10)
    traffic = Traffic(clock)
    for _ in range(5):  # children without their entry span: pending, the oldest dropped past 10 spans
        as_batch(buffer, traffic.trace()[:2])
        assert judge.held_spans <= 10
    assert judge.dropped_pending == 0
    as_batch(buffer, traffic.trace()[:2])
    assert judge.held_spans <= 10 and judge.dropped_pending == 1
    for _ in range(6):  # broken entry traces stay open until their deadline: pending goes, then the 6th
        as_batch(buffer, traffic.trace(broken=True))
    await judge.process()
    assert judge.held_spans <= 10
    snap = judge.snapshot("webhook")
    assert snap is not None and snap.open_traces == 5 and snap.pending_traces == 0
    assert snap.window.dropped == 1 and snap.totals == {"dropped": 1}


async def test_a_reload_keeps_an_unchanged_probe_and_forgets_a_removed_one() -> None:
    clock, buffer, judge = rig(probe("a"), probe("b"))
    as_batch(buffer, Traffic(clock).trace(broken=True))
    await judge.process()
    judge.configure([probe("a")])
    assert judge.snapshot("b") is None and judge.held_spans == 2  # b's open trace went with it
    clock.s += 10.1
    await judge.process()
    assert judge.take("a").failed == 1 and judge.held_spans == 0
