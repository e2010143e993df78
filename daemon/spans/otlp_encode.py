"""Encoding spans as an OTLP protobuf ``ExportTraceServiceRequest`` (recordings, tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracecanary.assertions.spans import AttrValue, Span


def _set_any(av: Any, value: AttrValue) -> None:
    if isinstance(value, str):
        av.string_value = value
    elif isinstance(value, bool):
        av.bool_value = value
    elif isinstance(value, int):
        av.int_value = value
    elif isinstance(value, float):
        av.double_value = value
    elif isinstance(value, bytes):
        av.bytes_value = value
    elif isinstance(value, tuple | list):
        arr = av.array_value
        arr.SetInParent()
        for item in value:
            _set_any(arr.values.add(), item)
    elif isinstance(value, Mapping):
        kvl = av.kvlist_value
        kvl.SetInParent()
        _set_attrs(kvl.values, value)


def _set_attrs(target: Any, attrs: Mapping[str, AttrValue]) -> None:
    for key, value in attrs.items():
        kv = target.add()
        kv.key = key
        _set_any(kv.value, value)


def resource_of(span: Span) -> dict[str, AttrValue]:
    """The span's resource attributes, with ``service.name`` filled in from ``service``."""
    attrs = dict(span.resource)
    if span.service and "service.name" not in attrs:
        attrs["service.name"] = span.service
    return attrs


def encode_request(spans: Iterable[Span]) -> ExportTraceServiceRequest:
    """Encode spans as one ``ExportTraceServiceRequest``, grouped by resource and scope."""
    req = ExportTraceServiceRequest()
    scopes: dict[tuple[str, str], Any] = {}
    resources: dict[str, Any] = {}
    for span in spans:
        attrs = resource_of(span)
        rkey = repr(sorted(attrs.items(), key=lambda kv: kv[0]))
        rs = resources.get(rkey)
        if rs is None:
            rs = resources[rkey] = req.resource_spans.add()
            _set_attrs(rs.resource.attributes, attrs)
        ss = scopes.get((rkey, span.scope))
        if ss is None:
            ss = scopes[(rkey, span.scope)] = rs.scope_spans.add()
            ss.scope.name = span.scope
        _encode_span(ss.spans.add(), span)
    return req


def _encode_span(sp: Any, span: Span) -> None:
    sp.trace_id = bytes.fromhex(span.trace_id)
    sp.span_id = bytes.fromhex(span.span_id)
    if span.parent_span_id:
        sp.parent_span_id = bytes.fromhex(span.parent_span_id)
    sp.name = span.name
    sp.kind = int(span.kind)
    sp.start_time_unix_nano = span.start_ns
    sp.end_time_unix_nano = span.end_ns
    _set_attrs(sp.attributes, span.attributes)
    for ev in span.events:
        e = sp.events.add()
        e.name, e.time_unix_nano = ev.name, ev.time_ns
        _set_attrs(e.attributes, ev.attributes)
    for link in span.links:
        ln = sp.links.add()
        ln.trace_id, ln.span_id = bytes.fromhex(link.trace_id), bytes.fromhex(link.span_id)
        _set_attrs(ln.attributes, link.attributes)
    sp.status.code = int(span.status_code)
    sp.status.message = span.status_message
