"""Outgoing trace context: traceparent, tracestate, baggage and sentry-trace, each switchable."""

from __future__ import annotations

from typing import Any

from tracecanary.integrations import Integrations, SentryIntegration
from tracecanary.probes.base import Inject, ProbeContext, RunLog, TraceContext
from tracecanary.probes.templating import Templates

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def ctx(inject: Inject | None = None, integrations: Integrations | None = None, sampled: bool = True) -> ProbeContext:
    return ProbeContext(
        probe_id="orders-webhook", run_id="run1", attempt=1, first_run_id="run1",
        trace=TraceContext(TRACE, SPAN, sampled), session=None,  # type: ignore[arg-type]
        templates=Templates(), integrations=integrations or Integrations(), inject=inject or Inject(),
        log=RunLog(), trigger_ns=0, deadline_s=0.0,
    )


def test_all_headers_by_default() -> None:
    h = ctx().trace_headers("b7ad6b7169203331")
    assert h["traceparent"] == f"00-{TRACE}-b7ad6b7169203331-01"
    assert h["tracestate"] == "tracecanary=run1"
    assert h["sentry-trace"] == f"{TRACE}-b7ad6b7169203331-1"
    members = h["baggage"].split(",")
    assert "tracecanary.probe_id=orders-webhook" in members and "tracecanary.run_id=run1" in members
    assert f"sentry-trace_id={TRACE}" in members and "sentry-sampled=true" in members
    assert not any(m.startswith("sentry-org_id") for m in members)


def test_unsampled_and_org_id_from_dsn() -> None:
    integ = Integrations(sentry=SentryIntegration(dsn="https://key@o4501.ingest.sentry.io/12"))
    h = ctx(integrations=integ, sampled=False).trace_headers()
    assert h["traceparent"].endswith("-00") and h["sentry-trace"].endswith("-0")
    assert "sentry-sampled=false" in h["baggage"] and "sentry-org_id=4501" in h["baggage"]


def test_each_header_can_be_switched_off() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"traceparent": False}, "traceparent"), ({"tracestate": False}, "tracestate"),
        ({"baggage": False}, "baggage"), ({"sentry_trace": False}, "sentry-trace"),
    ]
    for off, header in cases:
        h = ctx(Inject(**off)).trace_headers()
        assert header not in h
        assert len(h) == 3
    assert "sentry" not in ctx(Inject(sentry_trace=False)).trace_headers()["baggage"]
