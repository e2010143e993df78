"""TraceBuffer: recent spans of every trace, bounded, indexed, with async waiters.

Protobuf batches are stored as their raw bytes, shared by the traces they hold, and decoded into
:class:`Span` only for traces someone waits on or reads (most traces are never looked at), and kept
decoded only while a watch follows the trace: when the last one closes, the trace goes back to its
raw batches, so the objects the garbage collector must traverse stay few (a full collection's pause
grows with them). The buffer never refuses spans: over its span or byte budget, or past the
retention window, it evicts the least recently updated traces and counts them. Indexes: trace id,
span-link target trace id, and configured correlation attributes. The buffer is not thread-safe:
use it from the event loop.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterable
from typing import TypeVar

from tracecanary.assertions.spans import AttrValue, Span
from tracecanary.daemon.spans.intake import IntakeClock
from tracecanary.daemon.spans.model import BufferSettings, BufferStats
from tracecanary.daemon.spans.otlp import (
    RawBatch,
    decode_request,
    find_attribute_hits,
    find_link_pairs,
    parse_request,
)
from tracecanary.daemon.spans.watch import Watch, index_value

__all__ = ["BufferSettings", "BufferStats", "TraceBuffer"]

log = logging.getLogger("tracecanary.spans.buffer")
_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V", bound=Hashable)

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


_NO_LINKS: frozenset[bytes] = frozenset()
_NO_KEYS: frozenset[str] = frozenset()


class _Chunk:
    """One raw protobuf batch shared by the traces whose undecoded spans it holds.

    ``live`` counts those traces; when it drops to zero the chunk leaves the lazy indexes.
    """

    __slots__ = ("body", "corr_keys", "link_targets", "live")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.live = 0
        self.link_targets: set[bytes] | frozenset[bytes] = _NO_LINKS  # a set only when there are some
        self.corr_keys: set[str] | frozenset[str] = _NO_KEYS


class _Entry:
    """One buffered trace. Its decoded spans are kept only while someone watches it (GC cost).

    ``chunks`` hold its undecoded spans; ``decoded`` the raw batches whose spans are in ``spans``
    (given back to ``chunks`` when the last watch goes); ``direct`` spans came decoded (no raw form).
    The lists are created on first use: most traces never need them.
    """

    __slots__ = ("chunks", "corr", "count", "decoded", "direct", "link_targets", "nbytes", "spans")

    def __init__(self) -> None:
        self.chunks: list[_Chunk] = []
        self.spans: list[Span] | None = None
        self.decoded: list[_Chunk] | None = None
        self.direct: list[Span] | None = None
        self.count = 0
        self.nbytes = _TRACE_OVERHEAD_B
        self.link_targets: set[bytes] | None = None
        self.corr: set[tuple[str, AttrValue]] | None = None


class TraceBuffer:
    """Recent spans of all traces under a span/byte budget and a retention window.

    Link and correlation indexes are exact but partly lazy: a raw batch is only noted as holding
    links into some trace (read in bulk) or the bytes of a tracked attribute key; which of its traces
    those belong to is resolved when someone asks or waits for that target or key.
    """

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
        self._tracked: dict[str, bytes] = {k: k.encode() for k in correlation_attributes}
        self._links: dict[bytes, set[bytes]] = {}
        self._corr: dict[tuple[str, AttrValue], set[bytes]] = {}
        self._link_chunks: dict[bytes, set[_Chunk]] = {}
        self._corr_chunks: dict[str, set[_Chunk]] = {}
        self._watch_traces: dict[bytes, set[Watch]] = {}
        self._watch_links: dict[bytes, set[Watch]] = {}
        self._watch_corr: dict[tuple[str, AttrValue], set[Watch]] = {}
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
            key = _trace_key(span.trace_id)
            if key:
                groups.setdefault(key, []).append(span)
        now = self._clock()
        self.intake.saw_spans(groups.values(), now)
        for key, group in groups.items():
            self._touch(key, now)
            self._index_decoded(key, group)
        added = 0
        for key, group in groups.items():
            entry = self._entries.get(key) or self._touch(key, now)
            _extend(entry, group)
            if entry.direct is None:
                entry.direct = []
            entry.direct.extend(group)
            entry.count += len(group)
            nbytes = sum(_span_bytes(s) for s in group)
            entry.nbytes += nbytes
            self._bytes += nbytes
            added += len(group)
            for w in tuple(self._watch_traces.get(key, ())):
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
        counts, body = batch.trace_counts, batch.body
        now = self._clock()
        self.intake.saw_batch(batch, now)
        for key in counts:
            self._touch(key, now)
        chunk = self._new_chunk(batch)
        watched = self._watch_traces.keys() & counts.keys() if self._watch_traces else ()
        decoded = batch.decode_by_trace(only=watched) if watched else {}
        per_span = len(body) // batch.span_count + _RAW_SPAN_OVERHEAD_B
        for key, count in counts.items():
            entry = self._entries[key]
            group = decoded.get(key)
            if group is None:
                entry.chunks.append(chunk)
                chunk.live += 1
            else:
                _extend(entry, group)
                if entry.decoded is None:
                    entry.decoded = []
                entry.decoded.append(chunk)
                for w in tuple(self._watch_traces.get(key, ())):
                    w.deliver(group)
            entry.count += count
            entry.nbytes += count * per_span
        if decoded and (chunk.link_targets or chunk.corr_keys):
            for key, group in decoded.items():
                self._index_decoded(key, group)
        if chunk.live:
            for target in chunk.link_targets:
                self._link_chunks.setdefault(target, set()).add(chunk)
            for attr in chunk.corr_keys:
                self._corr_chunks.setdefault(attr, set()).add(chunk)
        self._bytes += batch.span_count * per_span
        self._spans += batch.span_count
        self._received += batch.span_count
        self._evict(now)
        return batch.span_count

    def _new_chunk(self, batch: RawBatch) -> _Chunk:
        """The batch as a chunk noting its link targets and tracked keys (resolved now when watched)."""
        chunk = _Chunk(batch.body)
        if batch.has_links:
            chunk.link_targets = batch.link_targets()
            watched_targets = chunk.link_targets.intersection(self._watch_links)
            if watched_targets:  # the watchers must follow the linking traces at once
                for src, target in find_link_pairs(batch.message, watched_targets):
                    self._index_link(src, target)
                chunk.link_targets -= watched_targets
        if self._tracked:
            chunk.corr_keys = {k for k, needle in self._tracked.items() if needle in batch.body} or _NO_KEYS
            watched_keys = chunk.corr_keys.intersection(k for k, _ in self._watch_corr)
            if watched_keys:
                for attr, value, tid in find_attribute_hits(batch.message, watched_keys):
                    self._index_corr(tid, attr, value)
                chunk.corr_keys -= watched_keys
        return chunk

    def _touch(self, key: bytes, now: float) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        else:
            self._entries.move_to_end(key)
        self._updated[key] = now
        return entry

    def _index_decoded(self, key: bytes, spans: Iterable[Span]) -> None:
        """Index links and tracked attributes of decoded spans of one trace."""
        for span in spans:
            for link in span.links:
                target = _trace_key(link.trace_id)
                if target:
                    self._index_link(key, target)
            if self._tracked:
                for attrs in (span.resource, span.attributes):
                    for k in self._tracked.keys() & attrs.keys():
                        self._index_corr(key, k, attrs[k])

    def _index_link(self, src: bytes, target: bytes) -> None:
        entry = self._entries.get(src)
        if entry is None:
            return  # the linking trace was evicted
        sources = self._links.setdefault(target, set())
        if src in sources:
            return
        sources.add(src)
        if entry.link_targets is None:
            entry.link_targets = set()
        entry.link_targets.add(target)
        for w in tuple(self._watch_links.get(target, ())):
            w.follow(src)

    def _index_corr(self, tid: bytes, key: str, value: AttrValue) -> None:
        entry = self._entries.get(tid)
        if entry is None:
            return
        ikey = (key, index_value(value))
        tids = self._corr.setdefault(ikey, set())
        if tid in tids:
            return
        tids.add(tid)
        if entry.corr is None:
            entry.corr = set()
        entry.corr.add(ikey)
        for w in tuple(self._watch_corr.get(ikey, ())):
            w.follow(tid)

    def _resolve_links(self, target: bytes) -> None:
        for chunk in self._link_chunks.pop(target, ()):
            chunk.link_targets -= {target}
            for src, tgt in find_link_pairs(parse_request(chunk.body), (target,)):
                self._index_link(src, tgt)

    def _resolve_corr(self, key: str) -> None:
        for chunk in self._corr_chunks.pop(key, ()):
            chunk.corr_keys -= {key}
            for attr, value, tid in find_attribute_hits(parse_request(chunk.body), (key,)):
                self._index_corr(tid, attr, value)

    def _release(self, chunk: _Chunk) -> None:
        chunk.live -= 1
        if chunk.live:
            return
        for target in chunk.link_targets:
            _discard(self._link_chunks, target, chunk)
        for attr in chunk.corr_keys:
            _discard(self._corr_chunks, attr, chunk)

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
            for chunk in entry.chunks:
                self._release(chunk)
            for target in entry.link_targets or ():
                _discard(self._links, target, key)
            for ikey in entry.corr or ():
                _discard(self._corr, ikey, key)

    def expire(self) -> None:
        """Evict traces past the retention window now (ingest does this too)."""
        self._evict(self._clock())

    # ------------------------------------------------------------------ reads

    def _materialize(self, key: bytes) -> list[Span]:
        """The decoded spans of a trace; they stay decoded only while the trace is watched."""
        entry = self._entries.get(key)
        if entry is None:
            return []
        if entry.chunks:
            only = {key}
            decoded: list[Span] = []
            chunks = list(dict.fromkeys(entry.chunks))  # a chunk once, even if listed twice
            for chunk in chunks:
                decoded.extend(decode_request(parse_request(chunk.body), only, lazy=True, validated=True).spans)
            for chunk in entry.chunks:
                self._release(chunk)
            entry.chunks = []
            _extend(entry, decoded)
            if entry.decoded is None:
                entry.decoded = []
            entry.decoded.extend(chunks)
            self._index_decoded(key, decoded)
        spans = list(entry.spans or ())
        if key not in self._watch_traces:
            self._demote(key)
        return spans

    def _demote(self, key: bytes) -> None:
        """Drop a trace's spans decoded from raw batches (back to those batches): nobody watches it."""
        entry = self._entries.get(key)
        if entry is None or not entry.decoded:
            return
        for chunk in entry.decoded:
            chunk.live += 1
        entry.chunks.extend(entry.decoded)
        entry.decoded = None
        entry.spans = list(entry.direct) if entry.direct else None

    def trace(self, trace_id: str) -> list[Span]:
        """The buffered spans of a trace (a duplicate span id keeps its latest copy)."""
        spans = self._materialize(_trace_key(trace_id))
        return list({s.span_id: s for s in spans}.values())

    def linking_traces(self, trace_id: str) -> set[str]:
        """Ids of buffered traces that hold a span with a link into ``trace_id``."""
        return {k.hex() for k in self._sources_linking(_trace_key(trace_id))}

    def traces_with_attribute(self, key: str, value: AttrValue) -> set[str]:
        """Ids of traces with a span (or resource) attribute ``key`` equal to ``value``.

        Only keys in ``correlation_attributes`` or added with :meth:`track_attribute` are indexed.
        """
        return {k.hex() for k in self._traces_correlated((key, index_value(value)))}

    def track_attribute(self, key: str) -> None:
        """Index one more correlation attribute, including for spans already buffered."""
        if key in self._tracked:
            return
        needle = self._tracked[key] = key.encode()
        seen: set[int] = set()
        for tid, entry in list(self._entries.items()):
            for chunk in entry.chunks:
                if id(chunk) not in seen:
                    seen.add(id(chunk))
                    if needle in chunk.body:
                        chunk.corr_keys = chunk.corr_keys | {key}
                        self._corr_chunks.setdefault(key, set()).add(chunk)
            for span in entry.spans or ():
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

    # ------------------------------------------------------------------ Watch registration

    def follow_trace(self, watch: Watch, key: bytes) -> list[Span]:
        """Deliver spans of trace ``key`` (raw 16-byte id) to ``watch``; returns those buffered now."""
        self._watch_traces.setdefault(key, set()).add(watch)
        return self._materialize(key)

    def follow_links(self, watch: Watch, target: bytes) -> set[bytes]:
        """Tell ``watch`` of traces linking into ``target``; returns those buffered now."""
        self._watch_links.setdefault(target, set()).add(watch)
        return self._sources_linking(target)

    def follow_correlation(self, watch: Watch, ikey: tuple[str, AttrValue]) -> set[bytes]:
        """Tell ``watch`` of traces with the indexed attribute ``ikey``; returns those buffered now."""
        self._watch_corr.setdefault(ikey, set()).add(watch)
        return self._traces_correlated(ikey)

    def unfollow(self, watch: Watch, traces: Collection[bytes], link_targets: Iterable[bytes],
                 correlations: Iterable[tuple[str, AttrValue]]) -> None:
        """Forget ``watch``; a trace nobody follows any more goes back to its raw batches (fewer GC objects)."""
        for key in traces:
            _discard(self._watch_traces, key, watch)
        for target in link_targets:
            _discard(self._watch_links, target, watch)
        for ikey in correlations:
            _discard(self._watch_corr, ikey, watch)
        for key in traces:
            if key not in self._watch_traces:
                self._demote(key)

    def _sources_linking(self, target: bytes) -> set[bytes]:
        self._resolve_links(target)
        return set(self._links.get(target, ()))

    def _traces_correlated(self, ikey: tuple[str, AttrValue]) -> set[bytes]:
        self._resolve_corr(ikey[0])
        return set(self._corr.get(ikey, ()))


def _extend(entry: _Entry, spans: list[Span]) -> None:
    if entry.spans is None:
        entry.spans = []
    entry.spans.extend(spans)


def _discard(index: dict[_K, set[_V]], key: _K, value: _V) -> None:
    values = index.get(key)
    if values is not None:
        values.discard(value)
        if not values:
            del index[key]
