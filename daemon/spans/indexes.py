"""The trace buffer's span-link and correlation indexes, and the watches waiting on them.

Exact but partly lazy: a raw batch is only noted as holding links into some trace (read in bulk) or the
bytes of a tracked attribute key; which of its traces those belong to is resolved when someone asks or
waits for that target or key. Decoded spans are indexed at once. A watch following a link target or a
correlation is told (``Watch.follow``) of every trace that comes to match it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tracecanary.assertions.spans import AttrValue, Span
from tracecanary.daemon.spans.entries import NO_KEYS, Chunk, Entry, discard, trace_key
from tracecanary.daemon.spans.otlp import RawBatch, find_attribute_hits, find_link_pairs, parse_request
from tracecanary.daemon.spans.watch import Watch, index_value

CorrKey = tuple[str, AttrValue]
"""(attribute key, normalized value): one correlation index entry."""


class TraceIndexes:
    """Link targets and tracked attributes of the buffered traces (``entries``: the buffer's, read only)."""

    def __init__(self, entries: Mapping[bytes, Entry], correlation_attributes: Iterable[str]) -> None:
        self.entries = entries
        self.tracked: dict[str, bytes] = {k: k.encode() for k in correlation_attributes}
        self.links: dict[bytes, set[bytes]] = {}
        self.corr: dict[CorrKey, set[bytes]] = {}
        self.link_chunks: dict[bytes, set[Chunk]] = {}
        self.corr_chunks: dict[str, set[Chunk]] = {}
        self.watch_links: dict[bytes, set[Watch]] = {}
        self.watch_corr: dict[CorrKey, set[Watch]] = {}

    def new_chunk(self, batch: RawBatch) -> Chunk:
        """The batch as a chunk noting its link targets and tracked keys (resolved now when watched)."""
        chunk = Chunk(batch.body)
        if batch.has_links:
            chunk.link_targets = batch.link_targets()
            watched_targets = chunk.link_targets.intersection(self.watch_links)
            if watched_targets:  # the watchers must follow the linking traces at once
                for src, target in find_link_pairs(batch.message, watched_targets):
                    self.link(src, target)
                chunk.link_targets -= watched_targets
        if self.tracked:
            chunk.corr_keys = {k for k, needle in self.tracked.items() if needle in batch.body} or NO_KEYS
            watched_keys = chunk.corr_keys.intersection(k for k, _ in self.watch_corr)
            if watched_keys:
                for attr, value, tid in find_attribute_hits(batch.message, watched_keys):
                    self.correlate(tid, attr, value)
                chunk.corr_keys -= watched_keys
        return chunk

    def keep_chunk(self, chunk: Chunk) -> None:
        """A chunk now holding undecoded spans: note where its unresolved links and keys are."""
        for target in chunk.link_targets:
            self.link_chunks.setdefault(target, set()).add(chunk)
        for attr in chunk.corr_keys:
            self.corr_chunks.setdefault(attr, set()).add(chunk)

    def add_decoded(self, key: bytes, spans: Iterable[Span]) -> None:
        """Index links and tracked attributes of decoded spans of one trace."""
        for span in spans:
            for link in span.links:
                target = trace_key(link.trace_id)
                if target:
                    self.link(key, target)
            if self.tracked:
                for attrs in (span.resource, span.attributes):
                    for k in self.tracked.keys() & attrs.keys():
                        self.correlate(key, k, attrs[k])

    def link(self, src: bytes, target: bytes) -> None:
        """Trace ``src`` holds a span linking into trace ``target``."""
        entry = self.entries.get(src)
        if entry is None:
            return  # the linking trace was evicted
        sources = self.links.setdefault(target, set())
        if src in sources:
            return
        sources.add(src)
        if entry.link_targets is None:
            entry.link_targets = set()
        entry.link_targets.add(target)
        for w in tuple(self.watch_links.get(target, ())):
            w.follow(src)

    def correlate(self, tid: bytes, key: str, value: AttrValue) -> None:
        """Trace ``tid`` holds a span (or resource) attribute ``key`` = ``value``."""
        entry = self.entries.get(tid)
        if entry is None:
            return
        ikey = (key, index_value(value))
        tids = self.corr.setdefault(ikey, set())
        if tid in tids:
            return
        tids.add(tid)
        if entry.corr is None:
            entry.corr = set()
        entry.corr.add(ikey)
        for w in tuple(self.watch_corr.get(ikey, ())):
            w.follow(tid)

    def sources_linking(self, target: bytes) -> set[bytes]:
        """Traces holding a span that links into ``target`` (resolving the raw batches that may)."""
        for chunk in self.link_chunks.pop(target, ()):
            chunk.link_targets -= {target}
            for src, tgt in find_link_pairs(parse_request(chunk.body), (target,)):
                self.link(src, tgt)
        return set(self.links.get(target, ()))

    def traces_correlated(self, ikey: CorrKey) -> set[bytes]:
        """Traces with the indexed attribute ``ikey`` (resolving the raw batches that may hold it)."""
        for chunk in self.corr_chunks.pop(ikey[0], ()):
            chunk.corr_keys -= {ikey[0]}
            for attr, value, tid in find_attribute_hits(parse_request(chunk.body), (ikey[0],)):
                self.correlate(tid, attr, value)
        return set(self.corr.get(ikey, ()))

    def track_attribute(self, key: str) -> None:
        """Index one more correlation attribute, including for spans already buffered."""
        if key in self.tracked:
            return
        needle = self.tracked[key] = key.encode()
        seen: set[int] = set()
        for tid, entry in list(self.entries.items()):
            for chunk in entry.chunks:
                if id(chunk) not in seen:
                    seen.add(id(chunk))
                    if needle in chunk.body:
                        chunk.corr_keys = chunk.corr_keys | {key}
                        self.corr_chunks.setdefault(key, set()).add(chunk)
            for span in entry.spans or ():
                for attrs in (span.resource, span.attributes):
                    if key in attrs:
                        self.correlate(tid, key, attrs[key])

    def release(self, chunk: Chunk) -> None:
        """One trace less holds undecoded spans in ``chunk``; at none, it leaves the lazy indexes."""
        chunk.live -= 1
        if chunk.live:
            return
        for target in chunk.link_targets:
            discard(self.link_chunks, target, chunk)
        for attr in chunk.corr_keys:
            discard(self.corr_chunks, attr, chunk)

    def evicted(self, key: bytes, entry: Entry) -> None:
        """Trace ``key`` left the buffer."""
        for chunk in entry.chunks:
            self.release(chunk)
        for target in entry.link_targets or ():
            discard(self.links, target, key)
        for ikey in entry.corr or ():
            discard(self.corr, ikey, key)

    def unfollow(self, watch: Watch, link_targets: Iterable[bytes], correlations: Iterable[CorrKey]) -> None:
        for target in link_targets:
            discard(self.watch_links, target, watch)
        for ikey in correlations:
            discard(self.watch_corr, ikey, watch)
