"""The alert manager as the engine builds it: the run's own links in the alert, a span per delivery
attempt in the daemon's exported telemetry (a local OTLP collector stand-in)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import anyio
import pytest
import yaml
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.alerts.helpers import WebhookReceiver
from tests.probes.helpers import serve
from tracecanary.daemon.config.load import load_config
from tracecanary.daemon.engine import Engine, Overrides

pytestmark = pytest.mark.anyio
SECRET = "engine-alerts-secret"


class Collector:
    """Answers OTLP/HTTP protobuf like an OpenTelemetry Collector and keeps the span names."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        return app

    async def _traces(self, request: web.Request) -> web.Response:
        req = ExportTraceServiceRequest()
        req.ParseFromString(await request.read())
        self.names += [s.name for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")


async def test_alert_carries_the_runs_links_and_each_attempt_is_a_span(tmp_path: Path) -> None:
    collector, rx = Collector(), WebhookReceiver(SECRET)
    async with serve(collector.app()) as otel, serve(rx.app()) as hook:
        path = tmp_path / "suite.yaml"
        path.write_text(yaml.safe_dump({
            "daemon": {"telemetry": {"otlp_endpoint": otel}},
            "links": {"jaeger": "http://jaeger.test/trace/{trace_id}"},
            "alerts": {"channels": {"hook": {"type": "webhook", "url": f"{hook}/hook", "secret": SECRET}},
                       "policies": {"default": {"channels": ["hook"], "failure_threshold": 1}}},
            "probes": [{"id": "down", "kind": "http", "timeout": "5s", "request": {"url": "http://127.0.0.1:9/"}}],
        }))
        config = load_config(path)
        engine = Engine(config, Overrides(listen="127.0.0.1:0", otlp_http="127.0.0.1:0", otlp_grpc="none"),
                        daemon_mode=True, gc_tuning=False)
        async with engine.started(temporary_store=True):
            assert engine.alerts is not None
            await engine.runner.run_probe(config.probes[0])  # connection refused: an error verdict
            [run] = await engine.store.list_runs("down")
            with anyio.fail_after(10):
                await engine.alerts.wait_idle()
            assert await anyio.to_thread.run_sync(engine.provider.force_flush)
    assert str(run.verdict) == "error" and run.links == {"jaeger": f"http://jaeger.test/trace/{run.trace_id}"}
    [body] = rx.accepted
    assert body["links"] == run.links and body["run"]["id"] == run.run_id
    assert collector.names.count("alert.deliver hook") == 1, collector.names


async def test_a_failing_only_channel_shows_in_readyz(tmp_path: Path) -> None:
    """With no other channel to announce it on, a failing channel is in the log and /readyz's detail
    (the daemon stays ready: a pager problem is not a reason to stop probing)."""
    rx = WebhookReceiver("another-secret")  # our signature does not match: 401, a permanent failure
    async with serve(rx.app()) as hook:
        path = tmp_path / "suite.yaml"
        path.write_text(yaml.safe_dump({
            "alerts": {"channels": {"hook": {"type": "webhook", "url": f"{hook}/hook", "secret": SECRET}},
                       "policies": {"default": {"channels": ["hook"], "failure_threshold": 1}}},
            "probes": [{"id": "down", "kind": "http", "timeout": "5s", "request": {"url": "http://127.0.0.1:9/"}}],
        }))
        config = load_config(path)
        engine = Engine(config, Overrides(listen="127.0.0.1:0", otlp_http="none", otlp_grpc="none"),
                        daemon_mode=True, gc_tuning=False)
        async with engine.started(temporary_store=True), aiohttp.ClientSession() as session:
            assert engine.alerts is not None
            url = f"http://{engine.addresses['api']}/readyz"
            async with session.get(url) as r:
                assert r.status == 200 and "detail" not in await r.json()
            await engine.runner.run_probe(config.probes[0])
            with anyio.fail_after(10):
                await engine.alerts.wait_idle()
            async with session.get(url) as r:
                body = await r.json()
            [incident] = engine.alerts.system_incidents()
    assert r.status == 200 and body["status"] == "ready"
    assert body["detail"] == ["alert channel hook is failing: delivery failed with a permanent error: webhook 401: "
                              '{"error": "bad signature"} (no healthy alert channel to announce it)']
    assert incident.key == "channel:hook" and rx.bad_signatures == 1
