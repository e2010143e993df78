"""The real daemon judging real traffic: a ``kind: passive`` probe over traces made by the OpenTelemetry
SDK and exported over OTLP/HTTP to the daemon's receiver, 3% of them broken (a span missing).

A window with too few traces is ``unknown`` (never alerted); the broken window's run fails on its
failure ratio (3% > 1%) and opens an incident at the webhook channel; the next, clean window resolves
it. /metrics counts every judged trace by verdict; the dashboard lists the broken ones.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.alerts.helpers import WebhookReceiver
from tests.daemon.support import eventually
from tests.probes.helpers import serve
from tests.run.test_telemetry_incident import events, fire, running
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.app import Daemon

pytestmark = pytest.mark.anyio
SECRET = "passive-probe"
PROBE = "ingest-webhook"


def config(hook: str) -> dict[str, Any]:
    start_at = (datetime.now(UTC) + timedelta(days=1)).isoformat()  # runs only when the test asks
    tree = [{"span": "POST /webhook", "service": "ingest", "children": [{"span": "validate"}, {"span": "charge"}]}]
    probe = {"id": PROBE, "kind": "passive", "every": "60s", "start_at": start_at, "timeout": "1s",
             "entry": {"span": "POST /webhook", "service": "ingest"}, "fail_if": "failure_ratio > 1%",
             "min_traces": 20, "expect": {"trace": {"tree": tree}}}
    return {"probes": [probe], "alerts": {
        "channels": {"hook": {"type": "webhook", "url": f"{hook}/hook", "secret": SECRET}},
        "policies": {"default": {"channels": ["hook"], "failure_threshold": 1}},
    }}


def send_traffic(endpoint: str, n: int, broken_per_100: int) -> None:
    """``n`` requests handled by service ``ingest``; the first ``broken_per_100`` of every 100 skip ``charge``."""
    provider = TracerProvider(resource=Resource.create({"service.name": "ingest"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=10),
                                                   schedule_delay_millis=50, max_export_batch_size=256))
    tracer = provider.get_tracer("shop")
    for i in range(n):
        with tracer.start_as_current_span("POST /webhook", kind=trace.SpanKind.SERVER):
            with tracer.start_as_current_span("validate"):
                pass
            if i % 100 >= broken_per_100:
                with tracer.start_as_current_span("charge", kind=trace.SpanKind.CLIENT):
                    pass
    provider.shutdown()  # flushes every span


async def judged(d: Daemon, n: int) -> None:
    def done() -> bool:
        snap = d.control.passive(PROBE)
        return snap is not None and snap.window.judged >= n

    await eventually(done, timeout_s=60, what=f"{n} traces judged")


async def test_three_percent_broken_traffic_fails_the_window_alerts_and_recovers(tmp_path: Path) -> None:
    rx = WebhookReceiver(SECRET)
    async with serve(rx.app()) as hook, running(tmp_path, config(hook)) as r:
        d = r.daemon
        run = await fire(d, PROBE)  # no traffic yet
        assert run.verdict is Verdict.UNKNOWN, [str(f) for f in run.findings]
        assert "0 entry traces judged in the window, fewer than min_traces 20" in run.findings[0].message

        await anyio.to_thread.run_sync(send_traffic, r.otlp, 200, 3)
        await judged(d, 200)  # the broken ones at their deadline, 1 s after their entry span started
        snap = d.control.passive(PROBE)
        assert snap is not None and snap.window.failed == 6 and len(snap.recent) == 6
        run = await fire(d, PROBE)
        assert run.verdict is Verdict.FAIL, [str(f) for f in run.findings]
        [finding] = run.findings
        assert finding.type == "passive.failure_ratio" and finding.observed == 0.03
        assert finding.message == ("6 of 200 entry traces failed (3.00%); fail_if failure_ratio > 1%; "
                                   "findings: trace.missing ×6")
        window = run.outputs["passive"]
        assert (window["judged"], window["failed"], window["kinds"]) == (200, 6, {"trace.missing": 6})
        assert await events(rx, 1) == ["failing"]

        async with aiohttp.ClientSession() as http:
            api = f"http://{d.engine.addresses['api']}"
            async with http.get(f"{api}/metrics") as resp:
                metrics = await resp.text()
            assert f'tracecanary_passive_traces_total{{probe="{PROBE}",verdict="fail"}} 6.0' in metrics
            assert f'tracecanary_passive_traces_total{{probe="{PROBE}",verdict="pass"}} 194.0' in metrics
            async with http.get(f"{api}/probes/{PROBE}/passive") as resp:
                assert resp.status == 200
                page = await resp.text()
            assert all(tid in page for tid in window["worst"]) and page.count("trace.missing") == 6
            async with http.get(f"{api}/probes/{PROBE}") as resp:
                assert f'href="/probes/{PROBE}/passive"' in await resp.text()

        await anyio.to_thread.run_sync(send_traffic, r.otlp, 100, 0)
        await judged(d, 100)
        run = await fire(d, PROBE)
        assert run.verdict is Verdict.PASS, [str(f) for f in run.findings]
        assert run.outputs["passive"]["judged"] == 100 and run.outputs["passive"]["failure_ratio"] == 0.0
        assert await events(rx, 2) == ["failing", "recovered"]
    assert rx.bad_signatures == 0
