"""Metrics hook semantics, served over a real socket and parsed with prometheus_client's parser."""

from __future__ import annotations

import aiohttp
import anyio
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.observe.metrics import Metrics, metrics_routes
from tracecanary.daemon.store.base import RunRecord, RunStatus
from tracecanary.probes.base import ProbeSpec

pytestmark = pytest.mark.anyio
PROBE = ProbeSpec.model_validate({"id": "orders", "kind": "http"})


def record(i: int, verdict: Verdict | None, *, final: bool = True) -> RunRecord:
    return RunRecord(run_id=f"run-{i}", probe_id="orders", kind="http", attempt=1, first_run_id=f"run-{i}",
                     trace_id=f"{i:032x}", started_ns=0, finished_ns=500_000_000, verdict=verdict, final=final,
                     status=RunStatus.ABORTED if verdict is None else RunStatus.FINISHED)


async def scrape(m: Metrics, accept: str = "") -> tuple[str, str]:
    app = web.Application()
    app.add_routes(metrics_routes(m))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as session:
            with anyio.fail_after(5):
                url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
                async with session.get(url, headers={"Accept": accept} if accept else {}) as resp:
                    assert resp.status == 200
                    return resp.headers["Content-Type"], await resp.text()
    finally:
        await runner.cleanup()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_final_verdicts_drive_probe_success_and_ids_never_become_labels() -> None:
    m = Metrics()
    await m.on_run_finished(PROBE, record(1, Verdict.PASS))
    await m.on_run_finished(PROBE, record(2, Verdict.FAIL, final=False))  # a retry follows
    await m.on_run_finished(PROBE, record(3, None))  # aborted (shutdown)
    ctype, text = await scrape(m)
    got = samples(text)
    assert ctype.startswith("text/plain; version=0.0.4")
    assert got[("probe_success", (("kind", "http"), ("probe", "orders")))] == 1.0
    assert got[("tracecanary_runs_total", (("kind", "http"), ("probe", "orders"), ("verdict", "fail")))] == 1.0
    assert got[("tracecanary_runs_total", (("kind", "http"), ("probe", "orders"), ("verdict", "aborted")))] == 1.0
    assert got[("probe_duration_seconds_count", (("kind", "http"), ("probe", "orders")))] == 2.0
    assert "run-" not in text and f"{1:032x}" not in text
    await m.on_run_finished(PROBE, record(4, Verdict.ERROR))
    assert samples((await scrape(m))[1])[("probe_success", (("kind", "http"), ("probe", "orders")))] == 0.0


async def test_openmetrics_negotiation_and_retain() -> None:
    m = Metrics()
    gone = ProbeSpec.model_validate({"id": "gone", "kind": "http"})
    await m.on_run_finished(PROBE, record(1, Verdict.DEGRADED))
    await m.on_run_finished(gone, record(2, Verdict.PASS))
    m.lateness("gone", 0.2)
    m.retain([PROBE])
    ctype, text = await scrape(m, "application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text") and text.rstrip().endswith("# EOF")
    assert 'probe="gone"' not in text and 'probe_success{kind="http",probe="orders"} 1.0' in text


async def test_register_then_retain_keeps_each_probe_series_from_start_to_removal() -> None:
    m = Metrics()
    gone = ProbeSpec.model_validate({"id": "gone", "kind": "http"})
    m.register([PROBE, gone])
    m.set_alert_states({"orders": 2, "gone": 1})
    got = samples((await scrape(m))[1])
    assert got[("tracecanary_alert_state", (("probe", "orders"),))] == 2.0
    assert got[("probe_last_run_timestamp_seconds", (("probe", "gone"),))] == 0.0
    assert got[("tracecanary_runs_total", (("kind", "http"), ("probe", "gone"), ("verdict", "aborted")))] == 0.0
    await m.on_run_finished(PROBE, record(1, Verdict.FAIL))
    added = ProbeSpec.model_validate({"id": "added", "kind": "http"})
    m.retain([PROBE, added])
    _, text = await scrape(m)
    got = samples(text)
    assert 'probe="gone"' not in text
    assert got[("tracecanary_alert_state", (("probe", "added"),))] == 0.0
    assert got[("probe_last_run_timestamp_seconds", (("probe", "orders"),))] == 0.5  # finished_ns = 500 ms
