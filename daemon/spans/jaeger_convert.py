"""Jaeger's JSON model (``GET /api/traces/{id}``) → the common span model.

The shape is Jaeger's ``uimodel`` (jaegertracing/jaeger ``internal/uimodel/model.go``, formerly
``model/json/model.go``): ``{"data": [trace…], "total", "limit", "offset", "errors": [{code, msg, traceID}]}``;
a trace is ``{traceID, spans, processes: {p1: {serviceName, tags}}, warnings}``; a span is ``{traceID,
spanID, operationName, references: [{refType: CHILD_OF|FOLLOWS_FROM, traceID, spanID}], startTime µs,
duration µs, tags: [{key, type: string|bool|int64|float64|binary, value}], logs: [{timestamp µs,
fields}], processID | process, warnings}``. Ids are lowercase hex without their 64-bit high half when it
is zero (16 hex characters for a 64-bit trace id): they are left-padded to 32/16.

Mapping: service and resource from the span's process; the parent is the first same-trace ``CHILD_OF``
reference, else the first same-trace ``FOLLOWS_FROM`` (Jaeger's own ``Span.ParentSpanID``); every other
reference becomes a span link. The tags the OpenTelemetry → Jaeger translation adds for what Jaeger has
no field for become fields again: ``span.kind`` → kind, ``otel.status_code`` (else ``error: true``) →
status, ``otel.status_description`` → status message, ``otel.scope.name`` → scope. Other tags keep their
types (``binary`` values stay their base64 text). A log becomes an event named by its ``event`` field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tracecanary.assertions.spans import AttrValue, Span, SpanEvent, SpanKind, SpanLink, StatusCode
from tracecanary.daemon.spans.model import new_span

Json = dict[str, Any]

_KINDS = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT, "producer": SpanKind.PRODUCER,
          "consumer": SpanKind.CONSUMER, "internal": SpanKind.INTERNAL}
_STATUS = {"ERROR": StatusCode.ERROR, "OK": StatusCode.OK, "UNSET": StatusCode.UNSET}


def pad_id(raw: Any, width: int) -> str:
    """A Jaeger hex id, lowercased and left-padded (``"7b"`` → ``"00…7b"``); ``""`` when absent."""
    text = str(raw or "").strip().lower()
    return text.rjust(width, "0") if text else ""


def tag_value(tag: Mapping[str, Any]) -> AttrValue:
    """A tag's value in its declared type (Jaeger's JSON may carry int64 as a number or a string)."""
    value: Any = tag.get("value")
    kind = str(tag.get("type") or "string").lower()
    try:
        if kind == "bool":
            return value if isinstance(value, bool) else str(value).lower() == "true"
        if kind == "int64":
            return int(value)
        if kind == "float64":
            return float(value)
    except (TypeError, ValueError):
        return None if value is None else str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def tags(raw: Iterable[Any] | None) -> dict[str, AttrValue]:
    """Jaeger tags (or log fields) as typed attributes."""
    return {str(t.get("key")): tag_value(t) for t in raw or () if isinstance(t, Mapping) and t.get("key") is not None}


def _status(attrs: dict[str, AttrValue]) -> tuple[StatusCode, str]:
    code = attrs.pop("otel.status_code", None)
    message = str(attrs.pop("otel.status_description", "") or "")
    if isinstance(code, str) and code.upper() in _STATUS:
        if _STATUS[code.upper()] is StatusCode.ERROR and attrs.get("error") in (True, "true"):
            attrs.pop("error")  # the translator's companion of otel.status_code=ERROR
        return _STATUS[code.upper()], message
    if attrs.get("error") in (True, "true"):
        attrs.pop("error")
        return StatusCode.ERROR, message
    return StatusCode.UNSET, message


def parent_and_links(span: Mapping[str, Any], trace_id: str) -> tuple[str | None, tuple[SpanLink, ...]]:
    """The parent (Jaeger's ``ParentSpanID``: first same-trace CHILD_OF, else first same-trace
    FOLLOWS_FROM) and every other reference as a link. A legacy ``parentSpanID`` field is the fallback."""
    refs = [r for r in span.get("references") or () if isinstance(r, Mapping)]
    chosen: int | None = None
    for kind in ("CHILD_OF", "FOLLOWS_FROM"):
        chosen = next((i for i, r in enumerate(refs) if str(r.get("refType", "")).upper() == kind
                       and pad_id(r.get("traceID"), 32) == trace_id), None)
        if chosen is not None:
            break
    parent = pad_id(refs[chosen].get("spanID"), 16) if chosen is not None else pad_id(span.get("parentSpanID"), 16)
    links = tuple(
        SpanLink(pad_id(r.get("traceID"), 32), pad_id(r.get("spanID"), 16),
                 {"jaeger.ref_type": str(r.get("refType", ""))})
        for i, r in enumerate(refs) if i != chosen and r.get("spanID")
    )
    return (parent if parent and parent != "0" * 16 else None), links


def _events(logs: Iterable[Any] | None) -> tuple[SpanEvent, ...]:
    out = []
    for log in logs or ():
        if not isinstance(log, Mapping):
            continue
        fields = tags(log.get("fields"))
        name = fields.pop("event", None)
        out.append(SpanEvent(str(name) if name is not None else "log", int(log.get("timestamp") or 0) * 1000, fields))
    return tuple(out)


def _process(span: Mapping[str, Any], processes: Mapping[str, Any]) -> tuple[str, dict[str, AttrValue]]:
    proc = span.get("process") or processes.get(str(span.get("processID") or "")) or {}
    service = str(proc.get("serviceName") or "") if isinstance(proc, Mapping) else ""
    resource = tags(proc.get("tags")) if isinstance(proc, Mapping) else {}
    if service:
        resource["service.name"] = service
    return service, resource


def convert_span(raw: Mapping[str, Any], trace_id: str, processes: Mapping[str, Any],
                 resources: dict[str, tuple[str, dict[str, AttrValue]]]) -> Span:
    """One Jaeger span; ``resources`` caches each process's (service, resource) across spans."""
    pid = str(raw.get("processID") or "")
    if pid and pid in resources and "process" not in raw:
        service, resource = resources[pid]
    else:
        service, resource = _process(raw, processes)
        if pid:
            resources[pid] = (service, resource)
    attrs = tags(raw.get("tags"))
    kind = _KINDS.get(str(attrs.pop("span.kind", "") or "").lower(), SpanKind.UNSPECIFIED)
    code, message = _status(attrs)
    scope = str(attrs.pop("otel.scope.name", "") or "")
    attrs.pop("otel.scope.version", None)
    parent, links = parent_and_links(raw, trace_id)
    start_ns = int(raw.get("startTime") or 0) * 1000
    return new_span(
        trace_id=trace_id, span_id=pad_id(raw.get("spanID"), 16), parent_span_id=parent,
        name=str(raw.get("operationName") or ""), kind=kind, start_ns=start_ns,
        end_ns=start_ns + max(0, int(raw.get("duration") or 0)) * 1000, service=service, attributes=attrs,
        resource=resource, events=_events(raw.get("logs")), links=links, status_code=code,
        status_message=message, scope=scope,
    )


def convert_traces(data: Iterable[Any], trace_id: str) -> list[Span]:
    """The spans of ``trace_id`` in a ``data`` list of Jaeger traces (other traces are left out)."""
    spans: list[Span] = []
    for trace in data:
        if not isinstance(trace, Mapping):
            continue
        processes = trace.get("processes") or {}
        resources: dict[str, tuple[str, dict[str, AttrValue]]] = {}
        for raw in trace.get("spans") or ():
            if isinstance(raw, Mapping) and pad_id(raw.get("traceID") or trace.get("traceID"), 32) == trace_id:
                spans.append(convert_span(raw, trace_id, processes, resources))
    return spans


__all__ = ["convert_span", "convert_traces", "pad_id", "parent_and_links", "tag_value", "tags"]
