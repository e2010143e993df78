"""Compact YAML traces for the case table: nested span dicts become Span objects with hex ids.

A span is ``{name, service, kind, status, attrs, resource, events, start, dur, id, trace, parent,
links, children}``; ``start``/``dur`` are milliseconds (``start`` relative to the parent's start,
default: 1 ms after it); ``id`` is a short label other spans' ``links``/``parent`` refer to;
``trace`` a short label for the trace id (default ``t1``; children inherit it).
"""

from __future__ import annotations

import hashlib
from typing import Any

from tracecanary.assertions.spans import Span, SpanEvent, SpanKind, SpanLink, StatusCode

BASE_NS = 1_700_000_000_000_000_000


def trace_id(label: str) -> str:
    return hashlib.sha256(f"trace:{label}".encode()).hexdigest()[:32]


def span_id(label: str) -> str:
    return hashlib.sha256(f"span:{label}".encode()).hexdigest()[:16]


def build_spans(items: list[dict[str, Any]]) -> list[Span]:
    """Flatten a compact trace into spans (parents before children, in document order)."""
    out: list[Span] = []
    counter = [0]

    def walk(item: dict[str, Any], parent: str | None, parent_start_ns: int, trace: str) -> None:
        counter[0] += 1
        label = str(item.get("id", f"s{counter[0]}"))
        trace = str(item.get("trace", trace))
        start_ns = parent_start_ns + int(float(item.get("start", 1)) * 1e6)
        end_ns = start_ns + int(float(item.get("dur", 10)) * 1e6)
        explicit_parent = item.get("parent", "")
        parent_sid = span_id(str(explicit_parent)) if explicit_parent else parent
        links = tuple(SpanLink(trace_id(str(ln.get("trace", "t1"))), span_id(str(ln["id"])))
                      if isinstance(ln, dict) else SpanLink(trace_id("t1"), span_id(str(ln)))
                      for ln in item.get("links", []))
        events = tuple(SpanEvent(e["name"], start_ns, e.get("attributes", {})) for e in item.get("events", []))
        sid = span_id(label)
        out.append(Span(
            trace_id=trace_id(trace), span_id=sid, parent_span_id=parent_sid, name=str(item["name"]),
            kind=SpanKind[str(item.get("kind", "internal")).upper()], start_ns=start_ns, end_ns=end_ns,
            service=str(item.get("service", "svc")), attributes=dict(item.get("attrs", {})),
            resource=dict(item.get("resource", {})), events=events, links=links,
            status_code=StatusCode[str(item.get("status", "unset")).upper()],
            status_message=str(item.get("status_message", "")),
        ))
        for child in item.get("children", []):
            walk(child, sid, start_ns, trace)

    for item in items:
        walk(item, None, BASE_NS, "t1")
    return out
