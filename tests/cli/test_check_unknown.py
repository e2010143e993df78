"""`check` tells a down telemetry pipeline from a broken system, end to end.

Two services (``ingest`` and ``worker``) instrumented with the real OpenTelemetry SDK handle a webhook.
With their exporters pointed nowhere (a closed loopback port) the run is ``unknown`` — NO TELEMETRY,
exit 1, ``<error type="unknown">`` in JUnit; with their spans flowing to check's receiver but one
span dropped, the same expectation is a plain ``fail``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from aiohttp import web
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.fixtures.servers import serve_in_thread
from tracecanary.demo.broker import free_port

HERE = Path(__file__).parent


class Shop:
    """``POST /webhook``: ingest's server span, then worker's ``orders process`` under it (?fault=drop
    leaves out worker's ``chat.postMessage``). Both export with a BatchSpanProcessor, as in production."""

    def __init__(self, endpoint: str) -> None:
        def provider(service: str) -> TracerProvider:
            p = TracerProvider(resource=Resource.create({"service.name": service}))
            p.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=1),
                                                    schedule_delay_millis=50))
            return p

        self.providers = [provider("ingest"), provider("worker")]
        self.ingest, self.worker = (p.get_tracer("shop") for p in self.providers)

    async def webhook(self, request: web.Request) -> web.Response:
        drop = request.query.get("fault") == "drop"
        ctx = extract(dict(request.headers))

        def work() -> None:
            with self.ingest.start_as_current_span("POST /webhook", context=ctx, kind=trace.SpanKind.SERVER):
                with self.worker.start_as_current_span("orders process", kind=trace.SpanKind.CONSUMER):
                    if not drop:
                        with self.worker.start_as_current_span("chat.postMessage", kind=trace.SpanKind.CLIENT):
                            pass

        await asyncio.get_running_loop().run_in_executor(None, work)
        return web.json_response({"ok": True})

    def shutdown(self) -> None:
        for p in self.providers:
            p.shutdown()


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), never listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@pytest.fixture(scope="module")
def nowhere_shop(closed_port: int) -> Iterator[str]:
    shop = Shop(f"http://127.0.0.1:{closed_port}/v1/traces")
    with serve_in_thread([web.post("/webhook", shop.webhook)]) as base:
        yield base
    shop.shutdown()


@pytest.fixture(scope="module")
def flowing_shop() -> Iterator[tuple[str, int]]:
    otlp_port = free_port()
    shop = Shop(f"http://127.0.0.1:{otlp_port}/v1/traces")
    with serve_in_thread([web.post("/webhook", shop.webhook)]) as base:
        yield base, otlp_port
    shop.shutdown()


SUITE = """
probes:
  - id: {id}
    kind: http
    timeout: 3s
    request: {{method: POST, url: "{url}", json: {{test_id: "{{{{ run_id }}}}"}}}}
    expect:
      response: {{status: 200}}
      trace:
        tree:
          - span: "POST /webhook"
            service: ingest
            children:
              - span: orders process
                service: worker
                children: [{{span: chat.postMessage}}]
"""


def run_check(tmp: Path, probe_id: str, url: str, otlp_port: int | None) -> dict[str, Any]:
    suite = tmp / f"{probe_id}.yaml"
    suite.write_text(SUITE.format(id=probe_id, url=url))
    otlp = f"127.0.0.1:{otlp_port}" if otlp_port else "127.0.0.1:0"
    proc = subprocess.run(
        [sys.executable, "-m", "tracecanary.daemon.cli.main", "check", str(suite), "--json", "r.json",
         "--junit", "r.xml", "--otlp-http", otlp, "--otlp-grpc", "none"],
        capture_output=True, text=True, timeout=120, cwd=tmp)
    assert (tmp / "r.json").exists(), proc.stdout + proc.stderr
    report: dict[str, Any] = json.loads((tmp / "r.json").read_text())
    report["_proc"] = proc
    return report


def test_exporter_pointed_nowhere_is_unknown(tmp_path: Path, nowhere_shop: str) -> None:
    report = run_check(tmp_path, "nowhere", nowhere_shop + "/webhook", None)
    proc = report["_proc"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "NO TELEMETRY" in proc.stdout
    [probe] = report["probes"]
    assert probe["state"] == "NO TELEMETRY" and probe["unknown"] == 1 and probe["failed"] == 0
    [run] = probe["runs"]
    assert run["verdict"] == "unknown", run["findings"]
    first = run["findings"][0]
    assert first["type"] == "trace.no_telemetry" and first["severity"] == "unknown"
    assert first["message"].startswith("no spans from ingest, worker since the trigger "), first["message"]
    assert first["message"].endswith(": the telemetry pipeline may be down")
    assert probe["reason"] == first["message"]
    assert {f["severity"] for f in run["findings"]} == {"unknown"}
    # JUnit: an error of type "unknown" (the test could not be judged), valid against the schema
    schema = xmlschema.XMLSchema(str(HERE / "surefire-test-report-3.0.xsd"))
    schema.validate(str(tmp_path / "r.xml"))
    suite = schema.to_dict(str(tmp_path / "r.xml"))
    assert suite["@errors"] == "1" and suite["@failures"] == "0"
    [case] = suite["testcase"]
    assert case["error"]["@type"] == "unknown" and case["error"]["@message"] == first["message"]
    assert "failure" not in case


def test_one_span_dropped_while_the_rest_flows_is_fail(tmp_path: Path, flowing_shop: tuple[str, int]) -> None:
    base, port = flowing_shop
    report = run_check(tmp_path, "dropped", base + "/webhook?fault=drop", port)
    proc = report["_proc"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [probe] = report["probes"]
    assert probe["state"] == "BROKEN" and probe["unknown"] == 0
    [run] = probe["runs"]
    assert run["verdict"] == "fail", run["findings"]
    assert all(f["type"] != "trace.no_telemetry" for f in run["findings"])
    assert "chat.postMessage" in "\n".join(f["message"] for f in run["findings"])
    suite = xmlschema.XMLSchema(str(HERE / "surefire-test-report-3.0.xsd")).to_dict(str(tmp_path / "r.xml"))
    assert suite["@failures"] == "1" and suite["@errors"] == "0"
