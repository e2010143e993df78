"""Helpers: spans made with the real OpenTelemetry SDK (explicit providers, never the global one)."""

from __future__ import annotations

from opentelemetry import trace as otel
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, Status, StatusCode

from tracecanary.assertions.spans import Span, SpanEvent, SpanKind, SpanLink
from tracecanary.assertions.spans import StatusCode as Code


def make_sdk_spans() -> list[ReadableSpan]:
    """A small nested trace with typed attributes, events, a link to another trace and an error."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout", "deployment.environment": "test",
                                                        "host.cpus": 2}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.spans", "1.2.3")
    with tracer.start_as_current_span("upstream", kind=otel.SpanKind.PRODUCER) as upstream:
        up_ctx = upstream.get_span_context()
    with tracer.start_as_current_span(
        "POST /orders", kind=otel.SpanKind.SERVER,
        attributes={"http.method": "POST", "http.status_code": 201, "ratio": 0.25, "ok": True,
                    "tags": ["a", "b"], "codes": [1, 2, 3], "flags": [True, False], "weights": [1.5, 2.5]},
    ) as root:
        root.add_event("validated", {"fields": 3, "strict": True})
        with tracer.start_as_current_span("charge card", kind=otel.SpanKind.CLIENT,
                                          links=[Link(up_ctx, {"link.kind": "follows"})]) as child:
            child.set_status(Status(StatusCode.ERROR, "card declined"))
            with tracer.start_as_current_span("db query") as leaf:
                leaf.set_attribute("db.rows", 12)
        root.set_status(Status(StatusCode.OK))
    provider.shutdown()
    return list(memory.get_finished_spans())


def expected(span: ReadableSpan) -> Span:
    """The span model value a correct receiver must produce for an SDK span."""
    ctx = span.get_span_context()
    assert ctx is not None
    resource = dict(span.resource.attributes)
    scope = span.instrumentation_scope
    return Span(
        trace_id=format(ctx.trace_id, "032x"),
        span_id=format(ctx.span_id, "016x"),
        parent_span_id=format(span.parent.span_id, "016x") if span.parent else None,
        name=span.name,
        kind=SpanKind(span.kind.value + 1),
        start_ns=span.start_time or 0,
        end_ns=span.end_time or 0,
        service=str(resource["service.name"]),
        attributes=dict(span.attributes or {}),
        resource=resource,
        events=tuple(SpanEvent(e.name, e.timestamp, dict(e.attributes or {})) for e in span.events),
        links=tuple(
            SpanLink(format(ln.context.trace_id, "032x"), format(ln.context.span_id, "016x"),
                     dict(ln.attributes or {}))
            for ln in span.links
        ),
        status_code=Code(span.status.status_code.value),
        status_message=span.status.description or "",
        scope=scope.name if scope else "",
    )
