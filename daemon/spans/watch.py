"""Watch: an async waiter on the trace buffer, woken by the spans it follows (no polling).

A watch follows whole traces. A trace is followed once it is added with :meth:`Watch.add_trace`,
once it holds a span linking into a trace given to :meth:`Watch.add_links_to`, or once it carries a
span (or resource) attribute given to :meth:`Watch.add_correlation`. Following a trace delivers its
spans already buffered and then every later span as it arrives, so nothing that arrives between two
:meth:`Watch.wait` calls (or before the watch was set up) is missed. A trace followed with thousands of
spans still undecoded is decoded by the next :meth:`Watch.wait`, a raw batch per step of the event loop.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from tracecanary.assertions.spans import AttrValue, Span
from tracecanary.daemon.spans.untracked import untrack

if TYPE_CHECKING:
    from tracecanary.daemon.spans.buffer import TraceBuffer


def index_value(value: AttrValue) -> AttrValue:
    """Normalize an attribute value for the correlation index (``42`` and ``"42"`` are one key)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return repr(value)


def _span_list() -> list[Span]:
    """A list for spans only, out of the cyclic GC's lists (a run may have thousands queued: untracked.py)."""
    spans: list[Span] = []
    untrack(spans)
    return spans


def _key(trace_id: str) -> bytes:
    try:
        key = bytes.fromhex(trace_id)
    except ValueError as e:
        raise ValueError(f"invalid trace id {trace_id!r}: need 32 hex characters") from e
    if len(key) != 16:
        raise ValueError(f"invalid trace id {trace_id!r}: need 32 hex characters")
    return key


class Watch:
    """Spans of followed traces, handed out by :meth:`wait`. Use from the buffer's event loop."""

    def __init__(self, buffer: TraceBuffer) -> None:
        self._buffer = buffer
        self._followed: set[bytes] = set()
        self._link_targets: set[bytes] = set()
        self._correlations: set[tuple[str, AttrValue]] = set()
        self._pending: list[Span] = _span_list()
        self._backlog: dict[bytes, None] = {}
        """Followed traces whose buffered spans are still to decode (``TraceBuffer.follow_trace``), in order."""
        self._event: anyio.Event | None = None
        self._closed = False
        self.last_delivery_s: float | None = None
        """``anyio.current_time()`` when spans were last delivered (their arrival at the buffer)."""

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def followed_traces(self) -> set[str]:
        """Hex ids of every trace this watch follows (added, linking, or correlated)."""
        return {k.hex() for k in self._followed}

    def add_trace(self, trace_id: str) -> None:
        """Follow a trace: its buffered spans and every later one."""
        self.follow(_key(trace_id))

    def add_links_to(self, trace_id: str) -> None:
        """Follow every trace holding a span that links into ``trace_id`` (now or later)."""
        target = _key(trace_id)
        if target in self._link_targets:
            return
        self._link_targets.add(target)
        for src in self._buffer.follow_links(self, target):
            self.follow(src)

    def add_correlation(self, key: str, value: AttrValue) -> None:
        """Follow every trace with a span (or resource) attribute ``key`` equal to ``value``."""
        self._buffer.track_attribute(key)
        ikey = (key, index_value(value))
        if ikey in self._correlations:
            return
        self._correlations.add(ikey)
        for tid in self._buffer.follow_correlation(self, ikey):
            self.follow(tid)

    def follow(self, key: bytes) -> None:
        """Follow a trace by its raw 16-byte id (used by the buffer's indexes)."""
        if key in self._followed or self._closed:
            return
        self._followed.add(key)
        self.deliver(self._buffer.follow_trace(self, key))

    def note_backlog(self, key: bytes) -> None:
        """Trace ``key`` was followed with many spans undecoded: :meth:`wait` decodes them, a batch at a time."""
        self._backlog[key] = None

    def deliver(self, spans: list[Span]) -> None:
        """Queue spans for the next :meth:`wait` and wake it."""
        if not spans or self._closed:
            return
        self._pending.extend(spans)
        try:
            self.last_delivery_s = anyio.current_time()
        except RuntimeError:  # fed outside an event loop (offline use): the reader's clock decides
            self.last_delivery_s = None
        if self._event is not None:
            self._event.set()

    async def wait(self, timeout_s: float) -> list[Span]:
        """Spans that arrived for followed traces since the last call.

        Returns at once when some are queued; otherwise waits up to ``timeout_s`` for the first one
        and returns ``[]`` on timeout. A followed trace's backlog is decoded first, one raw batch per
        step of the event loop.
        """
        while self._backlog and not self._closed:
            key = next(iter(self._backlog))
            if self._buffer.decode_backlog(key):
                await anyio.lowlevel.checkpoint()
            else:
                del self._backlog[key]
        if not self._pending and timeout_s > 0:
            self._event = anyio.Event()
            try:
                with anyio.move_on_after(timeout_s):
                    await self._event.wait()
            finally:
                self._event = None
        spans, self._pending = self._pending, _span_list()
        return spans

    def close(self) -> None:
        """Stop following; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._buffer.unfollow(self, self._followed, self._link_targets, self._correlations)
        self._pending = _span_list()
        self._backlog.clear()
