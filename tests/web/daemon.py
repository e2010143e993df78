"""The real daemon for the API and dashboard tests: ``Daemon`` from daemon/app.py over an injected config,
on loopback ports, with a real system under test its probe fires at.

The probes start a day from now (``start_at``), so nothing fires on its own while a test runs: the
store holds exactly the seeded history plus the runs a test fires through ``run_now`` or the API.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import yaml
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.probes.helpers import serve
from tests.web.runs import seed
from tracecanary.daemon.app import Daemon, DaemonControl
from tracecanary.daemon.config.load import load_config
from tracecanary.daemon.engine import Overrides

START_TIMEOUT_S = 30.0

FIRED_EXPECT = {
    "response": {"status": 200},
    "trace": {"tree": [{
        "span": "POST /webhook", "service": "ingest", "children": [
            {"span": "validate-payload"},
            {"span": "data-enrichment", "children": [{"span": "fetch-market-data"}]},
            {"span": "orders publish", "kind": "producer", "linked": [
                {"span": "orders process", "descendants": [{"span": "chat.postMessage"}]}]},
        ]}]},
}
"""Every span the target exports (7) is expected, so a run passes once all of them are in: with the probe's
root and client spans, a fired run judges 9 spans."""


class Target:
    """The system under test: ``POST /webhook`` answers 200 after exporting its spans (OTel SDK,
    OTLP/HTTP) to the daemon's receiver. While ``hold`` is set, requests wait for it first."""

    def __init__(self) -> None:
        self.hold: anyio.Event | None = None
        self.requests = 0
        self.status = 200
        """What ``POST /webhook`` answers (500: the probe's response expectation fails)."""
        self._provider: TracerProvider | None = None

    def export_to(self, endpoint: str) -> None:
        provider = TracerProvider(resource=Resource.create({"service.name": "ingest"}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=5)))
        self._provider = provider

    async def webhook(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.hold is not None:
            await self.hold.wait()
        parent = extract(dict(request.headers))
        # The exporter's POSTs block: off the event loop, which serves the daemon's receiver.
        await anyio.to_thread.run_sync(self._work, parent)
        return web.json_response({"signal_id": "s-1"}, status=self.status)

    def _work(self, parent: otel_context.Context) -> None:
        assert self._provider is not None, "export_to() first"
        tracer = self._provider.get_tracer("shop")
        with tracer.start_as_current_span("POST /webhook", context=parent, kind=trace.SpanKind.SERVER):
            with tracer.start_as_current_span("validate-payload"):
                pass
            with tracer.start_as_current_span("data-enrichment"), \
                    tracer.start_as_current_span("fetch-market-data", kind=trace.SpanKind.CLIENT):
                pass
            with tracer.start_as_current_span("orders publish", kind=trace.SpanKind.PRODUCER) as publish:
                link = trace.Link(publish.get_span_context())
        # The consumer starts a trace of its own that links back to the publish (a queue in between).
        with tracer.start_as_current_span("orders process", context=otel_context.Context(),
                                          kind=trace.SpanKind.CONSUMER, links=[link]), \
                tracer.start_as_current_span("chat.postMessage", kind=trace.SpanKind.CLIENT,
                                             attributes={"slack.channel": "C0ALERT"}):
            pass

    async def aclose(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._provider is not None:
            await anyio.to_thread.run_sync(self._provider.shutdown)


@asynccontextmanager
async def serve_routes(routes: Sequence[web.AbstractRouteDef]) -> AsyncIterator[str]:
    """Serve routes on 127.0.0.1 (a free port) for the block; yields the base URL."""
    app = web.Application()
    app.add_routes(routes)
    async with serve(app) as base:
        yield base


def suite(target_url: str, *, api_token: str | None, extra_probe: bool, alert_channel: bool,
          slack_url: str | None = None, protect_reads: bool = False, public_status: bool = False) -> dict[str, Any]:
    """shop-slack fires at the target (the runs tests fire); shop-webhook (and never-run) hold history only."""
    start_at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    common = {"kind": "http", "every": "60s", "start_at": start_at, "timeout": "10s"}
    probes: list[dict[str, Any]] = [
        {"id": "shop-slack", **common, "expect": FIRED_EXPECT,
         "request": {"method": "POST", "url": f"{target_url}/webhook", "json": {"symbol": "SPY"}}},
        {"id": "shop-webhook", **common, "request": {"url": f"{target_url}/webhook"}},
    ]
    if extra_probe:
        probes.append({"id": "never-run", **common, "tags": ["tier-2"], "request": {"url": f"{target_url}/webhook"}})
    doc: dict[str, Any] = {"probes": probes}
    if api_token is not None:
        doc["daemon"] = {"api_token": api_token, "protect_reads": protect_reads, "public_status": public_status}
    if slack_url is not None:  # shop-slack alerts on the Slack emulator: at once, reminders every 100ms
        probes[0]["tags"] = ["payments"]
        doc["alerts"] = {
            "channels": {"oncall": {"type": "slack", "channel": "C0ONCALL", "token": "xoxb-bot",
                                    "base_url": slack_url}},
            "policies": {"default": {"channels": ["oncall"], "failure_threshold": 1, "remind_every": "100ms"}},
            "retry_delays": ["50ms"]}
    elif alert_channel:  # a channel no policy uses: it shows on the dashboard only once it fails
        doc["alerts"] = {"channels": {"oncall": {"type": "slack", "channel": "C0ONCALL", "token": "xoxb-unused",
                                                 "base_url": "http://127.0.0.1:9/api/"}}}
    return doc


@dataclass
class RunningDaemon:
    base: str
    """The API and dashboard (the OTLP receiver shares the port)."""
    daemon: Daemon
    target: Target

    @property
    def control(self) -> DaemonControl:
        return self.daemon.control


@asynccontextmanager
async def running_daemon(tmp_path: Path, *, api_token: str | None = None, extra_probe: bool = False,
                         alert_channel: bool = False, slack_url: str | None = None, protect_reads: bool = False,
                         public_status: bool = False) -> AsyncIterator[RunningDaemon]:
    """A started Daemon with the seeded history; stopped (cancelled) on exit."""
    target = Target()
    async with serve_routes([web.post("/webhook", target.webhook)]) as target_url:
        path = tmp_path / "suite.yaml"
        path.write_text(yaml.safe_dump(suite(target_url, api_token=api_token, extra_probe=extra_probe,
                                             alert_channel=alert_channel, slack_url=slack_url,
                                             protect_reads=protect_reads, public_status=public_status)))
        overrides = Overrides(listen="127.0.0.1:0", otlp_http="127.0.0.1:0", otlp_grpc="none",
                              store=f"sqlite:///{tmp_path / 'tc.db'}")
        ready = anyio.Event()
        daemon = Daemon(path, load_config(path), overrides, on_ready=lambda d: ready.set())
        gc_threshold = gc.get_threshold()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(daemon.run)
                with anyio.fail_after(START_TIMEOUT_S):
                    await ready.wait()
                addresses = daemon.engine.addresses
                target.export_to(f"http://{addresses['otlp_http']}/v1/traces")
                await seed(daemon.engine.store)
                try:
                    yield RunningDaemon(f"http://{addresses['api']}", daemon, target)
                finally:
                    tg.cancel_scope.cancel()
        finally:
            await target.aclose()
            # The engine tunes the process's GC for a long-running daemon; this process is pytest.
            gc.unfreeze()
            gc.set_threshold(*gc_threshold)
