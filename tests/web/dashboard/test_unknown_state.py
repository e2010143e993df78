"""The dashboard shows `unknown` as its own state, "no telemetry", in its own colour — never as failing."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.web.dashboard.conftest import Site
from tracecanary.assertions.telemetry import Silence, no_telemetry
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.store.base import RunRecord, RunStatus

pytestmark = pytest.mark.anyio
STATIC = Path(__file__).parents[3] / "daemon" / "web" / "dashboard" / "static"


def unknown_run(probe_id: str, t0: int) -> RunRecord:
    miss = Finding(type="trace.missing", path="expect.trace.tree[0]",
                   message='expected span "POST /webhook" (svc ingest), not found')
    findings = no_telemetry([miss], Silence(("ingest",), 60.0))
    run_id = uuid.uuid4().hex[:12]
    return RunRecord(run_id=run_id, probe_id=probe_id, kind="http", attempt=1, first_run_id=run_id,
                     trace_id=uuid.uuid4().hex, started_ns=t0, status=RunStatus.FINISHED,
                     finished_ns=t0 + 60 * 10**9, verdict=Verdict.UNKNOWN, findings=findings)


async def _get(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200, url
        return await r.text()


async def test_unknown_is_its_own_state_after_failing(site: Site) -> None:
    run = unknown_run("shop-slack", time.time_ns() - 10**9)  # newer than the seeded history
    await site.control.store.finish_run(run)
    html = await _get(f"{site.base}/")
    order = re.findall(r'<tr class="probe s-(\w+)" data-probe="([\w-]+)"', html)
    assert order == [("failing", "shop-webhook"), ("unknown", "shop-slack")]
    assert '<span class="badge s-unknown">no telemetry</span>' in html
    assert re.search(r'<a class="badge s-unknown" data-state="unknown" href="[^"]*">1 no telemetry</a>', html)
    assert html.count('class="cell v-unknown"') == 1
    assert "no spans from ingest since the trigger 1m ago" in html  # the row says why
    probe_page = await _get(f"{site.base}/probes/shop-slack")
    assert '<span class="badge s-unknown">no telemetry</span>' in probe_page
    assert 'class="bar v-unknown"' in probe_page
    run_page = await _get(f"{site.base}/runs/{run.run_id}")
    assert 'id="run-verdict" title="no telemetry">unknown</span>' in run_page
    assert "the telemetry pipeline may be down" in run_page and 'class="v v-unknown">unknown</span>' in run_page


def test_unknown_has_a_colour_of_its_own() -> None:
    css = (STATIC / "style.css").read_text()
    colours = dict(re.findall(r"--(ok|deg|fail|err|unk|mute): (#[0-9a-f]{6})", css))
    assert colours["unk"] not in {v for k, v in colours.items() if k != "unk"}
    for selector in (".s-unknown, .v-unknown", ".strip .v-unknown", "svg.chart .bar.v-unknown"):
        assert selector in css


async def test_api_reports_the_unknown_state_within_its_schema(site: Site) -> None:
    from tests.web.api.conftest import validate
    from tracecanary.daemon.web.schema import openapi_document

    run = unknown_run("shop-slack", time.time_ns() - 10**9)
    await site.control.store.finish_run(run)
    async with aiohttp.ClientSession() as s, s.get(f"{site.base}/api/probes") as r:
        body = await r.json()
    validate(openapi_document(), "/api/probes", "get", 200, body)
    slack = next(p for p in body["probes"] if p["id"] == "shop-slack")
    assert slack["state"] == "unknown" and slack["last_verdict"] == "unknown"
    async with aiohttp.ClientSession() as s, s.get(f"{site.base}/api/runs/{run.run_id}") as r:
        detail = await r.json()
    assert detail["run"]["verdict"] == "unknown" and detail["findings"][0]["severity"] == "unknown"
