"""Server-rendered pages over HTTP: overview order, probe chart, run waterfall with the judge's overlay."""

from __future__ import annotations

import re
from dataclasses import dataclass

import aiohttp
import anyio
import pytest

from tests.web.daemon import serve_routes
from tests.web.dashboard.conftest import Site
from tracecanary.daemon.alerts.delivery import NS_CHANNELS
from tracecanary.daemon.app import DaemonControl
from tracecanary.daemon.web.dashboard.views import dashboard_routes

pytestmark = pytest.mark.anyio


async def _get(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200, url
        return await r.text()


async def test_overview_lists_failing_first_with_strip(site: Site) -> None:
    html = await _get(f"{site.base}/")
    order = re.findall(r'<tr class="probe s-(\w+)" data-probe="([\w-]+)"', html)
    assert order == [("failing", "shop-webhook"), ("ok", "shop-slack")]
    assert html.count('class="cell v-pass"') == 10 + 12 and html.count('class="cell v-fail"') == 2
    assert "fetch-gex-data" in html  # the failing probe shows why


async def test_probe_page_has_duration_chart(site: Site) -> None:
    html = await _get(f"{site.base}/probes/shop-webhook")
    assert html.count('class="bar v-pass"') == 10 and html.count('class="bar v-fail"') == 2
    async with aiohttp.ClientSession() as s, s.get(f"{site.base}/probes/nope") as r:
        assert r.status == 404


async def test_run_page_waterfall_with_ghost_under_its_parent(site: Site) -> None:
    runs = await site.control.store.list_runs("shop-webhook", limit=1)
    html = await _get(f"{site.base}/runs/{runs[0].run_id}")
    names = re.findall(r'class="wf-row wf-(span|ghost)[^"]*"[^>]*>\s*<div class="wf-label"[^>]*>\s*'
                       r'<span class="mark">[^<]*</span>\s*<(?:a|span) class="name"[^>]*>([^<]+)</', html)
    assert [n for _, n in names] == [
        "tracecanary probe shop-webhook", "POST /webhook", "validate-payload", "data-enrichment",
        "fetch-market-data", 'span &#34;fetch-gex-data&#34;', "orders publish", "orders process", "chat.postMessage",
    ]
    assert names[5][0] == "ghost"
    assert "linked trace" in html and "orders publish" in html
    assert "expect.trace.tree[0].children[1].children[1]" in html  # finding path
    assert "open in jaeger" in html
    assert '<blockquote class="arrived">ORB_BREAKOUT signal s-1 for SPY</blockquote>' in html
    assert "no matching message within 10s" in html


@dataclass(frozen=True)
class Chaos:
    faults: tuple[str, ...]
    active: str | None


class ChaosSwitch:
    """A DemoControl (DemoWorld in `tracecanary demo`): the chaos toggle's state and its switch."""

    def __init__(self) -> None:
        self.active: str | None = None

    def chaos_state(self) -> Chaos:
        return Chaos(faults=("drop-span", "silent-bot"), active=self.active)

    async def set_fault(self, name: str | None) -> None:
        self.active = name


async def test_chaos_toggle_only_in_demo(site: Site) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{site.base}/demo/chaos", data={"fault": "silent-bot"}) as r:
            assert r.status == 404
        switch = ChaosSwitch()
        demo = DaemonControl(site.control.engine, scheduler=site.control.scheduler, demo=switch)
        async with serve_routes(dashboard_routes(demo)) as base:
            html = await _get(f"{base}/")
            assert '<option value="silent-bot" >silent-bot</option>' in html
            async with s.post(f"{base}/demo/chaos", data={"fault": "silent-bot"}, allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/"
            assert switch.active == "silent-bot"
            assert "fault: silent-bot" in await _get(f"{base}/")
            async with s.post(f"{base}/demo/chaos", data={"fault": ""}, allow_redirects=False) as r:
                assert r.status == 303
            assert switch.active is None


async def test_live_stream_sends_waterfall_then_done(site: Site) -> None:
    site.running.target.hold = anyio.Event()  # the run stays in flight until the stream has shown it once
    run_id = await site.control.run_now("shop-slack")
    events: list[str] = []
    with anyio.fail_after(20):
        async with aiohttp.ClientSession() as s, s.get(f"{site.base}/runs/{run_id}/live") as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            async for line in r.content:
                if line.startswith(b"event: "):
                    events.append(line[7:].decode().strip())
                    site.running.target.hold.set()
    assert events[0] == "waterfall" and events[-1] == "done" and events.count("waterfall") >= 2


async def test_failing_alert_channel_shows_on_overview(site: Site) -> None:
    assert "alert channel" not in await _get(f"{site.base}/")
    await site.control.store.kv_put(NS_CHANNELS, "oncall", {
        "failing": True, "consecutive_failures": 3, "last_error": "channel_not_found"})
    html = await _get(f"{site.base}/")
    assert "alert channel oncall failing (3 deliveries): channel_not_found" in html


async def test_incidents_page_lists_system_incidents_and_channels(site: Site) -> None:
    """Where a channel_failing alert's dashboard link lands."""
    alerts = site.running.daemon.engine.alerts
    assert alerts is not None
    html = await _get(f"{site.base}/incidents")
    assert "Nothing wrong with tracecanary itself." in html and "No open incident." in html and ">oncall<" in html
    alerts.raise_system("store", "results store writes fail", "database is locked")
    html = await _get(f"{site.base}/incidents")
    assert "<code>store</code>" in html and "results store writes fail" in html and "database is locked" in html
