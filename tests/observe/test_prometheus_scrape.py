"""A real Prometheus scrapes /metrics of an aiohttp app serving Metrics; the test asks its HTTP API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from tests.fixtures.prometheus import prometheus_server
from tests.observe.promql import dashboard_queries, exposed_names, grafana_query_names
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.observe.metrics import Metrics, metrics_routes
from tracecanary.daemon.store.base import RunRecord, RunStatus
from tracecanary.probes.base import ProbeSpec

pytestmark = pytest.mark.anyio


def finished(pid: str, i: int, verdict: Verdict, duration_s: float, *, final: bool = True) -> RunRecord:
    findings = [] if verdict is Verdict.PASS else [Finding(type="trace.missing", message="x", severity=verdict)]
    return RunRecord(run_id=f"{pid}-{i}", probe_id=pid, kind="http", attempt=1, first_run_id=f"{pid}-{i}",
                     trace_id="0" * 31 + "1", started_ns=0, finished_ns=int(duration_s * 1e9),
                     status=RunStatus.FINISHED, verdict=verdict, findings=findings, final=final,
                     span_count=12, time_to_verdict_s=duration_s)


async def wait_for_result(prom: Any, session: aiohttp.ClientSession, promql: str,
                          timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """Bounded wait until Prometheus has scraped enough for ``promql`` to return something."""
    with anyio.fail_after(timeout_s):
        while True:
            result: list[dict[str, Any]] = await prom.query(session, promql)
            if result:
                return result
            await anyio.sleep(0.2)  # Prometheus offers no push notification of a finished scrape


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "tracecanary.json"


async def check_dashboard_queries(prom: Any, session: aiohttp.ClientSession, m: Metrics) -> None:
    """Every panel query of the Grafana dashboard parses and runs in Prometheus and names only our metrics."""
    exposed = exposed_names(generate_latest(m.registry).decode())
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 20
    for query in queries:
        names = grafana_query_names(query)
        assert names and names <= exposed, (query, names - exposed)
        if query.startswith("label_values("):
            continue  # a Grafana template function, not PromQL
        promql = query.replace("$__rate_interval", "1m").replace("$__range", "5m").replace("$probe", ".*")
        await prom.query(session, promql)  # asserts status == success (it parsed and ran)


async def test_prometheus_scrapes_probe_success_and_duration_quantile(tmp_path: Path) -> None:
    m = Metrics()
    orders = ProbeSpec.model_validate({"id": "orders", "kind": "http"})
    billing = ProbeSpec.model_validate({"id": "billing", "kind": "http"})
    for i in range(9):
        await m.on_run_finished(orders, finished("orders", i, Verdict.PASS, 0.3))
    await m.on_run_finished(orders, finished("orders", 9, Verdict.DEGRADED, 4.0))
    await m.on_run_finished(billing, finished("billing", 0, Verdict.PASS, 0.2, final=False))
    await m.on_run_finished(billing, finished("billing", 1, Verdict.FAIL, 0.2))
    m.spans_received("otlp_http", 1200)
    m.spans_dropped("buffer_full", 3)
    m.set_buffer_gauge(lambda: 4242)
    m.alert_sent("oncall", "sent")
    m.lateness("orders", 0.004)

    app = web.Application()
    app.add_routes(metrics_routes(m))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    target = f"127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with prometheus_server(tmp_path, [target], scrape_interval="1s") as prom, \
                aiohttp.ClientSession() as session:
            success = await wait_for_result(prom, session, "probe_success")
            by_probe = {r["metric"]["probe"]: float(r["value"][1]) for r in success}
            assert by_probe == {"orders": 1.0, "billing": 0.0}
            assert {r["metric"]["kind"] for r in success} == {"http"}

            [p50] = await wait_for_result(
                prom, session, 'histogram_quantile(0.5, sum by (le) (probe_duration_seconds_bucket{probe="orders"}))')
            # 9 of 10 runs fell in (0.25, 0.5]: rank 5 interpolates to 0.25 + 0.25 * 5/9
            assert float(p50["value"][1]) == pytest.approx(0.25 + 0.25 * 5 / 9)
            [p95] = await prom.query(
                session, 'histogram_quantile(0.95, sum by (le) (probe_duration_seconds_bucket{probe="orders"}))')
            assert 2.5 < float(p95["value"][1]) <= 5.0

            checks = {
                'tracecanary_runs_total{probe="billing",verdict="fail"}': 1.0,
                'tracecanary_runs_total{probe="billing",verdict="pass"}': 1.0,
                'sum(tracecanary_findings_total{type="trace.missing"})': 2.0,
                'tracecanary_findings_total{probe="billing",type="trace.missing"}': 1.0,
                'tracecanary_spans_received_total{source="otlp_http"}': 1200.0,
                'tracecanary_spans_dropped_total{reason="buffer_full"}': 3.0,
                "tracecanary_buffer_spans": 4242.0,
                'tracecanary_alerts_sent_total{channel="oncall",outcome="sent"}': 1.0,
                'tracecanary_schedule_lateness_seconds_count{probe="orders"}': 1.0,
                'tracecanary_trace_spans_sum{probe="orders"}': 120.0,
                'tracecanary_time_to_verdict_seconds_count{probe="orders"}': 10.0,
            }
            for promql, value in checks.items():
                [row] = await prom.query(session, promql)
                assert float(row["value"][1]) == value, promql
            [tgt] = await prom.targets(session)
            assert tgt["health"] == "up" and tgt["lastError"] == ""
            await check_dashboard_queries(prom, session, m)
    finally:
        await runner.cleanup()
