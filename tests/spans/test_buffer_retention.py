"""TraceBuffer keeps decoded spans only while a trace is watched, out of the cyclic GC's lists."""

from __future__ import annotations

import gc
import os
import tracemalloc

import pytest

from tracecanary.assertions.spans import Span, SpanLink
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.otlp import RawBatch, encode_request, scan_protobuf
from tracecanary.daemon.spans.untracked import UNTRACKING


def tid() -> str:
    return os.urandom(16).hex()


def span(trace_id: str, name: str, **kw: object) -> Span:
    return Span(trace_id=trace_id, span_id=os.urandom(8).hex(), parent_span_id=None, name=name,
                start_ns=1, end_ns=2, service="svc", **kw)  # type: ignore[arg-type]


def raw(spans: list[Span]) -> RawBatch:
    return scan_protobuf(encode_request(spans).SerializeToString())


def decoded_count(buf: TraceBuffer, trace_id: str) -> int:
    entry = buf._entries[bytes.fromhex(trace_id)]
    return len(entry.spans or ())


@pytest.mark.anyio
async def test_decoded_spans_go_back_to_raw_when_the_last_watch_closes() -> None:
    buf = TraceBuffer()
    t, other = tid(), tid()
    buf.add_batch(raw([span(t, "before"), span(other, "x")]))
    with buf.watch() as w1, buf.watch() as w2:
        w1.add_trace(t)
        w2.add_trace(t)
        buf.add_batch(raw([span(t, "during"), span(other, "y")]))
        assert sorted(s.name for s in await w1.wait(1)) == ["before", "during"]
        assert decoded_count(buf, t) == 2 and decoded_count(buf, other) == 0
        w1.close()
        assert decoded_count(buf, t) == 2  # w2 still waits on it
    assert decoded_count(buf, t) == 0
    assert sorted(s.name for s in buf.trace(t)) == ["before", "during"]  # decoded again from the raw batches
    assert decoded_count(buf, t) == 0  # a plain read does not keep them decoded
    with buf.watch() as w3:  # watched again: everything is delivered again
        w3.add_trace(t)
        assert sorted(s.name for s in await w3.wait(0)) == ["before", "during"]
    assert buf.stats().spans == 4


def test_spans_added_decoded_stay_when_unwatched() -> None:
    buf = TraceBuffer()
    t = tid()
    buf.add_spans([span(t, "direct")])
    buf.add_batch(raw([span(t, "raw")]))
    with buf.watch() as w:
        w.add_trace(t)
    assert decoded_count(buf, t) == 1
    assert sorted(s.name for s in buf.trace(t)) == ["direct", "raw"]


@pytest.mark.anyio
async def test_indexes_and_eviction_stay_exact_after_demotion() -> None:
    buf = TraceBuffer(max_spans=6, correlation_attributes=["job.id"])
    target, linking = tid(), tid()
    link = SpanLink(target, os.urandom(8).hex())
    with buf.watch() as w:
        w.add_trace(linking)
        buf.add_batch(raw([span(linking, "consumer", links=(link,), attributes={"job.id": "J1"}),
                           span(target, "producer")]))
        assert [s.name for s in await w.wait(1)] == ["consumer"]
    assert buf.linking_traces(target) == {linking}
    assert buf.traces_with_attribute("job.id", "J1") == {linking}
    for _ in range(3):  # push both traces out of the span budget
        buf.add_batch(raw([span(tid(), "a"), span(tid(), "b")]))
    assert buf.stats().evicted_traces >= 2
    assert buf.linking_traces(target) == set() and buf.traces_with_attribute("job.id", "J1") == set()
    assert not buf._indexes.link_chunks and not buf._indexes.corr_chunks


@pytest.mark.anyio
async def test_watched_spans_cost_the_collector_nothing_and_closing_releases_them() -> None:
    buf = TraceBuffer()
    batches = [raw([span(t, f"s{i}", attributes={"i": i}) for i in range(16)]) for t in (tid() for _ in range(20))]
    traces = [b.decode()[0].trace_id for b in batches]
    tracemalloc.start()
    try:
        gc.collect()
        before, mem_before = len(gc.get_objects()), tracemalloc.get_traced_memory()[0]
        with buf.watch() as w:
            for t in traces:
                w.add_trace(t)
            for b in batches:
                buf.add_batch(b)
            got = await w.wait(1)
            assert len(got) == 320 and got[0].attributes == {"i": 0}
            if UNTRACKING:  # plain data, out of the collector's lists (untracked.py)
                assert not any(gc.is_tracked(s) or gc.is_tracked(s.attributes) for s in got)
            del got
            gc.collect()
            watched, mem_watched = len(gc.get_objects()), tracemalloc.get_traced_memory()[0]
        gc.collect()
        mem_after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert watched - before <= 20 * 8  # a few tracked objects per trace and batch, none per decoded span
    assert mem_watched - mem_before >= 320 * 100  # the decoded spans
    assert mem_after - mem_before <= (mem_watched - mem_before) / 4  # back to the raw batches
