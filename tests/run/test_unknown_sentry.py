"""`unknown` with Sentry as the span source: only when Sentry failed or never returned the trace.

The real Runner pulls from the Sentry emulator over HTTP; the contrast case runs the sentry-sdk-only
service (a subprocess) so Sentry really holds the trace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fixtures.sentry_service import Service, integration_for
from tests.probes.helpers import serve
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.run.runner import Runner, RunnerDeps
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.sentry import SentryTraceSource
from tracecanary.daemon.store.base import RunRecord
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.demo.emulators.sentry import SentryEmulator
from tracecanary.probes.http import HttpProbe

pytestmark = pytest.mark.anyio


@pytest.fixture
async def quiet_target() -> AsyncIterator[str]:
    """A system under test that answers 200 and sends nothing to Sentry."""

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/checkout", ok)
    async with serve(app) as base:
        yield base


async def run_once(tmp_path: Path, emulator: SentryEmulator, url: str, services: list[str],
                   probe_timeout: str = "600ms") -> RunRecord:
    store = SqliteStore(f"sqlite:///{tmp_path}/runs.db")
    await store.open()
    try:
        async with aiohttp.ClientSession() as session:
            source = SentryTraceSource(session, integration_for(emulator), poll_initial_s=0.02, poll_max_s=0.1,
                                       request_timeout_s=2.0, max_retry_after_s=0.05)
            runner = Runner(RunnerDeps(store=store, buffer=TraceBuffer(), session=session, sentry_source=source))
            tree: list[dict[str, Any]] = [{"span": f"{s} work", "service": s} for s in services]
            probe = HttpProbe.model_validate({
                "id": "checkout", "kind": "http", "timeout": probe_timeout,
                "request": {"method": "POST", "url": url},
                "expect": {"response": {"status": 200}, "trace": {"source": "sentry", "tree": tree}},
            })
            [run] = await runner.run_probe(probe)
            return run
    finally:
        await store.aclose()


async def test_sentry_down_is_unknown(tmp_path: Path, sentry_emulator: SentryEmulator, quiet_target: str) -> None:
    await sentry_emulator.stop()  # its port now refuses connections
    run = await run_once(tmp_path, sentry_emulator, quiet_target + "/checkout", ["shop"])
    assert run.verdict is Verdict.UNKNOWN, [str(f) for f in run.findings]
    message = run.findings[0].message
    assert message.startswith("no spans from shop since the trigger "), message
    assert "sentry failed: GET /organizations/acme/trace/" in message, message
    assert message.endswith("the telemetry pipeline may be down")


async def test_sentry_answering_with_errors_is_unknown(tmp_path: Path, sentry_emulator: SentryEmulator,
                                                       quiet_target: str) -> None:
    sentry_emulator.throttle(10_000, retry_after_s=0.05)  # every API request: 429
    run = await run_once(tmp_path, sentry_emulator, quiet_target + "/checkout", ["shop"])
    assert run.verdict is Verdict.UNKNOWN, [str(f) for f in run.findings]
    assert "sentry failed" in run.findings[0].message and "429" in run.findings[0].message


async def test_sentry_never_returning_the_trace_is_unknown(tmp_path: Path, sentry_emulator: SentryEmulator,
                                                           quiet_target: str) -> None:
    run = await run_once(tmp_path, sentry_emulator, quiet_target + "/checkout", ["shop"])
    assert run.verdict is Verdict.UNKNOWN, [str(f) for f in run.findings]
    assert "sentry never returned the trace" in run.findings[0].message
    assert run.trace_report is not None and run.trace_report["telemetry"]["pulled"] is False


async def test_a_trace_sentry_returned_without_the_named_service_fails(
    tmp_path: Path, sentry_emulator: SentryEmulator, sentry_service: Service,
) -> None:
    # The service (project "shop") reports the trace to Sentry; the expectation waits for "billing".
    run = await run_once(tmp_path, sentry_emulator, sentry_service.url + "/checkout", ["billing"],
                         probe_timeout="5s")
    assert run.verdict is Verdict.FAIL, [str(f) for f in run.findings]
    assert all(f.type != "trace.no_telemetry" for f in run.findings)
    assert run.trace_report is not None and run.trace_report["telemetry"]["pulled"] is True
    assert any(s.service == "shop" for s in run.spans)
