"""Decoded spans out of the cyclic garbage collector's reach: a full collection's pause stays short.

A full (generation 2) collection walks every container object the collector tracks, and every object
each of them refers to: with a few hundred thousand decoded spans buffered for the runs watching them,
that walk held the event loop for 150-250 ms. Spans are immutable trees of plain data (strings,
numbers, tuples, attribute mappings of plain values, a protobuf view the attributes are decoded from):
they can never be part of a reference cycle, so the collector has nothing to find in them. Removing
them from its lists (``PyObject_GC_UnTrack``, CPython's C API, through ctypes) costs ~0.1 µs per object
once; reference counting still frees them the moment the last reference goes, exactly as before.

The containers that hold many spans for a long time (a watched trace's span list, a run's list of judged
spans) are untracked too: the collector would otherwise visit each span through them. Only objects whose
every reachable part is plain data may be untracked, and only containers that hold nothing else: an
untracked object inside a reference cycle would keep the cycle alive forever. An untracked container
stays untracked as it grows; what it refers to counts as referenced from outside, so it is never freed
early.
"""

from __future__ import annotations

import ctypes
import sys
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from tracecanary.assertions.spans import Span
from tracecanary.daemon.spans.otlp_fields import LazyAttributes

__all__ = ["UNTRACKING", "untrack", "untrack_spans"]


def _untrack_function() -> Callable[[Any], None] | None:
    if sys.implementation.name != "cpython":
        return None
    try:
        fn = ctypes.pythonapi.PyObject_GC_UnTrack
    except AttributeError:  # pragma: no cover - every CPython exports it (stable ABI)
        return None
    fn.argtypes = [ctypes.py_object]
    fn.restype = None
    untrack: Callable[[Any], None] = fn
    return untrack


_untrack = _untrack_function()
UNTRACKING = _untrack is not None
"""False where the C API is not there (another Python implementation): spans then stay tracked."""
_lazy = LazyAttributes


def untrack(container: object) -> None:
    """Take one container that only ever holds plain data (spans, ids) out of the cyclic GC's lists.

    A list or set stays out as it grows; a dict re-enters the lists when it gains a container value, so
    untrack a growing dict again after changing it.
    """
    if _untrack is not None:
        _untrack(container)


def untrack_spans(spans: Iterable[Span]) -> None:
    """Take spans (and their attribute objects, events and links) out of the cyclic GC's lists.

    For spans decoded from OTLP or built from plain data only. Idempotent; a no-op off CPython.
    """
    untrack = _untrack
    if untrack is None:
        return
    spans = spans if isinstance(spans, list) else list(spans)
    deque(map(untrack, spans), maxlen=0)
    deque(map(untrack, [a for s in spans if type(a := s.attributes) is _lazy]), maxlen=0)
    for s in spans:
        if s.events or s.links:
            _untrack_parts(untrack, s)


def _untrack_parts(untrack: Callable[[Any], None], span: Span) -> None:
    for part in (span.events, span.links):
        if part:
            untrack(part)
            for item in part:
                untrack(item)
