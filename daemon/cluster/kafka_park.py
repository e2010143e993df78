"""Foreign span messages that may belong to a run whose announcement has not arrived yet, kept for a while.

The race: a scheduled job's trace carries ``job.id=J-7``; the run that waits for it announces ``J-7``
on the broadcast topic once it knows the value (after the API answered, ``kafka_broadcast.py``). The
job's spans can reach a member through its spans partition before that announcement does: the
forwarder finds no match, the trace is skipped, and the owner's run fails falsely. ``linked`` has the
same race, narrower: a run announces its trace id before it sends the request, but the announcement
and the consumer's spans (a new trace *linking* to the run's) travel different topics.

So a member *parks* the foreign messages that match no announcement but carry an attribute among the
correlation keys (the loaded probes' ``correlate`` attributes and every key announced so far) or — while
a loaded probe expects ``linked`` traces — a span link into a trace nobody announced, and the later
messages of those traces, for ``window_s``. A value or trace announcement that arrives within the window
*releases* the parked messages of the traces carrying it (or linking to it): the forwarder sends them to
the owner (or keeps them when it is the owner) and routes the rest of their traces there, as if the
announcement had come first.

Bounded: at most ``max_messages`` and ``max_bytes``, the oldest go first. Most parked messages are
real traffic no run waits for and simply *expire*; a message pushed out by the bound before its window
ended is *overflowed* (a possible false failure: counted, a metric, and a warning).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tracecanary.assertions.expect import TraceExpectation
from tracecanary.assertions.spans import AttrValue
from tracecanary.daemon.spans.otlp import RawBatch, find_attribute_hits
from tracecanary.probes.base import ProbeSpec

log = logging.getLogger("tracecanary.cluster.forward")

CorrKey = tuple[str, AttrValue]
K = TypeVar("K")
LINK_KEY = "\x00linked"
"""The park's pseudo attribute key for a span link: ``(LINK_KEY, linked trace id in hex)``."""


def reaches_other_traces(probe: ProbeSpec) -> bool:
    """Whether the probe's trace expectation reaches traces its run did not mint (``linked`` nodes)."""
    expectation = probe.expect.trace
    todo = [expectation] if expectation is not None else []
    while todo:
        exp = todo.pop()
        nodes = list(exp.tree)
        while nodes:
            node = nodes.pop()
            if node.linked:
                return True
            nodes.extend((*node.children, *node.descendants))
        todo.extend(exp.any_of)
    return False


def correlate_keys(probes: Iterable[ProbeSpec]) -> set[str]:
    """The attribute keys of the probes' ``correlate`` expectations (``any_of`` alternatives included)."""
    keys: set[str] = set()
    todo: list[TraceExpectation] = [p.expect.trace for p in probes if p.expect.trace is not None]
    while todo:
        exp = todo.pop()
        if exp.correlate is not None:
            keys.add(exp.correlate.attribute)
        todo.extend(exp.any_of)
    return keys


@dataclass
class ParkStats:
    """What the park did (``tracecanary_cluster_correlate_parked{outcome}``)."""

    parked: int = 0
    released: int = 0
    """Parked messages sent on (or kept) when their value was announced late."""
    expired: int = 0
    """The window passed without an announcement (real traffic nobody waited for)."""
    overflowed: int = 0
    """Pushed out by the bound before the window ended: a late announcement would miss them."""


@dataclass
class _Parked:
    at_s: float
    value: bytes
    traces: frozenset[bytes]
    hits: frozenset[CorrKey]


class CorrelationPark:
    """The parked messages, by arrival; indexed by correlation value and by trace."""

    def __init__(self, keys: Callable[[], Collection[str]], *, window_s: float = 30.0,
                 max_messages: int = 10_000, max_bytes: int = 64 * 1024**2,
                 clock: Callable[[], float] = time.monotonic, linked: Callable[[], bool] = lambda: False) -> None:
        self.keys = keys
        """The correlation attribute keys worth parking for (read at every offer: a reload may change them)."""
        self.linked = linked
        """Whether a loaded probe expects ``linked`` traces: then messages linking into traces are parked too."""
        self.window_s = window_s
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.clock = clock
        self.stats = ParkStats()
        self._seq = 0
        self._bytes = 0
        self._entries: OrderedDict[int, _Parked] = OrderedDict()
        self._by_value: dict[CorrKey, set[int]] = {}
        self._by_trace: dict[bytes, set[int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def wanted(self) -> bool:
        """Whether foreign messages are worth scanning for the park at all (some correlation key is known, or a
        probe expects linked traces)."""
        return bool(self.keys()) or self.linked()

    def consider(self, value: bytes, batch: RawBatch) -> bool:
        """Park a message that matched no announcement when it carries a correlation key or (while linked
        traces are expected) a span link, or belongs to a parked trace; True when parked."""
        self.expire()
        traces = frozenset(batch.trace_counts)
        follows = any(t in self._by_trace for t in traces)
        keys = [k for k in self.keys() if k.encode() in value]  # a byte test before walking the spans
        hits = frozenset((k, v) for k, v, _ in find_attribute_hits(batch.message, keys)) if keys else frozenset()
        if batch.has_links and self.linked():
            hits |= {(LINK_KEY, t.hex()) for t in batch.link_targets() - traces}
        if not hits and not follows:
            return False
        self._seq += 1
        entry = _Parked(self.clock(), value, traces, hits)
        self._entries[self._seq] = entry
        self._bytes += len(value)
        for hit in hits:
            self._by_value.setdefault(hit, set()).add(self._seq)
        for t in traces:
            self._by_trace.setdefault(t, set()).add(self._seq)
        self.stats.parked += 1
        while len(self._entries) > self.max_messages or self._bytes > self.max_bytes:
            self._drop_oldest(expired=False)
        return True

    def release(self, key: str, value: AttrValue) -> list[tuple[bytes, frozenset[bytes]]]:
        """The parked messages of every trace that carries ``key=value`` (message, its trace ids), in
        arrival order, removed from the park."""
        self.expire()
        seqs = set(self._by_value.get((key, value), ()))
        traces = {t for s in seqs for t in self._entries[s].traces}
        for t in traces:
            seqs |= self._by_trace.get(t, set())
        out = []
        for seq in sorted(seqs):
            entry = self._remove(seq)
            out.append((entry.value, entry.traces))
        self.stats.released += len(out)
        return out

    def release_linking(self, trace_id: bytes) -> list[tuple[bytes, frozenset[bytes]]]:
        """The parked messages of every trace with a span linking into ``trace_id`` (raw), as :meth:`release`."""
        return self.release(LINK_KEY, trace_id.hex())

    def expire(self) -> None:
        """Drop the messages parked longer than the window."""
        horizon = self.clock() - self.window_s
        while self._entries and next(iter(self._entries.values())).at_s < horizon:
            self._drop_oldest(expired=True)

    def _drop_oldest(self, *, expired: bool) -> None:
        seq = next(iter(self._entries))
        self._remove(seq)
        if expired:
            self.stats.expired += 1
            return
        self.stats.overflowed += 1
        if self.stats.overflowed == 1 or self.stats.overflowed % 1000 == 0:
            log.warning("correlation park full: a foreign message was dropped before its window ended "
                        "overflowed=%d max_messages=%d max_bytes=%d (a late `correlate` announcement would "
                        "miss it)", self.stats.overflowed, self.max_messages, self.max_bytes)

    def _remove(self, seq: int) -> _Parked:
        entry = self._entries.pop(seq)
        self._bytes -= len(entry.value)
        _unindex(self._by_value, entry.hits, seq)
        _unindex(self._by_trace, entry.traces, seq)
        return entry


def _unindex(index: dict[K, set[int]], keys: Iterable[K], seq: int) -> None:
    for k in keys:
        seqs = index.get(k)
        if seqs is not None:
            seqs.discard(seq)
            if not seqs:
                del index[k]


class ProbeCorrelateKeys:
    """:func:`correlate_keys` of the loaded probes, and whether one expects ``linked`` traces
    (:meth:`expects_linked`), recomputed only when the probe list changes (a reload)."""

    def __init__(self, probes: Callable[[], Sequence[ProbeSpec]]) -> None:
        self._probes = probes
        self._seen: Sequence[ProbeSpec] | None = None
        self._keys: frozenset[str] = frozenset()
        self._linked = False

    def _current(self) -> None:
        current = self._probes()
        if current is not self._seen:
            self._seen, self._keys = current, frozenset(correlate_keys(current))
            self._linked = any(reaches_other_traces(p) for p in current)

    def __call__(self) -> frozenset[str]:
        self._current()
        return self._keys

    def expects_linked(self) -> bool:
        self._current()
        return self._linked
