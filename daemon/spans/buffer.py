"""TraceBuffer: recent spans of every trace, bounded, indexed, with async waiters.

Protobuf batches are stored as their raw bytes, shared by the traces they hold, and decoded into
:class:`Span` only for traces someone waits on or reads (most traces are never looked at). The
buffer never refuses spans: over its span or byte budget, or past the retention window, it evicts the
least recently updated traces and counts them. Indexes: trace id, span-link target trace id, and
configured correlation attributes. The buffer is not thread-safe: use it from the event loop.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field
from tracecanary.assertions.spans import AttrValue, Span
from tracecanary.assertions.units import Duration, Size
from tracecanary.daemon.spans.otlp import RawBatch, decode_request, parse_request
from tracecanary.daemon.spans.watch import Watch, index_value

log = logging.getLogger("tracecanary.spans.buffer")

_TRACE_OVERHEAD_B = 400
_RAW_SPAN_OVERHEAD_B = 40


def _span_bytes(span: Span) -> int:
    return 350 + len(span.name) + 90 * (len(span.attributes) + len(span.events) + len(span.links))


def _trace_key(trace_id: str) -> bytes:
    try:
        key = bytes.fromhex(trace_id)
    except ValueError:
        return b""
    return key if len(key) == 16 else b""


class BufferSettings(BaseModel):
    """The in-memory trace buffer (``daemon.buffer``)."""

    model_config = ConfigDict(extra="forbid")

    max_spans: int = Field(1_000_000, gt=0, description="Most spans held; oldest traces are evicted beyond it.")
    max_bytes: Size = Field(768 * 1024**2, gt=0, description="Memory budget (estimate), e.g. 768MiB.")
    retention: Duration = Field(600.0, gt=0, description="How long a trace is kept after its last span, e.g. 10m.")
    correlation_attributes: list[str] = Field(
        default_factory=list,
        description="Span or resource attribute keys indexed for `correlate` (e.g. job.id).",
    )


@dataclass(frozen=True, slots=True)
class BufferStats:
    """Counters for /metrics and the dashboard."""

    spans: int
    bytes: int
    traces: int
    evicted_spans: int
    evicted_traces: int
    received_total: int


class _Entry:
    __slots__ = ("bodies", "corr", "count", "link_targets", "nbytes", "spans")

    def __init__(self) -> None:
        self.bodies: list[bytes] = []  # raw batches holding undecoded spans of this trace
        self.spans: list[Span] = []  # decoded spans
        self.count = 0
        self.nbytes = _TRACE_OVERHEAD_B
        self.link_targets: set[bytes] | None = None
        self.corr: set[tuple[str, AttrValue]] | None = None


class TraceBuffer:
    """Recent spans of all traces under a span/byte budget and a retention window."""

    def __init__(
        self,
        max_spans: int = 1_000_000,
        max_bytes: int = 768 * 1024**2,
        retention_s: float = 600.0,
        correlation_attributes: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_spans = max_spans
        self.max_bytes = max_bytes
        self.retention_s = retention_s
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._updated: dict[bytes, float] = {}
        self._spans = 0
        self._bytes = 0
        self._evicted_spans = 0
        self._evicted_traces = 0
        self._received = 0
        self._tracked: set[str] = set(correlation_attributes)
        self._links: dict[bytes, set[bytes]] = {}
        self._corr: dict[tuple[str, AttrValue], set[bytes]] = {}
        self._watch_traces: dict[bytes, set[Watch]] = {}
        self._watch_links: dict[bytes, set[Watch]] = {}
        self._watch_corr: dict[tuple[str, AttrValue], set[Watch]] = {}

    @classmethod
    def from_settings(cls, settings: BufferSettings, clock: Callable[[], float] = time.monotonic) -> TraceBuffer:
        return cls(settings.max_spans, settings.max_bytes, settings.retention,
                   settings.correlation_attributes, clock)

    # ------------------------------------------------------------------ ingest

    def add_spans(self, spans: Iterable[Span]) -> int:
        """Add decoded spans; returns how many were added (all of them: the buffer never refuses)."""
        groups: dict[bytes, list[Span]] = {}
        for span in spans:
            key = _trace_key(span.trace_id)
            if key:
                groups.setdefault(key, []).append(span)
        for key, group in groups.items():
            for span in group:
                for link in span.links:
                    target = _trace_key(link.trace_id)
                    if target:
                        self._index_link(key, target)
                if self._tracked:
                    for attrs in (span.resource, span.attributes):
                        for k in self._tracked.intersection(attrs):
                            self._index_corr(key, k, attrs[k])
        now = self._clock()
        added = 0
        for key, group in groups.items():
            entry = self._touch(key, now)
            entry.spans.extend(group)
            entry.count += len(group)
            nbytes = sum(_span_bytes(s) for s in group)
            entry.nbytes += nbytes
            self._bytes += nbytes
            added += len(group)
            watches = self._watch_traces.get(key)
            if watches:
                for w in watches:
                    w.deliver(group)
        self._spans += added
        self._received += added
        self._evict(now)
        return added

    def add_batch(self, batch: RawBatch) -> int:
        """Add a scanned protobuf batch, decoding only the spans of traces someone waits on."""
        if batch.fallback is not None:
            return self.add_spans(batch.fallback.spans)
        if not batch.span_count:
            return 0
        counts = batch.trace_counts
        if batch.has_links:
            for src, target in batch.link_pairs():
                self._index_link(src, target)
        if self._tracked:
            for attr, value, tid in batch.attribute_hits(self._tracked):
                self._index_corr(tid, attr, value)
        decoded: dict[bytes, list[Span]] = {}
        if self._watch_traces:
            watched = self._watch_traces.keys() & counts.keys()
            if watched:
                for span in batch.decode(only=watched):
                    decoded.setdefault(bytes.fromhex(span.trace_id), []).append(span)
        body = batch.body
        per_span = len(body) // batch.span_count + _RAW_SPAN_OVERHEAD_B
        now = self._clock()
        for key, count in counts.items():
            entry = self._touch(key, now)
            group = decoded.get(key)
            if group is None:
                entry.bodies.append(body)
            else:
                entry.spans.extend(group)
                for w in self._watch_traces.get(key, ()):
                    w.deliver(group)
            entry.count += count
            entry.nbytes += count * per_span
        self._bytes += batch.span_count * per_span
        self._spans += batch.span_count
        self._received += batch.span_count
        self._evict(now)
        return batch.span_count

    def _touch(self, key: bytes, now: float) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        else:
            self._entries.move_to_end(key)
        self._updated[key] = now
        return entry

    def _index_link(self, src: bytes, target: bytes) -> None:
        sources = self._links.setdefault(target, set())
        if src in sources:
            return
        sources.add(src)
        entry = self._entries.get(src)
        if entry is None:
            entry = self._entries[src] = _Entry()
            self._updated[src] = self._clock()
        if entry.link_targets is None:
            entry.link_targets = set()
        entry.link_targets.add(target)
        for w in tuple(self._watch_links.get(target, ())):
            w.follow(src)

    def _index_corr(self, tid: bytes, key: str, value: AttrValue) -> None:
        ikey = (key, index_value(value))
        tids = self._corr.setdefault(ikey, set())
        if tid in tids:
            return
        tids.add(tid)
        entry = self._entries.get(tid)
        if entry is None:
            entry = self._entries[tid] = _Entry()
            self._updated[tid] = self._clock()
        if entry.corr is None:
            entry.corr = set()
        entry.corr.add(ikey)
        for w in tuple(self._watch_corr.get(ikey, ())):
            w.follow(tid)

    # ------------------------------------------------------------------ eviction

    def _evict(self, now: float) -> None:
        entries = self._entries
        horizon = now - self.retention_s
        while entries and (
            self._spans > self.max_spans
            or self._bytes > self.max_bytes
            or self._updated[next(iter(entries))] < horizon
        ):
            key, entry = entries.popitem(last=False)
            del self._updated[key]
            self._spans -= entry.count
            self._bytes -= entry.nbytes - _TRACE_OVERHEAD_B
            self._evicted_spans += entry.count
            self._evicted_traces += 1
            for target in entry.link_targets or ():
                sources = self._links.get(target)
                if sources is not None:
                    sources.discard(key)
                    if not sources:
                        del self._links[target]
            for ikey in entry.corr or ():
                tids = self._corr.get(ikey)
                if tids is not None:
                    tids.discard(key)
                    if not tids:
                        del self._corr[ikey]

    def expire(self) -> None:
        """Evict traces past the retention window now (ingest does this too)."""
        self._evict(self._clock())

    # ------------------------------------------------------------------ reads

    def _materialize(self, key: bytes) -> list[Span]:
        entry = self._entries.get(key)
        if entry is None:
            return []
        if entry.bodies:
            only = {key}
            for body in dict.fromkeys(entry.bodies, None):  # a body once, even if listed twice
                entry.spans.extend(decode_request(parse_request(body), only).spans)
            entry.bodies.clear()
        return entry.spans

    def trace(self, trace_id: str) -> list[Span]:
        """The buffered spans of a trace (a duplicate span id keeps its latest copy)."""
        spans = self._materialize(_trace_key(trace_id))
        return list({s.span_id: s for s in spans}.values())

    def linking_traces(self, trace_id: str) -> set[str]:
        """Ids of buffered traces that hold a span with a link into ``trace_id``."""
        return {k.hex() for k in self._links.get(_trace_key(trace_id), ())}

    def traces_with_attribute(self, key: str, value: AttrValue) -> set[str]:
        """Ids of traces with a span (or resource) attribute ``key`` equal to ``value``.

        Only keys in ``correlation_attributes`` or added with :meth:`track_attribute` are indexed.
        """
        return {k.hex() for k in self._corr.get((key, index_value(value)), ())}

    def track_attribute(self, key: str) -> None:
        """Index one more correlation attribute, including for spans already buffered."""
        if key in self._tracked:
            return
        self._tracked.add(key)
        needle = key.encode()
        for tid, entry in list(self._entries.items()):
            for body in dict.fromkeys(entry.bodies, None):
                if needle in body:
                    self._materialize(tid)
                    break
            for span in entry.spans:
                for attrs in (span.resource, span.attributes):
                    if key in attrs:
                        self._index_corr(tid, key, attrs[key])

    def watch(self) -> Watch:
        """A waiter for spans of chosen traces; use as ``with buffer.watch() as w: …``."""
        return Watch(self)

    def stats(self) -> BufferStats:
        return BufferStats(
            spans=self._spans,
            bytes=self._bytes + _TRACE_OVERHEAD_B * len(self._entries),
            traces=len(self._entries),
            evicted_spans=self._evicted_spans,
            evicted_traces=self._evicted_traces,
            received_total=self._received,
        )

    # ------------------------------------------------------------------ used by Watch

    def _spans_of(self, key: bytes) -> list[Span]:
        return list(self._materialize(key))

    def _sources_linking(self, target: bytes) -> set[bytes]:
        return set(self._links.get(target, ()))

    def _traces_correlated(self, ikey: tuple[str, AttrValue]) -> set[bytes]:
        return set(self._corr.get(ikey, ()))
