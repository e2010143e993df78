"""The trace buffer's records: a raw protobuf batch shared by traces (:class:`Chunk`), one buffered trace
(:class:`Entry`), and the small helpers :class:`~tracecanary.daemon.spans.buffer.TraceBuffer` keeps them with.

Entries and the lists of an entry hold only plain data (bytes, spans, chunks, ids), so they are kept out
of the cyclic garbage collector's lists (``untracked.py``): a full collection then does not walk every
buffered trace and every watched span.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, TypeVar

from tracecanary.assertions.spans import AttrValue, Span
from tracecanary.daemon.spans.untracked import untrack

K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=Hashable)

TRACE_OVERHEAD_B = 400
"""Estimated bytes per buffered trace, its entry and index slots."""
RAW_SPAN_OVERHEAD_B = 40
"""Estimated bytes per undecoded span beyond its share of the batch body."""
NO_LINKS: frozenset[bytes] = frozenset()
NO_KEYS: frozenset[str] = frozenset()


def span_bytes(span: Span) -> int:
    """Estimated bytes of a decoded span."""
    return 350 + len(span.name) + 90 * (len(span.attributes) + len(span.events) + len(span.links))


def trace_key(trace_id: str) -> bytes:
    """The raw 16-byte trace id of a hex id; ``b""`` when it is not one."""
    try:
        key = bytes.fromhex(trace_id)
    except ValueError:
        return b""
    return key if len(key) == 16 else b""


def plain_list() -> list[Any]:
    """A new list for plain data only (spans, chunks), out of the cyclic GC's lists."""
    items: list[Any] = []
    untrack(items)
    return items


class Chunk:
    """One raw protobuf batch shared by the traces whose undecoded spans it holds.

    ``live`` counts those traces; when it drops to zero the chunk leaves the lazy indexes.
    """

    __slots__ = ("body", "corr_keys", "link_targets", "live")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.live = 0
        self.link_targets: set[bytes] | frozenset[bytes] = NO_LINKS  # a set only when there are some
        self.corr_keys: set[str] | frozenset[str] = NO_KEYS


class Entry:
    """One buffered trace. Its decoded spans are kept only while someone watches it.

    ``chunks`` hold its undecoded spans; ``decoded`` the raw batches whose spans are in ``spans``
    (given back to ``chunks`` when the last watch goes); ``direct`` spans came decoded (no raw form).
    The lists are created on first use: most traces never need them.
    """

    __slots__ = ("chunks", "corr", "count", "decoded", "direct", "link_targets", "nbytes", "spans")

    def __init__(self) -> None:
        untrack(self)
        self.chunks: list[Chunk] = plain_list()
        self.spans: list[Span] | None = None
        self.decoded: list[Chunk] | None = None
        self.direct: list[Span] | None = None
        self.count = 0
        self.nbytes = TRACE_OVERHEAD_B
        self.link_targets: set[bytes] | None = None
        self.corr: set[tuple[str, AttrValue]] | None = None

    @property
    def raw_spans(self) -> int:
        """Spans of this trace still undecoded in its chunks."""
        return self.count - len(self.spans or ())


def extend(entry: Entry, spans: list[Span]) -> None:
    """Add decoded spans to ``entry.spans``."""
    if entry.spans is None:
        entry.spans = plain_list()
    entry.spans.extend(spans)


def discard(index: dict[K, set[V]], key: K, value: V) -> None:
    """Remove ``value`` from ``index[key]``, and the key once its set is empty."""
    values = index.get(key)
    if values is not None:
        values.discard(value)
        if not values:
            del index[key]
