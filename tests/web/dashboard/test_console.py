"""The console over HTTP: overview filters and ranges, probe charts and paging, incidents and silences
through the API (validated against the OpenAPI document) and the forms, badges, /status, read rules."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.web.api.conftest import validate
from tests.web.daemon import running_daemon, serve_routes
from tests.web.dashboard.conftest import AlertingSite, Site
from tests.web.dashboard.console_helpers import fire
from tracecanary.daemon.app import DaemonControl
from tracecanary.daemon.web.api import api_routes
from tracecanary.daemon.web.dashboard.views import dashboard_routes
from tracecanary.daemon.web.schema import openapi_document

pytestmark = pytest.mark.anyio
TOKEN = "console-t0ken-value"
SVG = "{http://www.w3.org/2000/svg}"


async def _get(url: str, status: int = 200, **kw: Any) -> str:
    async with aiohttp.ClientSession() as s, s.get(url, allow_redirects=False, **kw) as r:
        assert r.status == status, (url, r.status, await r.text())
        return await r.text()


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr class="probe s-\w+" data-probe="([\w-]+)"', html)


async def test_overview_filters_ranges_and_counts(site: Site) -> None:
    html = await _get(f"{site.base}/")
    assert _rows(html) == ["shop-webhook", "shop-slack"]
    assert 'data-state="failing" href="/?range=24h&amp;state=failing">1 failing</a>' in html
    assert _rows(await _get(f"{site.base}/?state=failing")) == ["shop-webhook"]
    assert _rows(await _get(f"{site.base}/?q=SLACK")) == ["shop-slack"]
    assert _rows(await _get(f"{site.base}/?kind=grpc")) == [] and "No probe matches the filter." in await _get(
        f"{site.base}/?kind=grpc")
    week = await _get(f"{site.base}/?range=7d&q=shop")
    assert "<th>uptime 7d</th>" in week and 'href="/?range=30d&amp;q=shop"' in week
    assert re.search(r'<td class="uptime"[^>]*>83\.3%</td>', week)  # 10 of 12 seeded runs passed
    await _get(f"{site.base}/?range=2w", status=400)


async def test_probe_page_charts_paging_and_masked_config(site: Site) -> None:
    html = await _get(f"{site.base}/probes/shop-webhook?range=1h")
    assert html.count('class="ubar ') == 12 and 'id="latency-chart"' in html
    assert "<polyline" in html and 'class="line p95"' in html
    assert 'id="uptime">83.3% of 12 runs' in html
    assert 'id="older"' not in html  # 12 runs: one page
    runs = await site.control.store.list_runs("shop-webhook", limit=12)
    older = await _get(f"{site.base}/probes/shop-webhook?before={runs[5].started_ns}")
    assert len(re.findall(r'<tr><td><a href="/runs/', older)) == 6 and 'id="newest"' in older
    assert "Alerting is not configured." not in html


async def test_incidents_api_ack_and_silences(alerting: AlertingSite) -> None:
    doc = openapi_document()
    await fire(alerting, status=500)
    await alerting.slack.wait_until(lambda: len(alerting.alerts()) == 1)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{alerting.base}/api/incidents") as r:
            body = await r.json()
        validate(doc, "/api/incidents", "get", 200, body)
        [inc] = body["incidents"]
        assert inc["status"] == "open" and inc["probe_id"] == "shop-slack"
        assert [t["what"] for t in inc["timeline"]][:2] == ["opened", "notified"]
        assert {"what": "attempt", "channel": "oncall", "outcome": "sent"}.items() <= next(
            t for t in inc["timeline"] if t["what"] == "attempt").items()
        iid = inc["incident_id"]
        async with s.post(f"{alerting.base}/api/incidents/{iid}/ack", json={"by": "alice"}) as r:
            assert r.status == 200, await r.text()
            acked = await r.json()
        validate(doc, "/api/incidents/{incident_id}/ack", "post", 200, acked)
        assert acked["acknowledged_by"] == "alice" and acked["timeline"][-1]["what"] == "acknowledged"
        async with s.post(f"{alerting.base}/api/incidents/nope:1/ack", json={}) as r:
            assert r.status == 404
        async with s.post(f"{alerting.base}/api/incidents/{iid}/ack", json={"by": ""}) as r:
            assert r.status == 400
        async with s.get(f"{alerting.base}/api/silences") as r:
            silences = await r.json()
        validate(doc, "/api/silences", "get", 200, silences)
        assert silences == {"silences": []}


async def test_silence_form_creates_duration_and_cron_windows_and_expires(alerting: AlertingSite) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{alerting.base}/silences", data={"tags": "payments", "window": "cron",
                                                            "cron": "0 2 * * *", "cron_duration": "2h",
                                                            "timezone": "Europe/Paris"}, allow_redirects=False) as r:
            assert r.status == 303
        async with s.post(f"{alerting.base}/silences", data={"probes": "shop-*", "duration": "90m",
                                                            "comment": "deploy"}, allow_redirects=False) as r:
            assert r.status == 303
        async with s.post(f"{alerting.base}/silences", data={"duration": "1h"}) as r:
            assert r.status == 400 and "a silence needs probes or tags" in await r.text()
        async with s.post(f"{alerting.base}/silences", data={"probes": "x", "duration": "soon"}) as r:
            assert r.status == 400 and "duration: invalid duration" in await r.text()
        async with s.post(f"{alerting.base}/silences", data={"probes": "x"},
                          headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403  # no token configured: only the dashboard's own origin may write
        async with s.get(f"{alerting.base}/api/silences") as r:
            listed = (await r.json())["silences"]
    cron = next(x for x in listed if x.get("cron"))
    assert cron["tags"] == ["payments"] and cron["duration"] == "7200s" and cron["kind"] == "recurring"
    one_off = next(x for x in listed if not x.get("cron"))
    assert one_off["probes"] == ["shop-*"] and one_off["active"] is True and one_off["comment"] == "deploy"
    html = await _get(f"{alerting.base}/silences")
    assert html.count('class="expire"') == 2 and "Europe/Paris" in html
    overview = await _get(f"{alerting.base}/")
    assert 'data-probe="shop-slack"' in overview and '<span class="badge s-silenced">silenced</span>' in overview
    async with aiohttp.ClientSession() as s, s.post(f"{alerting.base}/silences/{one_off['id']}/expire",
                                                    allow_redirects=False) as r:
        assert r.status == 303
    assert (await _get(f"{alerting.base}/silences")).count('class="expire"') == 1


def _badge(text: str) -> tuple[str, str]:
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg" and int(root.attrib["height"]) == 20
    title = root.find(f"{SVG}title")
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert title is not None and title.text == f"{texts[0]}: {texts[1]}"
    return str(texts[0]), str(texts[1])


async def test_badges_are_svg_with_verdict_or_uptime(site: Site) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{site.base}/badge/shop-webhook.svg") as r:
            assert r.content_type == "image/svg+xml"
            assert _badge(await r.text()) == ("shop-webhook", "fail")
        async with s.get(f"{site.base}/badge/shop-slack.svg?type=uptime&range=7d") as r:
            assert _badge(await r.text()) == ("shop-slack 7d", "100.0%")
        async with s.get(f"{site.base}/badge/nope.svg") as r:
            assert r.status == 404 and _badge(await r.text()) == ("nope", "unknown probe")
    status = await _get(f"{site.base}/status")
    assert '<section class="status-group" data-tag="untagged">' in status and "shop-webhook" in status
    await _get(f"{site.base}/status?tag=nope", status=404)


async def test_protect_reads_and_public_status(site: Site, tmp_path: Path) -> None:
    class Public(DaemonControl):
        @property
        def public_status(self) -> bool:
            return True

    for control, open_ in ((site.control, False), (Public(site.control.engine, scheduler=site.control.scheduler, alerts=site.control.alerts), True)):
        routes = [*api_routes(control, api_token=TOKEN, read_token_required=True),
                  *dashboard_routes(control, api_token=TOKEN, read_token_required=True)]
        async with serve_routes(routes) as base:
            await _get(f"{base}/", status=303)
            await _get(f"{base}/incidents", status=303)
            await _get(f"{base}/badge/shop-slack.svg", status=200 if open_ else 401)
            await _get(f"{base}/status", status=200 if open_ else 303)
            await _get(f"{base}/api/probes", status=401)
            cookie = {"Cookie": f"tracecanary_token={TOKEN}"}
            assert "shop-slack" in await _get(f"{base}/silences", headers=cookie)
            async with aiohttp.ClientSession() as s:
                # writes need the token: not the login cookie, not a wrong token
                async with s.post(f"{base}/silences", data={"probes": "x", "duration": "1h"}, headers=cookie) as r:
                    assert r.status == 401
                async with s.post(f"{base}/silences", data={"probes": "x", "duration": "1h", "token": "wrong"}) as r:
                    assert r.status == 401
                async with s.post(f"{base}/incidents/shop-slack:1/ack", data={"token": "wrong"}) as r:
                    assert r.status == 401
                async with s.post(f"{base}/incidents/shop-slack:1/ack", data={"token": TOKEN}) as r:
                    assert r.status == 404  # the token passes; there is no such incident
    (tmp_path / "pub").mkdir()
    async with running_daemon(tmp_path / "pub", api_token=TOKEN, protect_reads=True, public_status=True) as running:
        await _get(f"{running.base}/badge/shop-slack.svg")
        await _get(f"{running.base}/", status=303)
