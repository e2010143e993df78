"""A probe whose ``requires:`` is unmet in a real ``tracecanary run``: its runs are stored as skipped
with the reason, counted in ``tracecanary_runs_total{verdict="skipped"}``, shown on the dashboard and
in the API — and never alerted, while a failing probe beside it is (the alert path works)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import aiohttp
import pytest

from tests.alerts.helpers import FlakyHook
from tests.daemon.harness import metric_value
from tests.daemon.support import DaemonProcess, Target, eventually
from tests.probes.helpers import serve

pytestmark = pytest.mark.anyio
UNSET = "TRACECANARY_TEST_UNSET_TOKEN"


@pytest.fixture
async def target() -> AsyncIterator[str]:
    async with serve(Target(healthy=False).app()) as base:
        yield base


async def text(d: DaemonProcess, path: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"{d.base}{path}") as r:
        assert r.status == 200, path
        return await r.text()


async def test_skipped_runs_are_counted_and_shown_never_alerted(tmp_path: Path, target: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UNSET, raising=False)  # the daemon inherits this environment
    hook = FlakyHook(down=False)
    async with serve(hook.app()) as hook_url:
        config = tmp_path / "suite.yaml"
        config.write_text(f"""
alerts:
  channels: {{hook: {{type: webhook, url: "{hook_url}/hook"}}}}
  policies: {{default: {{channels: [hook], failure_threshold: 1}}}}
probes:
  - id: needs-token
    kind: http
    timeout: 5s
    requires: {{env: [{UNSET}]}}
    request: {{url: "{target}/check", headers: {{Authorization: "Bearer ${{{UNSET}}}"}}}}
  - id: broken
    kind: http
    timeout: 5s
    request: {{url: "{target}/check"}}
""")
        d = DaemonProcess(config, tmp_path / "tc.db")
        d.start()
        try:
            await d.ready()
            async def runs(probe_id: str, status: str) -> int:
                code, body = await d.get(f"/api/probes/{probe_id}/runs")
                return sum(r["status"] == status for r in body["runs"]) if code == 200 else 0

            await d.run_now("broken")
            for n in (1, 2):  # one at a time: a second "run now" while one is in flight is refused
                await d.run_now("needs-token")
                await eventually(lambda n=n: _at_least(runs("needs-token", "skipped"), n), 30, f"{n} skipped runs")
            await eventually(lambda: len(hook.accepted) >= 1, 30, "the failing probe's alert")
            _, body = await d.get("/api/probes/needs-token/runs")
            assert {(r["verdict"], r["abort_reason"]) for r in body["runs"]} == {(None, f"{UNSET} is not set")}
            _, probes = await d.get("/api/probes")
            states = {p["id"]: p["state"] for p in probes["probes"]}
            assert states == {"needs-token": "skipped", "broken": "failing"}

            metrics = await text(d, "/metrics")
            assert metric_value(metrics, "tracecanary_runs_total", probe="needs-token", kind="http",
                                verdict="skipped") == 2
            assert metric_value(metrics, "probe_success", probe="needs-token", kind="http") is None
            assert metric_value(metrics, "probe_success", probe="broken", kind="http") == 0

            overview = await text(d, "/")
            assert 'badge s-skipped' in overview and f"skipped: {UNSET} is not set" in overview
            page = await text(d, "/probes/needs-token")
            assert 'v v-skipped' in page and f"{UNSET} is not set" in page
            run_page = await text(d, f"/runs/{body['runs'][0]['run_id']}")
            assert "<dt>skipped</dt>" in run_page and f"{UNSET} is not set" in run_page
            assert "needs-token" not in str(hook.accepted) and "broken" in str(hook.accepted)
            assert not [n for n in await d.notifications() if n.get("probe_id") == "needs-token"]
        finally:
            d.stop()


async def _at_least(count: Awaitable[int], n: int) -> bool:
    return await count >= n
