"""Done-when of the Sentry issue: a sentry-sdk-only service's spans, pulled from the emulator's trace
API, are judged against the expected tree by the same engine the buffer source feeds."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import pytest

from tests.fixtures.sentry_service import Service, integration_for, make_probe_context
from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.judge import judge_offline
from tracecanary.assertions.spans import Span
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.spans.sentry import SentryTraceSource
from tracecanary.demo.emulators.sentry import SentryEmulator
from tracecanary.integrations import Integrations

pytestmark = pytest.mark.anyio

EXPECT = TraceExpectation.model_validate({
    "source": "sentry",
    "tree": [{
        "span": "POST /checkout", "service": "shop", "kind": "server",
        "children": [
            {"span": "load-cart", "kind": "client"},
            {"span": "charge-card", "children": [{"span": "fraud-check"}]},
        ],
    }],
    "forbid": [{"status": "error"}],
})


async def run(session: aiohttp.ClientSession, emulator: SentryEmulator, service: Service, fail: bool) -> list[Span]:
    ctx: Any = make_probe_context(session, Integrations(sentry=integration_for(emulator)))
    with anyio.fail_after(10):
        async with session.post(service.url + "/checkout", params={"fail": "1"} if fail else {},
                                headers=ctx.trace_headers()):
            pass

    def settled(spans: list[Span]) -> bool:
        # What the runner does with source: sentry — poll until the judge has an answer.
        return len(spans) >= 4 and (not fail or any(s.events for s in spans))

    source = SentryTraceSource(ctx.session, ctx.integrations.sentry, poll_initial_s=0.02, poll_max_s=0.1)
    spans = await source.poll(ctx.trace.trace_id, settled, ctx.deadline_s)
    assert {s.trace_id for s in spans} == {ctx.trace.trace_id}
    return spans


async def test_clean_run_passes_and_failing_run_names_the_span(
    sentry_emulator: SentryEmulator, sentry_service: Service
) -> None:
    async with aiohttp.ClientSession() as session:
        good = await run(session, sentry_emulator, sentry_service, fail=False)
        bad = await run(session, sentry_emulator, sentry_service, fail=True)
    passed = judge_offline(EXPECT, good, trace_id=good[0].trace_id)
    assert passed.verdict is Verdict.PASS, [str(f) for f in passed.findings]
    failed = judge_offline(EXPECT, bad, trace_id=bad[0].trace_id)
    assert failed.verdict is Verdict.FAIL
    text = "\n".join(str(f) for f in failed.findings)
    assert "charge-card" in text and "POST /checkout" in text
