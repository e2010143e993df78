"""`expect --from` over what `check --record` wrote from a real instrumented service: the proposal is
rooted at the service's entry span (not `tracecanary probe …`), its names carry no port or id of the
recorded runs, and a later `check` with the proposal passes."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.fixtures.servers import serve_in_thread
from tracecanary.demo.broker import free_port


class Orders:
    """An instrumented service whose span names hold run-specific values, as real ones do: the port of
    a dependency, an order number, a message uuid."""

    def __init__(self, otlp_port: int) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": "orders"}))
        self.provider.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=f"http://127.0.0.1:{otlp_port}/v1/traces", timeout=5)))
        self.tracer = self.provider.get_tracer("orders")
        self.names: list[str] = []

    async def create(self, request: web.Request) -> web.Response:
        ctx = extract(dict(request.headers))
        order, dep_port = random.randrange(10**5, 10**6), random.randrange(30000, 60000)
        names = [f"GET http://127.0.0.1:{dep_port}/quote", f"INSERT order {order}",
                 f"publish order {uuid.uuid4()}"]
        self.names += names

        def work() -> None:
            with self.tracer.start_as_current_span("POST /orders", context=ctx, kind=trace.SpanKind.SERVER):
                for name in names:
                    with self.tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT):
                        pass

        await asyncio.get_running_loop().run_in_executor(None, work)
        return web.json_response({"order": order})


@pytest.fixture(scope="module")
def orders() -> Iterator[tuple[str, int, Orders]]:
    otlp_port = free_port()
    svc = Orders(otlp_port)
    with serve_in_thread([web.post("/orders", svc.create)]) as base:
        yield base, otlp_port, svc
    svc.provider.shutdown()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracecanary.daemon.cli.main", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def test_expect_from_recorded_runs(tmp_path: Path, orders: tuple[str, int, Orders]) -> None:
    base, otlp_port, svc = orders
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""
probes:
  - id: orders
    kind: http
    timeout: 5s
    request: {{method: POST, url: "{base}/orders", json: {{test_id: "{{{{ run_id }}}}"}}}}
    expect:
      trace: {{settle: 200ms, tree: [{{span: "POST /orders"}}]}}
""")
    rec = _cli("check", str(suite), "--iterations", "2", "--record", "rec", "--otlp-http",
               f"127.0.0.1:{otlp_port}", "--otlp-grpc", "none", cwd=tmp_path)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    files = sorted(str(p) for p in (tmp_path / "rec").glob("orders-*.jsonl"))
    assert len(files) == 2 and all("tracecanary probe orders" in Path(f).read_text() for f in files)

    proposed = _cli("expect", "--from", *files, cwd=tmp_path)
    assert proposed.returncode == 0, proposed.stderr
    doc = yaml.safe_load(proposed.stdout)
    [root] = doc["tree"]
    assert (root["span"], root["service"], root["kind"]) == ("POST /orders", "orders", "server")
    assert sorted(c["span"] for c in root["children"]) == [
        "GET http://127.0.0.1:*/quote", "INSERT order *", "publish order *"]
    body = yaml.safe_dump(doc)
    assert "tracecanary" not in body
    for name in svc.names:  # no port, order number or uuid of a recorded run is baked in
        volatile = name.rsplit(" ", 1)[-1].split(":")[-1].split("/")[0]
        assert volatile not in body, (volatile, body)

    (tmp_path / "proposal.yaml").write_text(proposed.stdout)
    for f in files:
        judged = _cli("assert", "--trace", f, "--expect", "proposal.yaml", cwd=tmp_path)
        assert judged.returncode == 0, judged.stdout
    # A later run (new port, new ids) passes the proposal as its expectation. Its `limits.max_duration`
    # (the slowest example × 1.5) is left out: on a loaded machine wall-clock time is no test of names.
    later = {k: v for k, v in doc.items() if k != "limits"}
    head = suite.read_text().split("    expect:")[0]
    suite.write_text(head + "    " + yaml.safe_dump({"expect": {"trace": later}}).replace("\n", "\n    ").rstrip() + "\n")
    again = _cli("check", str(suite), "--otlp-http", f"127.0.0.1:{otlp_port}", "--otlp-grpc", "none",
                 cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
