"""The console in a real browser (Debian chromium driven by Playwright): the overview's filters and range
switch, a failing run's span inspector, acknowledging and muting an incident (the emulated Slack channel
counts what went out), silences, and a badge that is valid SVG.

The incidents page and the span inspector are pictured in docs/ (``TRACECANARY_UPDATE_SCREENSHOT=1``
refreshes them; otherwise the pictures go to the test's tmp_path).
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.web.dashboard.conftest import AlertingSite, Site
from tests.web.dashboard.console_helpers import fire, remind_due
from tests.web.runs import MS, webhook_spans
from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.judge import TraceJudge
from tracecanary.assertions.spans import Span, SpanEvent, SpanKind
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.store.base import RunRecord, RunStatus

pytestmark = pytest.mark.anyio
DOCS = Path(__file__).resolve().parents[3] / "docs"


def _shot_path(name: str, tmp_path: Path) -> Path:
    """docs/<name> when asked to refresh the pictures, else a file of the test's own."""
    return DOCS / name if os.environ.get("TRACECANARY_UPDATE_SCREENSHOT") == "1" else tmp_path / name


async def _rows(page: Any) -> list[str]:
    return [str(x) for x in await page.locator("#probes tbody tr.probe").evaluate_all(
        "rows => rows.map(r => r.dataset.probe)")]


async def test_overview_filter_search_and_range_switch(alerting: AlertingSite, browser: Any) -> None:
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    await page.goto(f"{alerting.base}/")
    assert await _rows(page) == ["shop-webhook", "never-run", "shop-slack"]
    assert await page.locator("#counts a[data-state=failing]").inner_text() == "1 failing"
    await page.select_option("#filters select[name=tag]", "payments")
    await page.locator("#filters button[type=submit]").click()
    await page.wait_for_url("**tag=payments**")
    assert await _rows(page) == ["shop-slack"]
    await page.locator("#ranges a", has_text="7d").click()
    await page.wait_for_url("**range=7d**")
    assert "tag=payments" in page.url and await _rows(page) == ["shop-slack"]
    assert "uptime 7d" in (await page.locator("#probes thead").inner_text()).lower()
    assert await page.locator("#ranges a.on").inner_text() == "7d"
    await page.goto(f"{alerting.base}/?range=30d")
    await page.fill("#filters input[name=q]", "WEB")
    await page.locator("#filters input[name=q]").press("Enter")
    await page.wait_for_url("**q=WEB**")
    assert await _rows(page) == ["shop-webhook"] and "range=30d" in page.url
    await page.locator("#counts a[data-state=ok]").click()
    await page.wait_for_url("**state=ok**")
    assert await page.locator("#probes tbody").inner_text() == "No probe matches the filter."


def _failing_run(probe_id: str) -> RunRecord:
    """A run whose fetch-gex-data span errors (status message, exception event, resource) and is forbidden."""
    trace_id, t0 = uuid.uuid4().hex, time.time_ns() - 5 * 10**9
    spans: list[Span] = []
    for s in webhook_spans(trace_id, t0, gex_error=True):
        if s.name == "fetch-gex-data":
            s = dataclasses.replace(
                s, status_message="upstream 503 from gex-api", resource={"service.name": "ingest", "host.name": "pod-7"},
                events=(SpanEvent("exception", s.start_ns + 5 * MS, {"exception.type": "HTTPError",
                                                                     "exception.message": "503 Service Unavailable"}),),
                attributes={"http.status_code": 503, "peer.service": "gex-api"})
        spans.append(s)
    exp = TraceExpectation.model_validate({"tree": [{"span": "POST /webhook", "service": "ingest"}],
                                           "forbid": [{"status": "error"}]})
    judge = TraceJudge(exp, root_trace_id=trace_id, trigger_ns=None)
    judge.feed(spans)
    report = judge.report()
    run_id = uuid.uuid4().hex[:12]
    return RunRecord(run_id=run_id, probe_id=probe_id, kind="http", attempt=1, first_run_id=run_id,
                     trace_id=trace_id, started_ns=t0, status=RunStatus.FINISHED, finished_ns=t0 + 200 * MS,
                     verdict=Verdict.FAIL, findings=[Finding.model_validate(f) for f in report["findings"]],
                     trace_report=report, spans=spans, span_count=len(spans))


async def test_failing_run_span_inspector(site: Site, browser: Any, tmp_path: Path) -> None:
    run = _failing_run("shop-webhook")
    await site.control.store.finish_run(run)
    gex = next(s for s in run.spans if s.name == "fetch-gex-data")
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    await page.goto(f"{site.base}/runs/{run.run_id}")
    row = page.locator(f"#row-{gex.span_id}")
    assert "st-error" in (await row.get_attribute("class") or "") and "mk-forbidden" in (await row.get_attribute("class") or "")
    assert await row.locator(".err-badge").inner_text() == "error"
    inspector = page.locator(f"#span-{gex.span_id}")
    assert not await inspector.is_visible()
    await row.locator("a.name").click()
    await inspector.wait_for(state="visible")
    text = await inspector.inner_text()
    for expected in ("upstream 503 from gex-api", "peer.service", "gex-api", "pod-7", "exception",
                     "503 Service Unavailable", gex.span_id, "client"):
        assert expected in text, expected
    shot = _shot_path("span-inspector.png", tmp_path)
    await page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
    # the consumer's span link leads to the producer span's inspector
    proc = next(s for s in run.spans if s.name == "orders process")
    await page.locator(f"#row-{proc.span_id} a.name").click()
    await page.locator(f"#span-{proc.span_id} .links a").click()
    pub = next(s for s in run.spans if s.name == "orders publish")
    await page.locator(f"#span-{pub.span_id}").wait_for(state="visible")
    # the forbid finding links to its row's inspector
    await page.locator(".findings a.to-span").first.click()
    await inspector.wait_for(state="visible")
    # the axis fits the probe's root span: its bar ends inside the track
    root = next(s for s in run.spans if s.parent_span_id is None and s.service == "tracecanary")
    bar = await page.locator(f"#row-{root.span_id} .wf-bar").bounding_box()
    track = await page.locator(f"#row-{root.span_id} .wf-track").bounding_box()
    assert bar and track and bar["x"] + bar["width"] <= track["x"] + track["width"] + 1
    assert root.kind is SpanKind.INTERNAL


async def test_acknowledge_then_mute_an_incident(alerting: AlertingSite, browser: Any, tmp_path: Path) -> None:
    await fire(alerting, status=500)  # failing: announced
    await alerting.slack.wait_until(lambda: len(alerting.alerts()) == 1)
    await remind_due(alerting)
    await fire(alerting, status=500)  # still failing after remind_every: a reminder
    await alerting.slack.wait_until(lambda: len(alerting.alerts()) == 2)
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    await page.goto(f"{alerting.base}/incidents")
    incident = page.locator("article.incident.s-failing")
    assert await incident.count() == 1
    await incident.locator("form.ack input[name=by]").fill("alice")
    await incident.locator("form.ack button").click()
    await page.wait_for_url("**/incidents")
    assert "acknowledged by alice" in await incident.locator("header").inner_text()
    await remind_due(alerting)
    await fire(alerting, status=500)  # acknowledged: no more reminders
    assert len(alerting.alerts()) == 2
    await fire(alerting, status=200)  # the recovery still goes out
    await alerting.slack.wait_until(lambda: len(alerting.alerts()) == 3)
    assert "recovered" in alerting.alerts()[-1]["text"].lower() or "resolved" in alerting.alerts()[-1]["text"].lower()

    await fire(alerting, status=500)  # a new incident: announced
    await alerting.slack.wait_until(lambda: len(alerting.alerts()) == 4)
    await page.goto(f"{alerting.base}/incidents")
    await page.locator("article.incident.s-failing form.mute select").select_option("4h")
    await page.locator("article.incident.s-failing form.mute button").click()
    await page.wait_for_url("**/incidents")
    for _ in range(2):  # reminders are due, but the probe is silenced: held back, nothing sent
        await remind_due(alerting)
        await fire(alerting, status=500)
    assert len(alerting.alerts()) == 4
    await page.reload()
    timeline = await page.locator("article.incident.s-failing ol.timeline").inner_text()
    assert "held" in timeline and "reminder" in timeline
    past = page.locator("article.incident.s-ok")
    assert await past.count() == 1 and "acknowledged" in await past.inner_text()
    shot = _shot_path("incidents.png", tmp_path)
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    await page.goto(f"{alerting.base}/silences")
    row = page.locator("#silences tbody tr", has_text="shop-slack")
    assert "active" in await row.inner_text()
    await row.locator("form.expire button").click()
    await page.wait_for_url("**/silences")
    assert await page.locator("#silences tbody").inner_text() == "No silence."


async def test_create_a_cron_silence_by_tag_in_the_form(alerting: AlertingSite, browser: Any) -> None:
    page = await browser.new_page()
    await page.goto(f"{alerting.base}/silences")
    await page.fill("#new-silence input[name=tags]", "payments")
    await page.check("#new-silence input[name=window][value=cron]")
    await page.fill("#new-silence input[name=cron]", "30 1 * * 6")
    await page.fill("#new-silence input[name=cron_duration]", "3h")
    await page.fill("#new-silence input[name=comment]", "weekly maintenance")
    await page.locator("#new-silence button[type=submit]").click()
    await page.wait_for_url("**/silences")
    text = await page.locator("#silences tbody").inner_text()
    assert "payments" in text and "30 1 * * 6" in text and "weekly maintenance" in text
    await page.fill("#new-silence input[name=probes]", "x")
    await page.fill("#new-silence input[name=duration]", "soon")
    await page.locator("#new-silence button[type=submit]").click()
    assert "invalid duration" in await page.locator("#silence-error").inner_text()


async def test_badge_renders_as_valid_svg(site: Site, browser: Any) -> None:
    page = await browser.new_page()
    response = await page.goto(f"{site.base}/badge/shop-webhook.svg")
    assert response is not None and response.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(await response.text())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert await page.evaluate("document.documentElement.namespaceURI") == "http://www.w3.org/2000/svg"
    box = await page.locator("svg").bounding_box()
    assert box and box["height"] == 20 and box["width"] > 60
    assert "shop-webhook: fail" in (await page.locator("svg title").text_content() or "")


async def test_pages_work_with_javascript_off(alerting: AlertingSite, browser: Any) -> None:
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    await page.goto(f"{alerting.base}/")
    await page.select_option("#filters select[name=state]", "failing")
    await page.locator("#filters button[type=submit]").click()
    await page.wait_for_url("**state=failing**")
    assert await _rows(page) == ["shop-webhook"]
    await page.goto(f"{alerting.base}/probes/shop-webhook?range=7d")
    assert await page.locator("#uptime-chart rect.ubar").count() == 28
    await page.goto(f"{alerting.base}/silences")
    await page.fill("#new-silence input[name=probes]", "never-*")
    await page.locator("#new-silence button[type=submit]").click()
    await page.wait_for_url("**/silences")
    assert "never-*" in await page.locator("#silences tbody").inner_text()
    await context.close()
