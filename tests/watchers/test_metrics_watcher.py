"""The metrics watcher against real loopback endpoints: a transient failure is retried, a lasting one is an
error quoting the last error, a baseline that cannot be read is an error at once, an OpenMetrics answer is
parsed with prometheus_client's OpenMetrics parser, a Prometheus API error is explained."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from tests.probes.helpers import serve
from tests.watchers.support import probe_context
from tracecanary.assertions.metrics import MetricCheck
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.watchers.base import Backoff, Services, WatchContext
from tracecanary.daemon.watchers.metrics import (
    Baseline,
    MetricsReadError,
    parse_exposition,
    query_samples,
    read_baseline,
    watch_metrics,
)

pytestmark = pytest.mark.anyio
FAST = Backoff(initial_s=0.01, max_s=0.05)


class Exposition:
    """/metrics answers 503 for its first ``fail_first`` requests (or always), then the counter."""

    def __init__(self, fail_first: int = 0, *, openmetrics: bool = False) -> None:
        self.fail_first, self.openmetrics, self.calls, self.count = fail_first, openmetrics, 0, 0
        self.html = False

    async def metrics(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.calls <= self.fail_first:
            return web.Response(status=503, text="warming up")
        if self.html:
            return web.Response(text="<html>sign in</html>", content_type="text/html")
        if self.openmetrics:
            body = f"# TYPE jobs counter\njobs_total{{queue=\"a\"}} {self.count}\n# EOF\n"
            return web.Response(text=body, content_type="application/openmetrics-text")
        return web.Response(text=f"# TYPE jobs_total counter\njobs_total{{queue=\"a\"}} {self.count}\n")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        return app


def wctx(session: aiohttp.ClientSession, integrations: dict[str, Any] | None = None) -> WatchContext:
    return WatchContext(probe=probe_context(session, integrations or {}, timeout_s=10), services=Services(),
                        poll_interval_s=0.02, backoff=FAST)


def delta(url: str, within: str = "2s") -> MetricCheck:
    return MetricCheck.model_validate({"scrape": f"{url}/metrics", "within": within,
                                       "delta": {"metric": 'jobs_total{queue="a"}', "gte": 1}})


@pytest.mark.parametrize("openmetrics", [False, True])
async def test_transient_failures_are_retried_then_judged(openmetrics: bool) -> None:
    exp = Exposition(openmetrics=openmetrics)
    async with serve(exp.app()) as url, aiohttp.ClientSession() as session:
        w = wctx(session)
        check = delta(url)
        [baseline] = await read_baseline([check], w.probe)
        assert baseline is not None and baseline.samples is not None
        exp.count, exp.fail_first = 1, exp.calls + 2  # the next two reads fail, then the counter moved
        with anyio.fail_after(10):
            assert await watch_metrics(check, w, baseline) == []
    assert exp.calls >= 4


async def test_a_lasting_failure_is_an_error_quoting_the_last_error() -> None:
    exp = Exposition()
    async with serve(exp.app()) as url, aiohttp.ClientSession() as session:
        w = wctx(session)
        check = delta(url, within="300ms")
        [baseline] = await read_baseline([check], w.probe)
        exp.fail_first = 10**6
        with anyio.fail_after(10):
            [error] = await watch_metrics(check, w, baseline, path="expect.metrics[0]")
    assert error.severity is Verdict.ERROR and error.path == "expect.metrics[0]"
    assert "failed until the window closed" in error.message and "HTTP 503 'warming up'" in error.message


async def test_a_page_that_is_no_exposition_is_an_error() -> None:
    exp = Exposition()
    exp.html = True
    async with serve(exp.app()) as url, aiohttp.ClientSession() as session:
        w = wctx(session)
        [baseline] = await read_baseline([delta(url)], w.probe)
    assert baseline is not None and baseline.error == f"GET {url}/metrics: answered text/html, not a Prometheus exposition"


async def test_an_unreadable_baseline_is_an_error_at_once() -> None:
    async with aiohttp.ClientSession() as session:
        w = wctx(session)
        [error] = await watch_metrics(delta("http://127.0.0.1:9"), w, Baseline(None, "GET …: refused"))
    assert error.severity is Verdict.ERROR
    assert error.message.endswith("cannot read the metrics before the trigger: GET …: refused")


async def test_query_answers() -> None:
    vector = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": "up", "job": "api"}, "value": [1.7e9, "1"]}]}}
    [up] = query_samples(vector)
    assert (up.name, dict(up.labels), up.value) == ("up", {"job": "api"}, 1.0)
    [scalar] = query_samples({"status": "success", "data": {"resultType": "scalar", "result": [1.7e9, "0.25"]}})
    assert scalar.value == 0.25

    async def api(request: web.Request) -> web.Response:
        return web.json_response({"status": "error", "errorType": "bad_data",
                                  "error": 'parse error: unexpected "}"'}, status=400)

    app = web.Application()
    app.router.add_get("/api/v1/query", api)
    async with serve(app) as url, aiohttp.ClientSession() as session:
        w = wctx(session, {"prometheus": {"url": url}})
        check = MetricCheck.model_validate({"query": "up}", "within": "100ms", "present": ["up"]})
        [error] = await watch_metrics(check, w, None)
    assert 'Prometheus refused the query: bad_data: parse error: unexpected "}"' in error.message


def test_only_the_named_metrics_are_parsed() -> None:
    text = ("# HELP jobs_total Jobs.\n# TYPE jobs_total counter\njobs_total{queue=\"a\"} 3\n"
            "# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\nlat_seconds_bucket{le=\"0.1\"} 1\n"
            "lat_seconds_bucket{le=\"+Inf\"} 2\nlat_seconds_count 2\nlat_seconds_sum 0.3\n"
            "# TYPE other_total counter\nother_total 9\n")
    assert {s.name for s in parse_exposition(text, names=["jobs_total", "lat_seconds_bucket"])} == {
        "jobs_total", "lat_seconds_bucket", "lat_seconds_count", "lat_seconds_sum"}
    openmetrics = "# TYPE jobs counter\njobs_total 1\n# TYPE other counter\nother_total 2\n# EOF\n"
    [jobs] = parse_exposition(openmetrics, "application/openmetrics-text; version=1.0.0", names=["jobs_total"])
    assert (jobs.name, jobs.value) == ("jobs_total", 1.0)
    with pytest.raises(MetricsReadError, match="not a Prometheus exposition"):
        parse_exposition("<html>sign in</html>\n")
