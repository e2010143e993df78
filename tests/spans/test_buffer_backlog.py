"""A trace followed with thousands of spans already buffered is decoded a batch at a time, between steps."""

from __future__ import annotations

import os

import anyio
import anyio.lowlevel
import pytest

from tracecanary.assertions.spans import Span
from tracecanary.daemon.spans.buffer import DECODE_NOW_SPANS, TraceBuffer
from tracecanary.daemon.spans.otlp import encode_request, scan_protobuf

pytestmark = pytest.mark.anyio
BATCH = 512


def span(trace_id: str, i: int) -> Span:
    return Span(trace_id=trace_id, span_id=os.urandom(8).hex(), parent_span_id=None, name=f"op-{i}",
                start_ns=i, end_ns=i + 1, service="svc", attributes={"i": i})


def fill(buf: TraceBuffer, trace_id: str, n: int) -> None:
    spans = [span(trace_id, i) for i in range(n)]
    for i in range(0, n, BATCH):
        buf.add_batch(scan_protobuf(encode_request(spans[i:i + BATCH]).SerializeToString()))


async def test_a_large_backlog_is_decoded_as_the_watch_waits_with_other_tasks_running_between() -> None:
    buf, t = TraceBuffer(), os.urandom(16).hex()
    n = 3 * DECODE_NOW_SPANS
    fill(buf, t, n)
    steps = 0

    async def other_task() -> None:
        nonlocal steps
        while True:
            await anyio.lowlevel.checkpoint()
            steps += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_task)
        with buf.watch() as w:
            w.add_trace(t)  # nothing decoded in this step
            assert buf._entries[bytes.fromhex(t)].raw_spans == n
            got = await w.wait(5)
            assert steps >= n // BATCH - 1  # the loop ran other tasks between the batches
            assert len(got) == n and len({s.span_id for s in got}) == n
            fill(buf, t, 10)  # later spans still arrive at once
            assert len(await w.wait(5)) == 10
        tg.cancel_scope.cancel()
    assert buf._entries[bytes.fromhex(t)].raw_spans == n + 10  # back to raw once nobody watches


async def test_every_watch_of_a_backlogged_trace_gets_each_span_once() -> None:
    buf, t = TraceBuffer(), os.urandom(16).hex()
    n = 2 * DECODE_NOW_SPANS + 100
    fill(buf, t, n)
    with buf.watch() as a, buf.watch() as b:
        a.add_trace(t)
        b.add_trace(t)  # both wait on the backlog
        first = await a.wait(0)  # decodes all of it, delivering to every watch of the trace
        second = await b.wait(0)
        with buf.watch() as c:  # joins after: everything is decoded by now, handed over at once
            c.add_trace(t)
            third = await c.wait(0)
    for got in (first, second, third):
        assert len(got) == n and len({s.span_id for s in got}) == n


async def test_reading_a_backlogged_trace_hands_the_rest_to_its_watches() -> None:
    buf, t = TraceBuffer(), os.urandom(16).hex()
    n = 2 * DECODE_NOW_SPANS
    fill(buf, t, n)
    with buf.watch() as w:
        w.add_trace(t)
        assert len(buf.trace(t)) == n  # a plain read decodes all of it now
        got = await w.wait(0)
    assert len(got) == n and len({s.span_id for s in got}) == n
