"""Builders for realistic stored runs (spans, findings, the real judge's report) and the history the
API and dashboard tests seed through the Store API."""

from __future__ import annotations

import time
import uuid
from typing import Any

from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.judge import TraceJudge
from tracecanary.assertions.spans import Span, SpanKind, SpanLink, StatusCode
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.store.base import RunRecord, RunStatus, Store

MS = 1_000_000


def new_ids() -> tuple[str, str]:
    return uuid.uuid4().hex, uuid.uuid4().hex[:16]


def _span(trace_id: str, sid: str, parent: str | None, name: str, t0: int, start_ms: float, dur_ms: float,
          service: str, kind: SpanKind = SpanKind.INTERNAL, status: StatusCode = StatusCode.UNSET,
          links: tuple[SpanLink, ...] = (), **attrs: Any) -> Span:
    return Span(trace_id=trace_id, span_id=sid, parent_span_id=parent, name=name, kind=kind,
                start_ns=t0 + int(start_ms * MS), end_ns=t0 + int((start_ms + dur_ms) * MS), service=service,
                attributes=attrs, links=links, status_code=status)


def webhook_spans(trace_id: str, t0: int, *, drop_gex: bool = False, gex_error: bool = False) -> list[Span]:
    """The demo shop's webhook tree: probe root → POST /webhook → validate, enrich (2 fetches), publish;
    a linked consumer trace → chat.postMessage."""
    ids = {n: uuid.uuid4().hex[:16] for n in ("root", "post", "val", "enr", "mkt", "gex", "pub", "proc", "slack")}
    s = [
        _span(trace_id, ids["root"], None, "tracecanary probe shop-webhook", t0, 0, 120, "tracecanary"),
        _span(trace_id, ids["post"], ids["root"], "POST /webhook", t0, 2, 80, "ingest", SpanKind.SERVER),
        _span(trace_id, ids["val"], ids["post"], "validate-payload", t0, 4, 3, "ingest"),
        _span(trace_id, ids["enr"], ids["post"], "data-enrichment", t0, 8, 50, "ingest"),
        _span(trace_id, ids["mkt"], ids["enr"], "fetch-market-data", t0, 9, 20, "ingest", SpanKind.CLIENT),
        _span(trace_id, ids["pub"], ids["post"], "orders publish", t0, 60, 10, "ingest", SpanKind.PRODUCER),
    ]
    if not drop_gex:
        s.append(_span(trace_id, ids["gex"], ids["enr"], "fetch-gex-data", t0, 30, 25, "ingest", SpanKind.CLIENT,
                       StatusCode.ERROR if gex_error else StatusCode.UNSET))
    worker_trace = uuid.uuid4().hex
    s.append(_span(worker_trace, ids["proc"], None, "orders process", t0, 75, 40, "worker", SpanKind.CONSUMER,
                   links=(SpanLink(trace_id, ids["pub"]),)))
    s.append(_span(worker_trace, ids["slack"], ids["proc"], "chat.postMessage", t0, 90, 20, "worker",
                   SpanKind.CLIENT, **{"slack.channel": "C0ALERT"}))
    return s


WEBHOOK_EXPECT = TraceExpectation.model_validate({"tree": [{
    "span": "POST /webhook", "service": "ingest", "children": [
        {"span": "validate-payload"},
        {"span": "data-enrichment", "children": [{"span": "fetch-market-data"}, {"span": "fetch-gex-data"}]},
        {"span": "orders publish", "kind": "producer", "linked": [
            {"span": "orders process", "descendants": [{"span": "chat.postMessage"}]}]},
    ]}]})


def judge(trace_id: str, spans: list[Span]) -> dict[str, Any]:
    """The real judge's report over the spans (what the runner stores as ``trace_report``)."""
    j = TraceJudge(WEBHOOK_EXPECT, root_trace_id=trace_id, trigger_ns=None)
    j.feed(spans)
    return j.report()


def make_run(probe_id: str, t0: int, *, verdict: Verdict = Verdict.PASS, missing_gex: bool = False,
             duration_ms: float = 120.0) -> RunRecord:
    trace_id = uuid.uuid4().hex
    spans = webhook_spans(trace_id, t0, drop_gex=missing_gex)
    report = judge(trace_id, spans)
    findings = [Finding.model_validate(f) for f in report["findings"]]
    assert (report["verdict"] == "fail") == missing_gex
    run_id = uuid.uuid4().hex[:12]
    return RunRecord(
        run_id=run_id, probe_id=probe_id, kind="http", attempt=1, first_run_id=run_id, trace_id=trace_id,
        started_ns=t0, status=RunStatus.FINISHED, finished_ns=t0 + int(duration_ms * MS), verdict=verdict,
        findings=findings,
        response={"status": 200, "headers": {"Content-Type": "application/json", "Set-Cookie": "sid=s3cr3t"},
                  "body": '{"signal_id": "s-1"}', "json": {"signal_id": "s-1"}, "latency_s": 0.08,
                  "method": "POST", "url": "http://127.0.0.1/webhook"},
        trace_report=report,
        side_effects=[{"index": 0, "kind": "slack",
                       "findings": ["Slack C0ALERT: no matching message within 10s"] if missing_gex else [],
                       "observed": [{"text": "ORB_BREAKOUT signal s-1 for SPY", "ts": "1700000000.000100"}]}],
        links={"jaeger": f"http://127.0.0.1:16686/trace/{trace_id}"},
        log="+   0.000s http request method='POST'\n+   0.080s http response status=200",
        span_count=len(spans), spans=spans, time_to_verdict_s=duration_ms / 1000,
    )


async def seed(store: Store) -> None:
    """Two probes with history: shop-webhook failing last (missing node), shop-slack passing."""
    now = time.time_ns()
    for i in range(12):
        failing = i < 2
        run = make_run("shop-webhook", now - (i + 1) * 60 * 10**9, missing_gex=failing,
                       verdict=Verdict.FAIL if failing else Verdict.PASS, duration_ms=100 + i * 10)
        await store.finish_run(run)
        await store.finish_run(make_run("shop-slack", now - (i + 1) * 61 * 10**9, duration_ms=200 + i))
