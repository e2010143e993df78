"""The dashboard in a real browser (Debian chromium driven by Playwright)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.web.dashboard.conftest import Site
from tracecanary.daemon.store.base import RunStatus

pytestmark = pytest.mark.anyio


async def test_failing_probe_shows_missing_node_in_waterfall(site: Site, browser: Any, tmp_path: Path) -> None:
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    await page.goto(f"{site.base}/")
    first = page.locator("#probes tbody tr").first
    assert await first.get_attribute("data-probe") == "shop-webhook"
    assert "failing" in (await first.locator(".badge").inner_text())
    await first.locator("a", has_text="shop-webhook").click()
    await page.wait_for_url("**/probes/shop-webhook?range=24h")
    assert await page.locator("#duration-chart rect.bar").count() == 12
    await page.locator("table.runs tbody tr").first.locator("a").click()
    await page.wait_for_url("**/runs/*")
    ghost = page.locator(".wf-row.wf-ghost")
    await ghost.wait_for()
    assert await ghost.count() == 1
    assert "fetch-gex-data" in await ghost.inner_text()
    assert "fetch-market-data" in await ghost.get_attribute("title")  # the closest span, and why
    # the ghost sits right after its siblings under data-enrichment, indented one level deeper
    labels = await page.locator(".wf-row:not(.wf-trace) .wf-label .name").all_inner_texts()
    assert labels.index('span "fetch-gex-data"') == labels.index("fetch-market-data") + 1
    pad = {n: await page.locator(".wf-row", has_text=n).first.locator(".wf-label").evaluate(
        "e => parseInt(getComputedStyle(e).paddingLeft)") for n in ("data-enrichment", "fetch-market-data")}
    ghost_pad = await ghost.locator(".wf-label").evaluate("e => parseInt(getComputedStyle(e).paddingLeft)")
    assert ghost_pad == pad["fetch-market-data"] > pad["data-enrichment"]
    # bars are laid out on the time axis: the linked consumer starts after the producer
    pub = await page.locator(".wf-row", has_text="orders publish").locator(".wf-bar").bounding_box()
    proc = await page.locator(".wf-row", has_text="orders process").locator(".wf-bar").bounding_box()
    assert pub and proc and pub["width"] > 0 and proc["x"] > pub["x"]
    assert await page.locator(".wf-trace", has_text="linked trace").count() == 1
    assert await page.locator(".findings", has_text="fetch-gex-data").count() == 1
    shot = tmp_path / "run.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


async def test_waterfall_renders_matched_spans(site: Site, browser: Any) -> None:
    runs = await site.control.store.list_runs("shop-slack", limit=1)
    page = await browser.new_page()
    await page.goto(f"{site.base}/runs/{runs[0].run_id}")
    rows = page.locator(".wf-row.wf-span")
    assert await rows.count() == 9
    assert await page.locator(".wf-row.mk-matched").count() == 8  # every span but the probe's root
    assert await page.locator(".wf-row.wf-ghost").count() == 0
    widths = await page.locator(".wf-row.wf-span .wf-bar").evaluate_all(
        "bars => bars.map(b => b.getBoundingClientRect().width)")
    assert all(w > 0 for w in widths)
    assert (await page.locator("#run-verdict").inner_text()) == "pass"


async def test_run_again_fires_and_follows_live_spans(site: Site, browser: Any) -> None:
    runs = await site.control.store.list_runs("shop-slack", limit=1)
    page = await browser.new_page()
    await page.goto(f"{site.base}/runs/{runs[0].run_id}")
    await page.locator("button.run-again").click()
    await page.wait_for_url(lambda url: "/runs/" in url and runs[0].run_id not in url)
    new_id = page.url.rsplit("/", 1)[1]
    # live view: the waterfall grows while the run is going, then the page reloads with the verdict
    await page.locator(".wf-row.wf-span").first.wait_for(timeout=10_000)
    await page.wait_for_function(
        "document.querySelector('#run-verdict') && document.querySelector('#run-verdict').innerText === 'pass'",
        timeout=15_000)
    assert await page.locator(".wf-row.wf-span").count() == 9
    stored = await site.control.store.get_run(new_id)
    assert stored is not None and stored.status is RunStatus.FINISHED
