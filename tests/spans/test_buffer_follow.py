"""TraceBuffer's public registration API that Watch uses: follow_* returns what is buffered now and
routes later spans to the watch; unfollow stops them."""

from __future__ import annotations

import os

import pytest

from tracecanary.assertions.spans import Span, SpanLink
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.otlp import RawBatch, encode_request, scan_protobuf

pytestmark = pytest.mark.anyio


def tid() -> str:
    return os.urandom(16).hex()


def span(trace_id: str, name: str, **kw: object) -> Span:
    return Span(trace_id=trace_id, span_id=os.urandom(8).hex(), parent_span_id=None, name=name,
                start_ns=1, end_ns=2, service="svc", **kw)  # type: ignore[arg-type]


def raw(spans: list[Span]) -> RawBatch:
    return scan_protobuf(encode_request(spans).SerializeToString())


async def test_follow_trace_returns_the_buffered_spans_then_delivers_later_ones() -> None:
    buf = TraceBuffer()
    t = tid()
    buf.add_batch(raw([span(t, "before")]))
    w = buf.watch()
    assert [s.name for s in buf.follow_trace(w, bytes.fromhex(t))] == ["before"]
    buf.add_batch(raw([span(t, "after")]))
    assert [s.name for s in await w.wait(0)] == ["after"]  # "before" was returned, not delivered
    buf.unfollow(w, {bytes.fromhex(t)}, (), ())
    buf.add_batch(raw([span(t, "unfollowed")]))
    assert await w.wait(0) == []
    assert sorted(s.name for s in buf.trace(t)) == ["after", "before", "unfollowed"]


async def test_follow_links_and_correlation_return_the_traces_buffered_now() -> None:
    buf = TraceBuffer(correlation_attributes=["order.id"])
    target, linking, correlated = tid(), tid(), tid()
    buf.add_batch(raw([span(linking, "consume", links=(SpanLink(target, "ab" * 8),)),
                       span(correlated, "ship", attributes={"order.id": 42})]))
    w = buf.watch()
    assert buf.follow_links(w, bytes.fromhex(target)) == {bytes.fromhex(linking)}
    assert buf.follow_correlation(w, ("order.id", "42")) == {bytes.fromhex(correlated)}
    later_link, later_corr = tid(), tid()
    buf.add_batch(raw([span(later_link, "retry", links=(SpanLink(target, "cd" * 8),)),
                       span(later_corr, "bill", attributes={"order.id": "42"})]))
    assert {later_link, later_corr} <= w.followed_traces  # the buffer told the watch (Watch.follow)
    followed = w.followed_traces
    buf.unfollow(w, {bytes.fromhex(t) for t in followed}, {bytes.fromhex(target)}, {("order.id", "42")})
    buf.add_batch(raw([span(tid(), "late", links=(SpanLink(target, "ef" * 8),)),
                       span(tid(), "late", attributes={"order.id": 42})]))
    assert w.followed_traces == followed  # unfollowed: no new trace reaches it
