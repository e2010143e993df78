"""Server-rendered pages over HTTP: overview order, probe chart, run waterfall with the judge's overlay."""

from __future__ import annotations

import re

import aiohttp
import pytest

from .conftest import Site

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
                       r'<span class="mark">[^<]*</span>\s*<span class="name">([^<]+)</span>', html)
    assert [n for _, n in names] == [
        "tracecanary probe shop-webhook", "POST /webhook", "validate-payload", "data-enrichment",
        "fetch-market-data", 'span &#34;fetch-gex-data&#34;', "orders publish", "orders process", "chat.postMessage",
    ]
    assert names[5][0] == "ghost"
    assert "linked trace" in html and "orders publish" in html
    assert "expect.trace.tree[0].children[1].children[1]" in html  # finding path
    assert "open in jaeger" in html

