"""`check` judges a real trace: a target instrumented with the OTel SDK exports to check's receiver."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.fixtures.servers import serve_in_thread
from tracecanary.demo.broker import free_port


class Shop:
    """A tiny instrumented webhook service; ?fault=drop omits a span, ?fault=error fails one."""

    def __init__(self, otlp_port: int) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": "ingest"}))
        self.provider.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=f"http://127.0.0.1:{otlp_port}/v1/traces", timeout=5)))
        self.tracer = self.provider.get_tracer("shop")

    async def webhook(self, request: web.Request) -> web.Response:
        fault = request.query.get("fault", "")
        ctx = extract(dict(request.headers))
        body = await request.json()

        def work() -> None:
            with self.tracer.start_as_current_span("POST /webhook", context=ctx, kind=trace.SpanKind.SERVER):
                with self.tracer.start_as_current_span("validate-payload"):
                    pass
                with self.tracer.start_as_current_span("data-enrichment"):
                    if fault != "drop":
                        with self.tracer.start_as_current_span("fetch-market-data", kind=trace.SpanKind.CLIENT):
                            pass
                    with self.tracer.start_as_current_span("fetch-gex-data", kind=trace.SpanKind.CLIENT) as s:
                        if fault == "error":
                            s.set_status(trace.Status(trace.StatusCode.ERROR, "gex timeout"))

        await asyncio.get_running_loop().run_in_executor(None, work)
        return web.json_response({"signal_id": body.get("test_id")})


@pytest.fixture(scope="module")
def shop() -> Iterator[tuple[str, int]]:
    otlp_port = free_port()
    s = Shop(otlp_port)
    with serve_in_thread([web.post("/webhook", s.webhook)]) as base:
        yield base, otlp_port
    s.provider.shutdown()


SUITE = """
probes:
  - id: {id}
    kind: http
    timeout: 4s
    request: {{method: POST, url: "{base}/webhook?fault={fault}", json: {{test_id: "{{{{ run_id }}}}"}}}}
    expect:
      response: {{status: 200}}
      trace:
        settle: 200ms
        tree:
          - span: "POST /webhook"
            service: ingest
            kind: server
            children:
              - span: validate-payload
              - span: data-enrichment
                children: [{{span: fetch-market-data}}, {{span: fetch-gex-data}}]
        forbid: [{{status: error}}]
"""


def run_check(tmp: Path, base: str, otlp_port: int, probe_id: str, fault: str) -> dict:  # type: ignore[type-arg]
    suite = tmp / f"{probe_id}.yaml"
    suite.write_text(SUITE.format(id=probe_id, base=base, fault=fault))
    proc = subprocess.run(
        [sys.executable, "-m", "tracecanary.daemon.cli.main", "check", str(suite), "--json", "r.json",
         "--otlp-http", f"127.0.0.1:{otlp_port}", "--otlp-grpc", "none", "--record", "rec"],
        capture_output=True, text=True, timeout=120, cwd=tmp)
    report = json.loads((tmp / "r.json").read_text())
    report["_proc"] = proc
    return report  # type: ignore[no-any-return]


def test_healthy_trace_passes_and_is_recorded(tmp_path: Path, shop: tuple[str, int]) -> None:
    base, port = shop
    report = run_check(tmp_path, base, port, "healthy", "")
    run = report["probes"][0]["runs"][0]
    assert run["verdict"] == "pass", (run["findings"], report["_proc"].stderr)
    assert run["span_count"] >= 6  # probe root + 5 system spans (+ the probe's client span)
    assert run["time_to_verdict_s"] is not None and run["time_to_verdict_s"] < 5
    recorded = list((tmp_path / "rec").glob("healthy-*.jsonl"))
    assert len(recorded) == 1 and "fetch-gex-data" in recorded[0].read_text()
    from tracecanary.daemon.spans.files import load_spans

    spans = load_spans(recorded[0])
    root = next(s for s in spans if s.name == "tracecanary probe healthy")
    server = next(s for s in spans if s.name == "POST /webhook")
    assert root.parent_span_id is None and root.trace_id == server.trace_id == run["trace_id"]
    assert root.start_ns <= server.start_ns and root.end_ns >= server.end_ns  # the root spans the whole run


def test_dropped_span_fails_and_names_the_node(tmp_path: Path, shop: tuple[str, int]) -> None:
    base, port = shop
    report = run_check(tmp_path, base, port, "dropped", "drop")
    assert report["_proc"].returncode == 1
    run = report["probes"][0]["runs"][0]
    assert run["verdict"] == "fail"
    text = "\n".join(f["message"] for f in run["findings"])
    assert "fetch-market-data" in text, text
    assert 'expected span "fetch-market-data" under span "data-enrichment" (svc ingest), not found after waiting ' \
        in text, text  # the deadline decided: the finding says how long the run waited


def test_error_span_fails_at_once_via_forbid(tmp_path: Path, shop: tuple[str, int]) -> None:
    base, port = shop
    report = run_check(tmp_path, base, port, "erroring", "error")
    run = report["probes"][0]["runs"][0]
    assert run["verdict"] == "fail"
    text = "\n".join(f["message"] for f in run["findings"])
    assert "fetch-gex-data" in text and "error" in text.lower(), text
    assert 'is forbidden: matches any span (status error); status ERROR "gex timeout"' in text, text
