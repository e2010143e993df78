"""Trace files: load and write recordings, and render a trace as a waterfall (``trace show``).

A trace file holds one OTLP ``ExportTraceServiceRequest`` in JSON or protobuf, or JSON Lines of them
(the OpenTelemetry Collector file exporter's format; ``check --record`` writes it too).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tracecanary.assertions.spans import Span, SpanKind, StatusCode, Trace, group_traces
from tracecanary.assertions.units import format_duration
from tracecanary.daemon.spans.model import OtlpDecodeError
from tracecanary.daemon.spans.otlp import decode_protobuf
from tracecanary.daemon.spans.otlp_json import decode_document, spans_to_otlp_json


class TraceFileError(OtlpDecodeError):
    """A trace file could not be read or decoded; the message names the file (and line)."""


def load_spans(path: str | Path) -> list[Span]:
    """Every valid span in a trace file (OTLP JSON, OTLP protobuf, or JSON Lines of requests)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise TraceFileError(f"{p}: cannot read: {e.strerror or e}") from e
    text = data.lstrip()
    if not text.startswith((b"{", b"[")):
        try:
            return decode_protobuf(data).spans
        except OtlpDecodeError as e:
            raise TraceFileError(f"{p}: neither OTLP JSON nor protobuf: {e}") from e
    try:
        return decode_document(json.loads(data)).spans
    except (ValueError, OtlpDecodeError):
        pass  # several documents: JSON Lines
    spans: list[Span] = []
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            spans.extend(decode_document(json.loads(line)).spans)
        except (ValueError, OtlpDecodeError) as e:
            raise TraceFileError(f"{p}:{lineno}: not an OTLP/JSON ExportTraceServiceRequest: {e}") from e
    return spans


def write_jsonl(path: str | Path, spans: Iterable[Span]) -> None:
    """Append spans to a JSON Lines trace file, one ``ExportTraceServiceRequest`` line per trace."""
    traces = group_traces(spans)
    with Path(path).open("a", encoding="utf-8") as f:
        for trace in traces.values():
            f.write(json.dumps(spans_to_otlp_json(trace.spans), separators=(",", ":")) + "\n")


_RED, _GREEN, _DIM, _YELLOW, _RESET = "\x1b[31m", "\x1b[32m", "\x1b[2m", "\x1b[33m", "\x1b[0m"
_BAR_WIDTH = 24


def _paint(text: str, code: str, color: bool) -> str:
    return f"{code}{text}{_RESET}" if color and text else text


def _bar(span: Span, start_ns: int, total_ns: int) -> str:
    if total_ns <= 0:
        return "█" * _BAR_WIDTH
    left = min(_BAR_WIDTH - 1, int((span.start_ns - start_ns) * _BAR_WIDTH / total_ns))
    width = max(1, round(span.duration_ns * _BAR_WIDTH / total_ns))
    width = min(width, _BAR_WIDTH - left)
    return " " * left + "█" * width + " " * (_BAR_WIDTH - left - width)


def _status(span: Span, color: bool) -> str:
    if span.status_code is StatusCode.ERROR:
        msg = f"ERROR: {span.status_message}" if span.status_message else "ERROR"
        return _paint(msg, _RED, color)
    if span.status_code is StatusCode.OK:
        return _paint("OK", _GREEN, color)
    return "-"


def _line(span: Span, depth: int, trace: Trace, names: dict[str, Span], color: bool) -> str:
    offset = format_duration(max(0, span.start_ns - trace.start_ns) / 1e9)
    kind = span.kind.name.lower() if span.kind is not SpanKind.UNSPECIFIED else "-"
    parts = [
        f"+{offset:>7}",
        _paint(f"[{_bar(span, trace.start_ns, trace.end_ns - trace.start_ns)}]", _DIM, color),
        "  " * depth + span.name,
        f"({span.service or '?'})",
        kind,
        format_duration(span.duration_s),
        _status(span, color),
    ]
    if depth == 0 and span in trace.orphans:
        parts.append(_paint(f"⚠ orphan: parent {span.parent_span_id} not in trace", _YELLOW, color))
    for link in span.links:
        target = names.get(link.span_id)
        label = f'"{target.name}"' if target else f"{link.trace_id}/{link.span_id}"
        parts.append(f"⇢ link {label}")
    return " ".join(parts)


def render_waterfall(spans: Iterable[Span], *, color: bool = False) -> str:
    """An indented waterfall per trace: name, service, kind, duration, status, links, orphans."""
    all_spans = list(spans)
    names = {s.span_id: s for s in all_spans}
    traces = sorted(group_traces(all_spans).values(), key=lambda t: t.start_ns)
    out: list[str] = []
    for trace in traces:
        dur = format_duration((trace.end_ns - trace.start_ns) / 1e9)
        orphans = f" · {len(trace.orphans)} orphan(s)" if trace.orphans else ""
        errors = sum(1 for s in trace.spans if s.status_code is StatusCode.ERROR)
        errs = f" · {errors} error(s)" if errors else ""
        out.append(f"trace {trace.trace_id} · {len(trace)} spans · {dur}{orphans}{errs}")
        stack = [(s, 0) for s in reversed((*trace.roots, *trace.orphans))]
        stack.sort(key=lambda item: -item[0].start_ns)
        while stack:
            span, depth = stack.pop()
            out.append(_line(span, depth, trace, names, color))
            stack.extend((c, depth + 1) for c in reversed(trace.children(span)))
        out.append("")
    return "\n".join(out)
