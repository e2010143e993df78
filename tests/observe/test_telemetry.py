"""Self-telemetry: OTLP export to a local collector stand-in, feedback-loop refusal, span sinks, logs."""

from __future__ import annotations

import logging

import anyio
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, set_span_in_context

from tracecanary.assertions import spans as model
from tracecanary.daemon.observe.telemetry import (
    TraceContextFilter,
    add_span_sink,
    is_own_endpoint,
    otel_span_to_span,
    setup_telemetry,
)

pytestmark = pytest.mark.anyio


class Collector:
    """Answers OTLP/HTTP protobuf like a Collector and keeps the decoded requests."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        req = ExportTraceServiceRequest()
        req.ParseFromString(await request.read())
        self.requests.append(req)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def span_names(self) -> list[str]:
        return [s.name for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]


async def start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


async def test_exports_own_spans_over_otlp_http() -> None:
    collector = Collector()
    runner, port = await start(collector.app())
    try:
        provider = setup_telemetry(f"http://127.0.0.1:{port}", service_name="tracecanary-test",
                                   own_receiver_addrs=["127.0.0.1:1"])
        with provider.get_tracer("tracecanary.alerts").start_as_current_span("alert.deliver"):
            pass
        flushed = await anyio.to_thread.run_sync(provider.force_flush)
        await anyio.to_thread.run_sync(provider.shutdown)
    finally:
        await runner.cleanup()
    assert flushed and collector.span_names() == ["alert.deliver"]
    resource = collector.requests[0].resource_spans[0].resource
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "tracecanary-test"


async def test_export_to_our_own_receiver_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    collector = Collector()
    runner, port = await start(collector.app())
    try:
        with caplog.at_level(logging.WARNING, "tracecanary.telemetry"):
            provider = setup_telemetry(f"http://localhost:{port}/", own_receiver_addrs=[f"0.0.0.0:{port}"])
        with provider.get_tracer("t").start_as_current_span("would-loop"):
            pass
        await anyio.to_thread.run_sync(provider.force_flush)
        provider.shutdown()
    finally:
        await runner.cleanup()
    assert collector.requests == []
    assert "telemetry.export_refused" in caplog.text and "reason=feedback_loop" in caplog.text


@pytest.mark.parametrize(("endpoint", "own", "refused"), [
    ("http://127.0.0.1:4318", ["127.0.0.1:4318"], True),
    ("http://localhost:4318/v1/traces", ["127.0.0.1:4318"], True),
    ("http://[::1]:4318", ["0.0.0.0:4318"], True),
    ("http://localhost", ["127.0.0.1:4318"], True),  # OTLP/HTTP default port
    ("grpc://127.0.0.1:4317", ["127.0.0.1:4318", "127.0.0.1:4317"], True),
    ("http://collector.internal:4318", ["0.0.0.0:4318"], False),
    ("http://127.0.0.1:14318", ["127.0.0.1:4318"], False),
    ("https://otlp.example.com", ["0.0.0.0:443"], False),
])
def test_is_own_endpoint(endpoint: str, own: list[str], refused: bool) -> None:
    assert is_own_endpoint(endpoint, own) is refused


def test_span_sink_and_conversion() -> None:
    provider = setup_telemetry(None, service_name="tracecanary", own_receiver_addrs=[])
    got: list[ReadableSpan] = []
    add_span_sink(provider, got.append)
    add_span_sink(provider, lambda s: 1 / 0)  # a broken sink must not break span ending
    tracer = provider.get_tracer("tracecanary.runner")
    with tracer.start_as_current_span("tracecanary probe orders", kind=SpanKind.INTERNAL) as root:
        with tracer.start_as_current_span("other") as other:
            pass
        link = Link(other.get_span_context(), {"why": "queue"})
        with tracer.start_span("POST /webhook", context=set_span_in_context(root), kind=SpanKind.CLIENT,
                               links=[link], attributes={"http.status_code": 502, "tags": ["a", "b"]}) as child:
            child.add_event("retry", {"attempt": 2})
            child.set_status(Status(StatusCode.ERROR, "bad gateway"))
    spans = {s.name: otel_span_to_span(s) for s in got}
    root_s, child_s, other_s = spans["tracecanary probe orders"], spans["POST /webhook"], spans["other"]
    assert root_s.parent_span_id is None and len(root_s.trace_id) == 32 and len(root_s.span_id) == 16
    assert child_s.parent_span_id == root_s.span_id and child_s.trace_id == root_s.trace_id
    assert child_s.kind is model.SpanKind.CLIENT and root_s.kind is model.SpanKind.INTERNAL
    assert child_s.status_code is model.StatusCode.ERROR and child_s.status_message == "bad gateway"
    assert child_s.attributes == {"http.status_code": 502, "tags": ("a", "b")}
    assert child_s.events[0].name == "retry" and child_s.events[0].attributes == {"attempt": 2}
    assert child_s.links == (model.SpanLink(other_s.trace_id, other_s.span_id, {"why": "queue"}),)
    assert child_s.service == "tracecanary" and child_s.scope == "tracecanary.runner"
    assert 0 < child_s.start_ns <= child_s.end_ns and root_s.end_ns >= child_s.end_ns


def test_log_records_carry_trace_ids() -> None:
    provider = setup_telemetry(None, own_receiver_addrs=[])
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(TraceContextFilter())
    logger = logging.getLogger("tracecanary.test.telemetry")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with provider.get_tracer("t").start_as_current_span("work") as span:
            logger.info("inside")
        logger.info("outside")
    finally:
        logger.removeHandler(handler)
    ctx = span.get_span_context()
    assert (records[0].trace_id, records[0].span_id) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")  # type: ignore[attr-defined]
    assert (records[1].trace_id, records[1].span_id) == ("", "")  # type: ignore[attr-defined]
