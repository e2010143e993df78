"""The Crons hook: one check-in per retry chain, its duration from the first attempt's start to the end."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web

from tests.probes.helpers import serve
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.observe.crons import CronHook
from tracecanary.daemon.observe.sentry import CronReporter
from tracecanary.daemon.run.runner import Runner, RunnerDeps
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.probes.base import ProbeSpec
from tracecanary.probes.http import HttpProbe

pytestmark = pytest.mark.anyio

RETRY_DELAY_S = 0.3


class RecordingReporter(CronReporter):
    """Records check-ins instead of sending them (sentry-sdk is process-global; see test_sentry_reporting)."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []
        self.finished: list[tuple[str, bool, float]] = []

    def checkin_start(self, probe: ProbeSpec) -> str:
        self.started.append(f"check-in-{len(self.started) + 1}")
        return self.started[-1]

    def checkin_finish(self, probe: ProbeSpec, check_in_id: str, ok: bool, duration_s: float) -> None:
        self.finished.append((check_in_id, ok, duration_s))


async def test_check_in_duration_covers_the_whole_retry_chain(tmp_path: Path) -> None:
    hits: list[int] = []

    async def flaky(request: web.Request) -> web.Response:
        hits.append(1)
        return web.json_response({"ok": len(hits) > 1}, status=200 if len(hits) > 1 else 500)

    app = web.Application()
    app.add_routes([web.get("/flaky", flaky)])
    reporter = RecordingReporter()
    store = SqliteStore(f"sqlite:///{tmp_path}/runs.db")
    await store.open()
    try:
        async with serve(app) as url, aiohttp.ClientSession() as session:
            runner = Runner(RunnerDeps(store=store, buffer=TraceBuffer(), session=session,
                                       hooks=[CronHook(reporter)]))
            probe = HttpProbe.model_validate({
                "id": "flaky", "kind": "http", "timeout": "5s", "retries": {"count": 2, "delay": f"{RETRY_DELAY_S}s"},
                "request": {"url": f"{url}/flaky"}, "expect": {"response": {"status": 200}},
            })
            with anyio.fail_after(10):
                first, second = await runner.run_probe(probe)
    finally:
        await store.aclose()
    assert (first.verdict, first.final, second.verdict, second.final) == (Verdict.FAIL, False, Verdict.PASS, True)
    assert second.first_run_id == first.run_id
    assert reporter.started == ["check-in-1"]  # one check-in for the chain, opened by the first attempt
    [(check_in_id, ok, duration_s)] = reporter.finished
    assert second.finished_ns is not None
    assert (check_in_id, ok) == ("check-in-1", True)
    assert duration_s == pytest.approx((second.finished_ns - first.started_ns) / 1e9)
    assert duration_s >= RETRY_DELAY_S  # not just the last attempt's own duration


@pytest.mark.parametrize(("verdict", "ok"), [(Verdict.UNKNOWN, True), (Verdict.FAIL, False), (Verdict.PASS, True)])
async def test_unknown_verdict_closes_the_check_in_ok(verdict: Verdict, ok: bool) -> None:
    """No telemetry is not a failure: Crons must not page the probe's owner for a dead exporter."""
    from tracecanary.daemon.store.base import RunRecord, RunStatus

    reporter = RecordingReporter()
    hook = CronHook(reporter)
    probe = HttpProbe.model_validate({"id": "p", "kind": "http", "every": "60s",
                                      "request": {"url": "http://127.0.0.1:9/x"}})
    run = RunRecord(run_id="r1", probe_id="p", kind="http", attempt=1, first_run_id="r1", trace_id="0" * 32,
                    started_ns=1_000_000_000)
    await hook.on_run_started(probe, run)
    run.status, run.verdict, run.finished_ns = RunStatus.FINISHED, verdict, 3_000_000_000
    await hook.on_run_finished(probe, run)
    assert reporter.finished == [("check-in-1", ok, 2.0)]


@pytest.mark.parametrize(("status", "ok"), [("skipped", True), ("aborted", False)])
async def test_a_skipped_run_closes_the_check_in_ok(status: str, ok: bool) -> None:
    """A requires: precondition unmet is never alerted: Crons sees the scheduled run as done."""
    from tracecanary.daemon.store.base import RunRecord, RunStatus

    reporter = RecordingReporter()
    hook = CronHook(reporter)
    probe = HttpProbe.model_validate({"id": "p", "kind": "http", "every": "60s", "requires": {"env": ["X"]},
                                      "request": {"url": "http://127.0.0.1:9/x"}})
    run = RunRecord(run_id="r1", probe_id="p", kind="http", attempt=1, first_run_id="r1", trace_id="0" * 32,
                    started_ns=1_000_000_000)
    await hook.on_run_started(probe, run)
    run.status, run.abort_reason, run.finished_ns = RunStatus(status), "X is not set", 1_500_000_000
    await hook.on_run_finished(probe, run)
    assert reporter.finished == [("check-in-1", ok, 0.5)]
