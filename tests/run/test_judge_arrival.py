"""watch_trace: a span reaching the buffer wakes the run at once; time to verdict counts from that arrival."""

from __future__ import annotations

import secrets
import time

import aiohttp
import anyio
import anyio.lowlevel
import pytest

from tests.probes.helpers import make_ctx
from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.spans import Span, SpanKind
from tracecanary.daemon.run.judge import TraceOutcome, watch_trace
from tracecanary.daemon.spans.buffer import TraceBuffer

EXPECT = TraceExpectation.model_validate({"tree": [{"span": "POST /webhook", "children": [{"span": "handle"}]}]})


@pytest.mark.anyio
async def test_arrival_wakes_the_run_and_time_to_verdict_counts_from_arrival() -> None:
    buffer = TraceBuffer()
    async with aiohttp.ClientSession() as session:
        ctx = make_ctx(session, deadline_s=30.0)
        tid = ctx.trace.trace_id
        root = Span(tid, ctx.trace.span_id, None, "probe", SpanKind.INTERNAL, ctx.trigger_ns, ctx.trigger_ns)
        server, handle = secrets.token_hex(8), secrets.token_hex(8)
        now = time.time_ns()
        spans = [Span(tid, server, root.span_id, "POST /webhook", SpanKind.SERVER, now, now + 10, "shop"),
                 Span(tid, handle, server, "handle", SpanKind.INTERNAL, now + 1, now + 5, "shop")]
        outcome: list[TraceOutcome] = []

        async def run() -> None:
            outcome.append(await watch_trace(EXPECT, ctx, buffer, root))

        with anyio.fail_after(5):  # the deadline is 30 s away: only the arrival can end this early
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                while not buffer._watch_traces:  # the run is waiting on its trace
                    await anyio.lowlevel.checkpoint()
                buffer.add_spans(spans)
                # The event loop stays busy with other work for 50 ms before the run gets to judge;
                # that delay is part of "span arrival → verdict", so it must show in the figure.
                busy_until = time.perf_counter() + 0.05
                while time.perf_counter() < busy_until:
                    pass
        assert outcome[0].findings == []
        assert outcome[0].report is not None and outcome[0].report["verdict"] == "pass"
        ttv = outcome[0].time_to_verdict_s
        assert ttv is not None and 0.05 <= ttv < 5
