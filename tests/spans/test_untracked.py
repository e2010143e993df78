"""Decoded spans and the containers of them are out of the cyclic GC's lists, and still freed as before."""

from __future__ import annotations

import gc
import os
import tracemalloc

import pytest

from tracecanary.assertions.spans import Span, SpanEvent, SpanLink
from tracecanary.daemon.spans.otlp import encode_request, scan_protobuf
from tracecanary.daemon.spans.untracked import UNTRACKING, untrack, untrack_spans

pytestmark = pytest.mark.skipif(not UNTRACKING, reason="needs CPython's PyObject_GC_UnTrack")


def decoded(n: int) -> list[Span]:
    t = os.urandom(16).hex()
    spans = [Span(t, os.urandom(8).hex(), None, f"op-{i}", start_ns=i, end_ns=i + 1, service="svc",
                  attributes={"i": i, "tags": ("a", "b")}, events=(SpanEvent("retry", i, {"n": 1}),),
                  links=(SpanLink(os.urandom(16).hex(), os.urandom(8).hex()),)) for i in range(n)]
    return scan_protobuf(encode_request(spans).SerializeToString()).decode()


def test_spans_their_attributes_events_and_links_leave_the_collectors_lists() -> None:
    spans = decoded(50)
    assert all(gc.is_tracked(s) for s in spans)
    untrack_spans(spans)
    for s in spans:
        assert not gc.is_tracked(s) and not gc.is_tracked(s.attributes)
        assert not any(gc.is_tracked(x) for x in (s.events, *s.events, s.links, *s.links))
    assert spans[3].attributes == {"i": 3, "tags": ("a", "b")} and spans[3].events[0].name == "retry"


def test_untracked_spans_and_lists_are_freed_by_reference_counting() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        spans = decoded(2000)
        holder: list[Span] = []
        untrack(holder)
        holder.extend(spans)  # a list stays out of the lists as it grows
        untrack_spans(holder)
        assert not gc.is_tracked(holder)
        held = tracemalloc.get_traced_memory()[0] - before
        del spans, holder
        freed = tracemalloc.get_traced_memory()[0] - before  # no collection needed
    finally:
        tracemalloc.stop()
    assert held > 2000 * 100 and freed < held / 10
