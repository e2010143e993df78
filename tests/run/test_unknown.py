"""`unknown` through the trace judging loop and the real Runner: the intake clock decides silence.

The buffer is real and fed as the receiver feeds it (decoded spans and scanned protobuf batches); the
runner fires real HTTP requests at a local target and records into a real SQLite store.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from tests.probes.helpers import make_ctx, serve
from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.spans import Span, SpanKind
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.observe.metrics import Metrics
from tracecanary.daemon.run.judge import TraceOutcome, watch_trace
from tracecanary.daemon.run.runner import Runner, RunnerDeps
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.otlp import encode_request, scan_protobuf
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.probes.http import HttpProbe

pytestmark = pytest.mark.anyio

TREE = {"tree": [{"span": "POST /webhook", "service": "ingest",
                  "linked": [{"span": "orders process", "service": "worker"}]}]}
EXPECT = TraceExpectation.model_validate(TREE)


def span(trace_id: str, name: str, service: str, parent: str | None = None) -> Span:
    now = time.time_ns()
    return Span(trace_id, secrets.token_hex(8), parent, name, SpanKind.SERVER, now, now + 1000, service)


async def judge(buffer: TraceBuffer, feed: Callable[[str, str], None] | None = None,
                expectation: TraceExpectation = EXPECT) -> TraceOutcome:
    """Run watch_trace with a short deadline; ``feed(trace_id, root_span_id)`` runs once it waits."""
    async with aiohttp.ClientSession() as session:
        ctx = make_ctx(session, deadline_s=0.3)
        root = Span(ctx.trace.trace_id, ctx.trace.span_id, None, "tracecanary probe p", SpanKind.INTERNAL,
                    ctx.trigger_ns, ctx.trigger_ns, "tracecanary")
        out: list[TraceOutcome] = []

        async def run() -> None:
            out.append(await watch_trace(expectation, ctx, buffer, root))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                while not buffer._watch_traces:  # the run waits on its trace
                    await anyio.lowlevel.checkpoint()
                if feed is not None:
                    feed(ctx.trace.trace_id, ctx.trace.span_id)
    return out[0]


async def test_no_span_from_any_named_service_is_silence() -> None:
    buffer = TraceBuffer()
    buffer.add_spans([span(secrets.token_hex(16), "GET /", "billing")])  # an unnamed service is no evidence
    outcome = await judge(buffer)
    assert outcome.silence is not None and outcome.silence.services == ("ingest", "worker")
    assert [f.type for f in outcome.findings] == ["trace.missing"]
    assert outcome.report is not None
    assert outcome.report["telemetry"] == {"services": ["ingest", "worker"], "flowed": False, "judged": [],
                                           "intake_since_trigger": [], "pulled": None}


async def test_spans_for_other_traces_keep_a_miss_a_fail() -> None:
    buffer = TraceBuffer()

    def other_trace(trace_id: str, root_id: str) -> None:  # a raw protobuf batch, as the receiver adds it
        body = encode_request([span(secrets.token_hex(16), "orders process", "worker")]).SerializeToString()
        buffer.add_batch(scan_protobuf(body))

    outcome = await judge(buffer, other_trace)
    assert outcome.silence is None
    assert outcome.report is not None and outcome.report["telemetry"]["flowed"] is True
    assert outcome.report["telemetry"]["intake_since_trigger"] == ["worker"]


async def test_one_named_service_in_the_trace_is_no_silence() -> None:
    buffer = TraceBuffer()

    def half(trace_id: str, root_id: str) -> None:  # ingest answers; worker's span never comes
        buffer.add_spans([span(trace_id, "POST /webhook", "ingest", root_id)])

    outcome = await judge(buffer, half)
    assert outcome.silence is None and outcome.findings and outcome.findings[0].type == "trace.missing"
    assert outcome.report is not None and outcome.report["telemetry"]["judged"] == ["ingest"]


async def test_spans_only_before_the_trigger_are_silence_with_their_age() -> None:
    now = [1000.0]
    buffer = TraceBuffer(clock=lambda: now[0])
    buffer.add_batch(scan_protobuf(encode_request([span(secrets.token_hex(16), "x", "ingest")]).SerializeToString()))
    now[0] = 1754.0  # 754 s later (on the buffer's clock) the probe fires
    outcome = await judge(buffer)
    assert outcome.silence is not None
    assert outcome.silence.last_seen_ago_s == {"ingest": 754.0}
    message = outcome.silence.finding().message
    assert message.startswith("no spans from ingest, worker since the trigger ") and "ingest 12.6m ago" in message


async def test_an_expectation_naming_no_service_never_reports_silence() -> None:
    outcome = await judge(TraceBuffer(), expectation=TraceExpectation.model_validate({"tree": [{"span": "x"}]}))
    assert outcome.silence is None and outcome.report is not None and "telemetry" not in outcome.report


async def test_the_intake_clock_is_bounded_and_never_claims_what_it_forgot() -> None:
    now = [0.0]
    buffer = TraceBuffer(clock=lambda: now[0])
    intake = buffer.intake
    intake.max_services = 10
    for i in range(25):
        now[0] = float(i)
        buffer.add_spans([span(secrets.token_hex(16), "x", f"svc-{i}")])
    assert len(intake.last_seen()) <= 10 and intake.forgotten >= 15
    assert intake.seen_since(0.0) is None  # a forgotten name may have sent a span since then
    recent = intake.seen_since(24.0)
    assert recent == {"svc-24": 24.0}


# --- the real Runner ---------------------------------------------------------------------------------

@pytest.fixture
async def target() -> AsyncIterator[str]:
    """A system under test that answers but exports no telemetry: /ok (200) and /broken (500)."""

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=500)

    app = web.Application()
    app.router.add_post("/ok", ok)
    app.router.add_post("/broken", broken)
    async with serve(app) as base:
        yield base


@pytest.fixture
async def deps(tmp_path: Path) -> AsyncIterator[RunnerDeps]:
    store = SqliteStore(f"sqlite:///{tmp_path}/runs.db")
    await store.open()
    async with aiohttp.ClientSession() as session:
        yield RunnerDeps(store=store, buffer=TraceBuffer(), session=session, hooks=[Metrics()])
    await store.aclose()


def probe(url: str, **expect: Any) -> HttpProbe:
    return HttpProbe.model_validate({"id": "orders", "kind": "http", "timeout": "500ms",
                                     "request": {"method": "POST", "url": url},
                                     "expect": {"response": {"status": 200}, "trace": TREE, **expect}})


async def test_runner_records_unknown_and_metrics_learn_it(deps: RunnerDeps, target: str) -> None:
    metrics = deps.hooks[0]
    assert isinstance(metrics, Metrics)
    runner = Runner(deps)
    [run] = await runner.run_probe(probe(target + "/ok"))
    assert run.verdict is Verdict.UNKNOWN, [str(f) for f in run.findings]
    assert run.findings[0].type == "trace.no_telemetry"
    assert run.findings[0].message.startswith("no spans from ingest, worker since the trigger ")
    assert run.findings[0].message.endswith(": the telemetry pipeline may be down")
    assert {f.severity for f in run.findings[1:]} == {Verdict.UNKNOWN}
    stored = await deps.store.get_run(run.run_id)
    assert stored is not None and stored.verdict is Verdict.UNKNOWN
    assert stored.findings[0].type == "trace.no_telemetry"
    text = generate_latest(metrics.registry).decode()
    assert 'tracecanary_runs_total{kind="http",probe="orders",verdict="unknown"} 1.0' in text
    assert 'tracecanary_probe_unknown{kind="http",probe="orders"} 1.0' in text
    assert "probe_success{" not in text  # could not judge: success is not known to have changed
    assert 'tracecanary_findings_total{probe="orders",type="trace.no_telemetry"} 1.0' in text


async def test_runner_keeps_fail_when_the_response_failed_too(deps: RunnerDeps, target: str) -> None:
    [run] = await Runner(deps).run_probe(probe(target + "/broken"))
    assert run.verdict is Verdict.FAIL
    assert all(f.type != "trace.no_telemetry" for f in run.findings)
    assert any("500" in f.message for f in run.findings)


async def test_runner_keeps_fail_when_a_side_effect_failed(deps: RunnerDeps, target: str) -> None:
    effect = {"http": {"request": {"url": target + "/ok", "method": "POST"}, "until": {"json": {"$.ok": False}},
                       "every": "50ms", "within": "300ms"}}
    [run] = await Runner(deps).run_probe(probe(target + "/ok", side_effects=[effect]))
    assert run.verdict is Verdict.FAIL, [str(f) for f in run.findings]
    assert all(f.type != "trace.no_telemetry" for f in run.findings)
