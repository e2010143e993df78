"""TraceBuffer: recent spans of every trace, bounded, indexed, with async waiters.

Protobuf batches are stored as their raw bytes, shared by the traces they hold, and decoded into
:class:`Span` only for traces someone waits on or reads (most traces are never looked at), and kept
decoded only while a watch follows the trace: when the last one closes, the trace goes back to its
raw batches. Entries and decoded spans are kept out of the cyclic garbage collector's lists
(``untracked.py``): a full collection's pause does not grow with them. A followed trace with a large
raw backlog is decoded a batch at a time as its watches wait (``DECODE_NOW_SPANS``), not in one step.
The buffer never refuses spans: over its span or byte budget, or past the retention window, it evicts
the least recently updated traces and counts them. Indexes: trace id, span-link target trace id, and
configured correlation attributes (``indexes.py``). The buffer is not thread-safe: use it from the
event loop.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable

from tracecanary.assertions.spans import AttrValue, Span
from tracecanary.daemon.spans.entries import (
    RAW_SPAN_OVERHEAD_B,
    TRACE_OVERHEAD_B,
    Chunk,
    Entry,
    discard,
    extend,
    plain_list,
    span_bytes,
    trace_key,
)
from tracecanary.daemon.spans.indexes import CorrKey, TraceIndexes
from tracecanary.daemon.spans.intake import IntakeClock
from tracecanary.daemon.spans.model import BufferSettings, BufferStats
from tracecanary.daemon.spans.otlp import RawBatch, decode_request, parse_request
from tracecanary.daemon.spans.tap import SpanTap
from tracecanary.daemon.spans.untracked import untrack_spans
from tracecanary.daemon.spans.watch import Watch, index_value

__all__ = ["DECODE_NOW_SPANS", "BufferSettings", "BufferStats", "TraceBuffer"]

log = logging.getLogger("tracecanary.spans.buffer")

DECODE_NOW_SPANS = 1024
"""A trace with more undecoded spans than this, once followed, is decoded a raw batch at a time by the
watch's next waits (a checkpoint between batches), not in the step that follows it (~7 µs a span)."""


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
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._updated: dict[bytes, float] = {}
        self._spans = 0
        self._bytes = 0
        self._evicted_spans = 0
        self._evicted_traces = 0
        self._received = 0
        self._indexes = TraceIndexes(self._entries, correlation_attributes)
        self._watch_traces: dict[bytes, set[Watch]] = {}
        self._taps: list[SpanTap] = []
        self.intake = IntakeClock(clock)
        """When each service last sent a span (the evidence for an ``unknown`` verdict)."""

    @classmethod
    def from_settings(cls, settings: BufferSettings, clock: Callable[[], float] = time.monotonic) -> TraceBuffer:
        return cls(settings.max_spans, settings.max_bytes, settings.retention,
                   settings.correlation_attributes, clock)

    # ------------------------------------------------------------------ ingest

    def add_spans(self, spans: Iterable[Span]) -> int:
        """Add decoded spans; returns how many were added (all of them: the buffer never refuses)."""
        groups: dict[bytes, list[Span]] = {}
        for span in spans:
            key = trace_key(span.trace_id)
            if key:
                groups.setdefault(key, []).append(span)
        for group in groups.values():
            untrack_spans(group)  # plain data: nothing for a full collection to find (see untracked.py)
        now = self._clock()
        self.intake.saw_spans(groups.values(), now)
        for key, group in groups.items():
            self._touch(key, now)
            self._indexes.add_decoded(key, group)
        added = 0
        for key, group in groups.items():
            entry = self._entries.get(key) or self._touch(key, now)
            extend(entry, group)
            if entry.direct is None:
                entry.direct = plain_list()
            entry.direct.extend(group)
            entry.count += len(group)
            nbytes = sum(span_bytes(s) for s in group)
            entry.nbytes += nbytes
            self._bytes += nbytes
            added += len(group)
            for w in tuple(self._watch_traces.get(key, ())):
                w.deliver(group)
        self._spans += added
        self._received += added
        self._evict(now)
        if self._taps:
            self._feed_taps(groups)
        return added

    def add_batch(self, batch: RawBatch) -> int:
        """Add a scanned protobuf batch, decoding only the spans of traces someone waits on."""
        if batch.fallback is not None:
            return self.add_spans(batch.fallback.spans)
        if not batch.span_count:
            return 0
        counts, body = batch.trace_counts, batch.body
        now = self._clock()
        self.intake.saw_batch(batch, now)
        for key in counts:
            self._touch(key, now)
        chunk = self._indexes.new_chunk(batch)
        watched = self._watch_traces.keys() & counts.keys() if self._watch_traces else set()
        tapped = {k for k in counts if any(t.wants(k) for t in self._taps)} if self._taps else set()
        wanted = watched | tapped if tapped else watched
        decoded = batch.decode_by_trace(only=wanted) if wanted else {}
        for spans in decoded.values():
            untrack_spans(spans)
        per_span = len(body) // batch.span_count + RAW_SPAN_OVERHEAD_B
        for key, count in counts.items():
            entry = self._entries[key]
            group = decoded.get(key) if key in watched else None
            if group is None:  # kept raw (a tap's copy is the tap's alone)
                entry.chunks.append(chunk)
                chunk.live += 1
            else:
                extend(entry, group)
                if entry.decoded is None:
                    entry.decoded = plain_list()
                entry.decoded.append(chunk)
                for w in tuple(self._watch_traces.get(key, ())):
                    w.deliver(group)
            entry.count += count
            entry.nbytes += count * per_span
        if decoded and (chunk.link_targets or chunk.corr_keys):
            for key, group in decoded.items():
                if key in watched:
                    self._indexes.add_decoded(key, group)
        if chunk.live:
            self._indexes.keep_chunk(chunk)
        self._bytes += batch.span_count * per_span
        self._spans += batch.span_count
        self._received += batch.span_count
        self._evict(now)
        if tapped:
            self._feed_taps({k: decoded[k] for k in tapped if k in decoded})
        return batch.span_count

    def _feed_taps(self, groups: dict[bytes, list[Span]]) -> None:
        for tap in tuple(self._taps):
            mine = {k: g for k, g in groups.items() if tap.wants(k)}
            if mine:
                tap.arrived(mine)

    def add_tap(self, tap: SpanTap) -> None:
        """Feed ``tap`` the decoded spans of the traces it wants, from every later batch (``tap.py``)."""
        self._taps.append(tap)

    def remove_tap(self, tap: SpanTap) -> None:
        if tap in self._taps:
            self._taps.remove(tap)

    def _touch(self, key: bytes, now: float) -> Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = Entry()
        else:
            self._entries.move_to_end(key)
        self._updated[key] = now
        return entry

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
            self._bytes -= entry.nbytes - TRACE_OVERHEAD_B
            self._evicted_spans += entry.count
            self._evicted_traces += 1
            self._indexes.evicted(key, entry)

    def expire(self) -> None:
        """Evict traces past the retention window now (ingest does this too)."""
        self._evict(self._clock())

    # ------------------------------------------------------------------ reads

    def _materialize(self, key: bytes) -> tuple[list[Span], list[Span]]:
        """The decoded spans of a trace, and those of them decoded just now (from all its raw batches).

        They stay decoded only while the trace is watched.
        """
        entry = self._entries.get(key)
        if entry is None:
            return [], []
        fresh = self._decode_raw(key, entry, list(entry.chunks)) if entry.chunks else []
        spans = list(entry.spans or ())
        if key not in self._watch_traces:
            self._demote(key)
        return spans, fresh

    def _decode_raw(self, key: bytes, entry: Entry, chunks: list[Chunk]) -> list[Span]:
        """Decode the trace's spans in ``chunks`` (some or all of ``entry.chunks``): raw → decoded."""
        only = {key}
        decoded: list[Span] = []
        unique = list(dict.fromkeys(chunks))  # a chunk once, even if listed twice
        for chunk in unique:
            decoded.extend(decode_request(parse_request(chunk.body), only, lazy=True, validated=True).spans)
        untrack_spans(decoded)
        for chunk in chunks:
            self._indexes.release(chunk)
        entry.chunks[:] = [c for c in entry.chunks if c not in unique] if len(chunks) < len(entry.chunks) else []
        extend(entry, decoded)
        if entry.decoded is None:
            entry.decoded = plain_list()
        entry.decoded.extend(unique)
        self._indexes.add_decoded(key, decoded)
        return decoded

    def _demote(self, key: bytes) -> None:
        """Drop a trace's spans decoded from raw batches (back to those batches): nobody watches it."""
        entry = self._entries.get(key)
        if entry is None or not entry.decoded:
            return
        for chunk in entry.decoded:
            chunk.live += 1
        entry.chunks.extend(entry.decoded)
        entry.decoded = None
        entry.spans = None
        if entry.direct:
            extend(entry, entry.direct)

    def trace(self, trace_id: str) -> list[Span]:
        """The buffered spans of a trace (a duplicate span id keeps its latest copy)."""
        key = trace_key(trace_id)
        spans, fresh = self._materialize(key)
        for w in tuple(self._watch_traces.get(key, ())):  # watches still decoding this trace's backlog
            w.deliver(fresh)
        return list({s.span_id: s for s in spans}.values())

    def linking_traces(self, trace_id: str) -> set[str]:
        """Ids of buffered traces that hold a span with a link into ``trace_id``."""
        return {k.hex() for k in self._indexes.sources_linking(trace_key(trace_id))}

    def traces_with_attribute(self, key: str, value: AttrValue) -> set[str]:
        """Ids of traces with a span (or resource) attribute ``key`` equal to ``value``.

        Only keys in ``correlation_attributes`` or added with :meth:`track_attribute` are indexed.
        """
        return {k.hex() for k in self._indexes.traces_correlated((key, index_value(value)))}

    def track_attribute(self, key: str) -> None:
        """Index one more correlation attribute, including for spans already buffered."""
        self._indexes.track_attribute(key)

    def watch(self) -> Watch:
        """A waiter for spans of chosen traces; use as ``with buffer.watch() as w: …``."""
        return Watch(self)

    def stats(self) -> BufferStats:
        return BufferStats(
            spans=self._spans,
            bytes=self._bytes + TRACE_OVERHEAD_B * len(self._entries),
            traces=len(self._entries),
            evicted_spans=self._evicted_spans,
            evicted_traces=self._evicted_traces,
            received_total=self._received,
        )

    # ------------------------------------------------------------------ Watch registration

    def follow_trace(self, watch: Watch, key: bytes) -> list[Span]:
        """Deliver spans of trace ``key`` (raw 16-byte id) to ``watch``; returns those decoded now.

        A trace with more than ``DECODE_NOW_SPANS`` undecoded spans is left to the watch's backlog
        (:meth:`decode_backlog`, from its next waits).
        """
        entry = self._entries.get(key)
        others = tuple(self._watch_traces.get(key, ()))
        self._watch_traces.setdefault(key, set()).add(watch)
        if entry is not None and entry.raw_spans > DECODE_NOW_SPANS:
            watch.note_backlog(key)
            return list(entry.spans or ())
        spans, fresh = self._materialize(key)
        for w in others:  # watches still decoding this trace's backlog
            w.deliver(fresh)
        return spans

    def decode_backlog(self, key: bytes) -> bool:
        """Decode one more raw batch of a followed trace and deliver its spans to the trace's watches;
        False when none is left (or nobody follows it any more)."""
        entry = self._entries.get(key)
        if entry is None or not entry.chunks or key not in self._watch_traces:
            return False
        first = entry.chunks[0]
        decoded = self._decode_raw(key, entry, [c for c in entry.chunks if c is first])
        for w in tuple(self._watch_traces.get(key, ())):
            w.deliver(decoded)
        return True

    def follow_links(self, watch: Watch, target: bytes) -> set[bytes]:
        """Tell ``watch`` of traces linking into ``target``; returns those buffered now."""
        self._indexes.watch_links.setdefault(target, set()).add(watch)
        return self._indexes.sources_linking(target)

    def follow_correlation(self, watch: Watch, ikey: CorrKey) -> set[bytes]:
        """Tell ``watch`` of traces with the indexed attribute ``ikey``; returns those buffered now."""
        self._indexes.watch_corr.setdefault(ikey, set()).add(watch)
        return self._indexes.traces_correlated(ikey)

    def unfollow(self, watch: Watch, traces: Collection[bytes], link_targets: Iterable[bytes],
                 correlations: Iterable[CorrKey]) -> None:
        """Forget ``watch``; a trace nobody follows any more goes back to its raw batches."""
        for key in traces:
            discard(self._watch_traces, key, watch)
        self._indexes.unfollow(watch, link_targets, correlations)
        for key in traces:
            if key not in self._watch_traces:
                self._demote(key)


