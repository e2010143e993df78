"""The real daemon: `unknown` runs never page the probe's owner; three in a row (across probes) raise one
"telemetry pipeline" incident of tracecanary's own, and spans flowing again resolve it.

The system under test is instrumented with the real OpenTelemetry SDK; "telemetry down" points its
exporter at a closed loopback port, "telemetry up" at the daemon's own OTLP receiver. Alerts go to a
real webhook receiver that checks the signature.
"""

from __future__ import annotations

import gc
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from aiohttp import web
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.alerts.helpers import WebhookReceiver
from tests.probes.helpers import serve
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.app import Daemon
from tracecanary.daemon.config.load import load_config
from tracecanary.daemon.engine import Overrides
from tracecanary.daemon.store.base import RunRecord, RunStatus

pytestmark = pytest.mark.anyio
SECRET = "telemetry-incident"


class Shop:
    """``POST /webhook`` with a server span of service ``ingest``, exported wherever ``export_to`` says."""

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None

    async def export_to(self, endpoint: str) -> None:
        old, self.provider = self.provider, TracerProvider(resource=Resource.create({"service.name": "ingest"}))
        # Batched, as in production: a closed endpoint costs the request nothing.
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=1),
                                                            schedule_delay_millis=50))
        if old is not None:  # flushes what it holds (to a closed endpoint: fails within the exporter's timeout)
            await anyio.to_thread.run_sync(old.shutdown)

    async def webhook(self, request: web.Request) -> web.Response:
        parent = extract(dict(request.headers))
        provider = self.provider
        assert provider is not None

        def work() -> None:
            with provider.get_tracer("shop").start_as_current_span("POST /webhook", context=parent,
                                                                   kind=trace.SpanKind.SERVER):
                pass

        await anyio.to_thread.run_sync(work)
        return web.json_response({"ok": True})


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as s:  # bound, never listening: connections are refused, nobody else gets it
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def config(target: str, hook: str) -> dict[str, Any]:
    start_at = (datetime.now(UTC) + timedelta(days=1)).isoformat()  # nothing fires on its own
    expect = {"response": {"status": 200}, "trace": {"tree": [{"span": "POST /webhook", "service": "ingest"}]}}
    probes = [{"id": pid, "kind": "http", "every": "60s", "start_at": start_at, "timeout": "2s",
               "request": {"method": "POST", "url": f"{target}/webhook"}, "expect": expect}
              for pid in ("orders", "billing")]
    return {"probes": probes, "alerts": {
        "channels": {"hook": {"type": "webhook", "url": f"{hook}/hook", "secret": SECRET}},
        "policies": {"default": {"channels": ["hook"], "failure_threshold": 1}},
        "telemetry_incident_after": 3,
    }}


@dataclass
class Running:
    daemon: Daemon
    otlp: str


@asynccontextmanager
async def running(tmp_path: Path, doc: dict[str, Any]) -> AsyncIterator[Running]:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc))
    overrides = Overrides(listen="127.0.0.1:0", otlp_http="127.0.0.1:0", otlp_grpc="none",
                          store=f"sqlite:///{tmp_path / 'tc.db'}")
    ready = anyio.Event()
    daemon = Daemon(path, load_config(path), overrides, on_ready=lambda d: ready.set())
    gc_threshold = gc.get_threshold()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            with anyio.fail_after(30):
                await ready.wait()
            try:
                yield Running(daemon, f"http://{daemon.engine.addresses['otlp_http']}/v1/traces")
            finally:
                tg.cancel_scope.cancel()
    finally:
        gc.unfreeze()  # the engine tunes the GC for a long-running daemon; this process is pytest
        gc.set_threshold(*gc_threshold)


async def fire(d: Daemon, probe_id: str) -> RunRecord:
    """Run the probe now and wait (bounded) until its run is recorded as finished."""
    run_id = await d.control.run_now(probe_id)
    with anyio.fail_after(30):
        while True:
            run = await d.engine.store.get_run(run_id)
            if run is not None and run.status is RunStatus.FINISHED:
                return run
            await anyio.sleep(0.02)


async def events(rx: WebhookReceiver, n: int) -> list[str]:
    with anyio.fail_after(20):
        while len(rx.accepted) < n:
            await anyio.sleep(0.02)
    return [b["event"] for b in rx.accepted]


async def test_three_unknown_runs_raise_one_telemetry_incident_and_spans_clear_it(
    tmp_path: Path, closed_port: int,
) -> None:
    rx = WebhookReceiver(SECRET)
    shop = Shop()
    await shop.export_to(f"http://127.0.0.1:{closed_port}/v1/traces")  # the telemetry pipeline is down
    async with serve(rx.app()) as hook, serve(_app(shop)) as target, \
            running(tmp_path, config(target, hook)) as r:
        d = r.daemon
        alerts = d.engine.alerts
        assert alerts is not None
        for probe_id in ("orders", "billing"):
            run = await fire(d, probe_id)
            assert run.verdict is Verdict.UNKNOWN, [str(f) for f in run.findings]
        assert alerts.system_incidents() == []  # 2 of 3: nothing yet
        run = await fire(d, "orders")
        assert run.verdict is Verdict.UNKNOWN
        [incident] = alerts.system_incidents()
        assert incident.key == "telemetry" and incident.summary == "telemetry pipeline may be down"
        assert "3 consecutive runs" in incident.detail and "probes: orders, billing" in incident.detail
        assert "no spans from ingest since the trigger" in incident.detail
        assert await events(rx, 1) == ["system_failing"]
        opened = rx.accepted[0]
        assert opened["title"] == "tracecanary: telemetry pipeline may be down"
        # the probes' own incidents: none, although failure_threshold is 1
        state = await d.engine.store.kv_get("alerts.state", "orders")
        assert state is not None and state["status"] == "ok" and state["last_verdict"] == "unknown"

        await shop.export_to(r.otlp)  # the pipeline is back: the next judged run sees its services' spans
        run = await fire(d, "billing")
        assert run.verdict is Verdict.PASS, [str(f) for f in run.findings]
        assert alerts.system_incidents() == []
        assert await events(rx, 2) == ["system_failing", "system_recovered"]
        assert rx.accepted[1]["incident"]["id"] == opened["incident"]["id"]
    assert rx.bad_signatures == 0
    assert shop.provider is not None
    await anyio.to_thread.run_sync(shop.provider.shutdown)


def _app(shop: Shop) -> web.Application:
    app = web.Application()
    app.router.add_post("/webhook", shop.webhook)
    return app
