"""TraceBuffer: budgets, eviction, indexes and async watches (no polling)."""

from __future__ import annotations

import os

import anyio
import pytest

from tracecanary.assertions.spans import Span, SpanLink
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.otlp import encode_request, scan_protobuf


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tid() -> str:
    return os.urandom(16).hex()


def span(trace_id: str, name: str = "op", parent: str | None = None, **kw: object) -> Span:
    return Span(trace_id=trace_id, span_id=os.urandom(8).hex(), parent_span_id=parent, name=name,
                start_ns=1, end_ns=2, service="svc", **kw)  # type: ignore[arg-type]


def raw(spans: list[Span]):  # type: ignore[no-untyped-def]
    return scan_protobuf(encode_request(spans).SerializeToString())


@pytest.mark.parametrize("path", ["spans", "batch"])
def test_add_and_read_back(path: str) -> None:
    buf = TraceBuffer()
    a, b = tid(), tid()
    spans = [span(a, "root"), span(a, "child"), span(b, "other")]
    assert (buf.add_spans(spans) if path == "spans" else buf.add_batch(raw(spans))) == 3
    assert sorted(s.name for s in buf.trace(a)) == ["child", "root"]
    assert [s.name for s in buf.trace(b)] == ["other"]
    assert buf.trace(tid()) == [] and buf.trace("not-hex") == []
    st = buf.stats()
    assert (st.spans, st.traces, st.received_total, st.evicted_spans) == (3, 2, 3, 0)
    assert st.bytes > 0


def test_lazy_batches_decode_only_the_requested_trace() -> None:
    buf = TraceBuffer()
    a, b = tid(), tid()
    first, second = [span(a, "a1"), span(b, "b1")], [span(a, "a2")]
    buf.add_batch(raw(first))
    buf.add_batch(raw(second))
    assert sorted(s.name for s in buf.trace(a)) == ["a1", "a2"]
    assert [s.name for s in buf.trace(a)] == [s.name for s in buf.trace(a)]  # decoded once, stable
    assert buf.stats().spans == 3


def test_duplicate_span_keeps_latest() -> None:
    buf = TraceBuffer()
    s = span(tid(), "v1")
    buf.add_spans([s])
    buf.add_spans([Span(**{**{f: getattr(s, f) for f in s.__dataclass_fields__}, "name": "v2"})])
    assert [x.name for x in buf.trace(s.trace_id)] == ["v2"]


def test_evicts_oldest_traces_over_span_budget() -> None:
    buf = TraceBuffer(max_spans=5)
    ids = [tid() for _ in range(4)]
    for t in ids:
        buf.add_batch(raw([span(t), span(t)]))
    st = buf.stats()
    assert st.spans <= 5 and st.traces == 2
    assert (st.evicted_traces, st.evicted_spans, st.received_total) == (2, 4, 8)
    assert buf.trace(ids[0]) == [] and len(buf.trace(ids[3])) == 2


def test_recently_updated_trace_survives_eviction() -> None:
    buf = TraceBuffer(max_spans=5)
    old, mid, new = tid(), tid(), tid()
    buf.add_spans([span(old)])
    buf.add_spans([span(mid)])
    buf.add_spans([span(old)])  # old is now the most recently updated
    buf.add_spans([span(new), span(new), span(new)])
    assert buf.trace(mid) == []
    assert (len(buf.trace(old)), len(buf.trace(new)), buf.stats().spans) == (2, 3, 5)


def test_evicts_over_byte_budget() -> None:
    buf = TraceBuffer(max_bytes=20_000)
    for _ in range(50):
        buf.add_spans([span(tid(), attributes={f"k{i}": "v" * 50 for i in range(8)})])
    st = buf.stats()
    assert st.bytes <= 20_000 + 400 * st.traces and st.evicted_traces > 0


def test_retention_window() -> None:
    clock = FakeClock()
    buf = TraceBuffer(retention_s=60, clock=clock)
    old = tid()
    buf.add_spans([span(old)])
    clock.now += 30
    young = tid()
    buf.add_spans([span(young)])
    clock.now += 31
    buf.expire()
    assert buf.trace(old) == [] and len(buf.trace(young)) == 1
    assert buf.stats().evicted_traces == 1


def test_link_index_and_cleanup_on_eviction() -> None:
    buf = TraceBuffer(max_spans=2)
    target, src1, src2 = tid(), tid(), tid()
    link = SpanLink(target, os.urandom(8).hex())
    buf.add_batch(raw([span(src1, links=(link,))]))
    buf.add_spans([span(src2, links=(link,))])
    assert buf.linking_traces(target) == {src1, src2}
    buf.add_spans([span(tid()), span(tid())])  # evicts both linking traces
    assert buf.linking_traces(target) == set()


def test_correlation_index_configured_and_tracked_later() -> None:
    buf = TraceBuffer(correlation_attributes=["job.id"])
    a, b, c = tid(), tid(), tid()
    buf.add_batch(raw([span(a, attributes={"job.id": "J-1"})]))
    buf.add_spans([span(b, attributes={"job.id": 42})])
    buf.add_batch(raw([span(c, attributes={"run": "R-9"}, resource={"service.name": "svc", "tenant": "t1"})]))
    assert buf.traces_with_attribute("job.id", "J-1") == {a}
    assert buf.traces_with_attribute("job.id", "42") == {b}
    assert buf.traces_with_attribute("run", "R-9") == set()  # not indexed yet
    buf.track_attribute("run")
    buf.track_attribute("tenant")
    assert buf.traces_with_attribute("run", "R-9") == {c}
    assert buf.traces_with_attribute("tenant", "t1") == {c}


@pytest.mark.anyio
async def test_watch_wakes_on_new_spans_and_never_misses_between_calls() -> None:
    buf = TraceBuffer()
    t = tid()
    early = span(t, "early")
    buf.add_batch(raw([early]))
    with buf.watch() as w:
        w.add_trace(t)
        assert [s.name for s in await w.wait(1.0)] == ["early"]  # already buffered: delivered
        assert await w.wait(0.01) == []  # timeout
        got: list[str] = []

        async def waiter() -> None:
            with anyio.fail_after(5):
                got.extend(s.name for s in await w.wait(10.0))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            buf.add_batch(raw([span(t, "late"), span(tid(), "unrelated")]))
        assert got == ["late"]
        buf.add_spans([span(t, "between-1")])  # nobody waiting right now
        buf.add_batch(raw([span(t, "between-2")]))
        assert [s.name for s in await w.wait(0)] == ["between-1", "between-2"]
    buf.add_spans([span(t, "after-close")])
    assert len(buf._watch_traces) == 0


@pytest.mark.anyio
async def test_watch_follows_linking_traces() -> None:
    buf = TraceBuffer()
    target, before, after = tid(), tid(), tid()
    link = SpanLink(target, os.urandom(8).hex())
    buf.add_batch(raw([span(before, "consumer-1", links=(link,)), span(before, "child-1")]))
    with buf.watch() as w:
        w.add_links_to(target)
        assert sorted(s.name for s in await w.wait(1)) == ["child-1", "consumer-1"]
        buf.add_batch(raw([span(after, "consumer-2", links=(link,)), span(after, "child-2")]))
        buf.add_batch(raw([span(after, "grandchild-2")]))  # no link itself; its trace is followed
        assert sorted(s.name for s in await w.wait(1)) == ["child-2", "consumer-2", "grandchild-2"]
        assert w.followed_traces == {before, after}


@pytest.mark.anyio
async def test_watch_follows_correlated_traces() -> None:
    buf = TraceBuffer()
    job = tid()
    buf.add_batch(raw([span(job, "job start", attributes={"job.id": "J-7"})]))
    with buf.watch() as w:
        w.add_correlation("job.id", "J-7")  # tracked now: the buffered span is indexed too
        assert [s.name for s in await w.wait(1)] == ["job start"]
        buf.add_batch(raw([span(job, "job step")]))
        other = tid()
        buf.add_spans([span(other, "second run", attributes={"job.id": "J-7"}), span(other, "x")])
        assert sorted(s.name for s in await w.wait(1)) == ["job step", "second run", "x"]
