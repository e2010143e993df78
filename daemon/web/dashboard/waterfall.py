"""The run page's trace waterfall as rows: spans on one time axis, nested by parent, with the judge's overlay.

Input: the run's spans and its ``trace_report`` (``assertions.judge.TraceJudge.report()``):
``nodes`` (expected path → matched span id or null), ``missing`` (``{path, expected, under, reason,
message, closest}``; ``under`` = the span the node should have been found below), ``unexpected``
(span ids no expected node could take). Matched spans get a tick, missing nodes become ghost rows
right under the span they belong to, unexpected spans are marked. Linked traces follow the run's
own trace, each headed by the span that links back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracecanary.assertions.spans import Span, SpanKind, StatusCode, Trace, group_traces

MAX_ROWS = 2000
MAX_ITEMS = 100
"""Attributes, events and links shown per span in the inspector."""
_STATUS = {StatusCode.ERROR: "error", StatusCode.OK: "ok"}
_KIND = {SpanKind.SERVER: "server", SpanKind.CLIENT: "client", SpanKind.PRODUCER: "producer",
         SpanKind.CONSUMER: "consumer", SpanKind.INTERNAL: "internal", SpanKind.UNSPECIFIED: ""}


@dataclass
class Row:
    """One waterfall line: a span, a ghost (expected but missing) or a trace heading."""

    kind: str  # span | ghost | trace
    depth: int
    name: str
    left_pct: float = 0.0
    width_pct: float = 0.0
    service: str = ""
    span_kind: str = ""
    span_id: str = ""
    duration: str = ""
    status: str = "unset"  # ok | error | unset
    mark: str = ""  # matched | unexpected | missing | orphan
    note: str = ""
    path: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    inspect: dict[str, Any] = field(default_factory=dict)
    """What the span inspector shows: ids, timing, status message, attributes, resource, events, links."""


@dataclass
class Waterfall:
    rows: list[Row]
    ticks: list[tuple[float, str]]
    total: str
    matched: int
    missing: int
    unexpected: int
    truncated: bool
    errors: int = 0
    """Spans whose status is ERROR."""


def fmt_ms(ns: int) -> str:
    ms = ns / 1e6
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


class _Builder:
    def __init__(self, spans: list[Span], report: dict[str, Any] | None) -> None:
        report = report or {}
        self.t0 = min((s.start_ns for s in spans), default=0)
        # The axis ends with the last span to end, the probe's root included: every bar fits.
        self.span_ns = max(1, max((s.end_ns for s in spans), default=0) - self.t0)
        nodes = report.get("nodes") or {}
        self.matched: dict[str, str] = {sid: path for path, sid in nodes.items() if isinstance(sid, str)}
        self.unexpected = {u if isinstance(u, str) else u.get("span_id", "") for u in report.get("unexpected") or []}
        self.ghosts_under: dict[str | None, list[dict[str, Any]]] = {}
        for m in report.get("missing") or []:
            if m.get("reason", "trace.missing") in ("trace.missing", "trace.count"):
                self.ghosts_under.setdefault(m.get("under"), []).append(m)
        self.forbidden = {str(f.get("observed")) for f in report.get("findings") or []
                          if isinstance(f, dict) and f.get("type") == "trace.forbid"}
        self.by_id = {s.span_id: s for s in spans}
        self.rows: list[Row] = []

    def pct(self, ns: int) -> float:
        return min(100.0, round(100.0 * (ns - self.t0) / self.span_ns, 3))

    def width(self, start_ns: int, duration_ns: int) -> float:
        """Bar width in percent, clipped at the axis' right edge."""
        return max(0.3, min(100.0 - self.pct(start_ns), round(100.0 * duration_ns / self.span_ns, 3)))

    def span_row(self, s: Span, depth: int, orphan: bool) -> Row:
        # the probe's own spans (service tracecanary) are the trigger, never "unexpected"
        unexpected = s.span_id in self.unexpected and s.service != "tracecanary"
        mark = "matched" if s.span_id in self.matched else "unexpected" if unexpected else ""
        if s.span_id in self.forbidden:
            mark = "forbidden"
        if orphan and not mark:
            mark = "orphan"
        status = _STATUS.get(s.status_code, "unset")
        note = s.status_message
        if orphan:
            note = (note + " " if note else "") + f"parent {s.parent_span_id} not in trace"
        return Row(
            kind="span", depth=depth, name=s.name, service=s.service, span_kind=_KIND.get(s.kind, ""),
            span_id=s.span_id, left_pct=self.pct(s.start_ns),
            width_pct=self.width(s.start_ns, s.duration_ns), duration=fmt_ms(s.duration_ns),
            status=status, mark=mark, note=note, path=self.matched.get(s.span_id, ""),
            attributes={k: v for k, v in list(s.attributes.items())[:20]}, inspect=self.inspect(s),
        )

    def inspect(self, s: Span) -> dict[str, Any]:
        return {
            "trace_id": s.trace_id, "span_id": s.span_id, "parent_span_id": s.parent_span_id or "",
            "scope": s.scope, "start": "+" + fmt_ms(s.start_ns - self.t0), "duration": fmt_ms(s.duration_ns),
            "status": _STATUS.get(s.status_code, "unset"), "status_message": s.status_message,
            "attributes": dict(list(s.attributes.items())[:MAX_ITEMS]),
            "resource": dict(list(s.resource.items())[:MAX_ITEMS]),
            "events": [{"name": e.name, "at": "+" + fmt_ms(e.time_ns - self.t0),
                        "attributes": dict(list(e.attributes.items())[:MAX_ITEMS])} for e in s.events[:MAX_ITEMS]],
            "links": [{"trace_id": ln.trace_id, "span_id": ln.span_id, "here": ln.span_id in self.by_id,
                       "attributes": dict(list(ln.attributes.items())[:MAX_ITEMS])} for ln in s.links[:MAX_ITEMS]],
        }

    def ghost_rows(self, under: str | None, depth: int, parent: Span | None) -> None:
        for m in self.ghosts_under.pop(under, []):
            left = self.pct(parent.start_ns) if parent else 0.0
            width = self.width(parent.start_ns, parent.duration_ns) if parent else 100.0
            closest = m.get("closest") or []
            why = "; ".join(f"{c.get('label', '')}: {', '.join(c.get('broken', []))}" for c in closest[:2])
            self.rows.append(Row(
                kind="ghost", depth=depth, name=str(m.get("expected", "expected span")), left_pct=left,
                width_pct=max(0.3, width), mark="missing", path=str(m.get("path", "")),
                note=f"closest: {why}" if why else "not found",
            ))

    def walk(self, trace: Trace, span: Span, depth: int, orphan: bool) -> None:
        stack: list[tuple[Span, int, bool, bool]] = [(span, depth, orphan, False)]
        while stack and len(self.rows) < MAX_ROWS:
            s, d, orph, closing = stack.pop()
            if closing:
                self.ghost_rows(s.span_id, d + 1, s)
                continue
            self.rows.append(self.span_row(s, d, orph))
            stack.append((s, d, orph, True))
            stack.extend((c, d + 1, False, False) for c in reversed(trace.children(s)))

    def trace_rows(self, trace: Trace, heading: str | None) -> None:
        if heading:
            self.rows.append(Row(kind="trace", depth=0, name=heading, span_id=trace.trace_id))
        for root in trace.roots:
            self.walk(trace, root, 0, False)
        for orphan in trace.orphans:
            self.walk(trace, orphan, 0, True)


def _link_heading(trace: Trace, by_id: dict[str, Span]) -> str:
    for s in trace.spans:
        for ln in s.links:
            target = by_id.get(ln.span_id)
            if target is not None and target.trace_id != trace.trace_id:
                return f"linked trace {trace.trace_id[:12]}… ← {target.label()}"
    return f"trace {trace.trace_id[:12]}…"


def build_waterfall(spans: list[Span], report: dict[str, Any] | None, main_trace_id: str) -> Waterfall:
    """Rows for every trace of the run (own trace first), ghosts where missing nodes belong, and axis ticks."""
    b = _Builder(spans, report)
    traces = sorted(group_traces(spans).values(), key=lambda t: (t.trace_id != main_trace_id, t.start_ns))
    for i, t in enumerate(traces):
        b.trace_rows(t, None if i == 0 and t.trace_id == main_trace_id else _link_heading(t, b.by_id))
    # missing nodes whose parent span is unknown (a missing anchor, or nothing arrived): at the end
    for under in list(b.ghosts_under):
        b.ghost_rows(under, 0 if under is None else 1, b.by_id.get(under) if under else None)
    ticks = [(round(100.0 * i / 4, 1), fmt_ms(int(b.span_ns * i / 4))) for i in range(5)] if spans else []
    return Waterfall(
        rows=b.rows, ticks=ticks, total=fmt_ms(b.span_ns) if spans else "",
        matched=sum(1 for r in b.rows if r.mark == "matched"),
        missing=sum(1 for r in b.rows if r.kind == "ghost"),
        unexpected=sum(1 for r in b.rows if r.mark == "unexpected"),
        truncated=len(b.rows) >= MAX_ROWS, errors=sum(1 for r in b.rows if r.status == "error"),
    )
