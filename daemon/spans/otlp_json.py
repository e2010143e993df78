"""OTLP/JSON traces: decoding into the span model and encoding from it.

OTLP/JSON is the protobuf JSON mapping with OTLP's own exceptions: trace and span ids are
(case-insensitive) hex, not base64; enums are integers. ``google.protobuf.json_format.Parse`` would
decode hex ids as base64 and silently produce 24-byte ids, so this is a decoder of its own. int64
fields may be strings or numbers, unknown fields are ignored, snake_case names are accepted too.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from typing import Any

from tracecanary.assertions.spans import AttrValue, Span, SpanEvent, SpanKind, SpanLink, StatusCode
from tracecanary.daemon.spans.model import DecodedBatch, OtlpDecodeError, check_ids

_KIND_NAMES = {f"SPAN_KIND_{k.name}": k for k in SpanKind}
_STATUS_NAMES = {f"STATUS_CODE_{c.name}": c for c in StatusCode}


def _get(obj: Mapping[str, Any], camel: str, snake: str, default: Any = None) -> Any:
    value = obj.get(camel)
    if value is None:
        value = obj.get(snake, default)
    return default if value is None else value


def _list(obj: Mapping[str, Any], camel: str, snake: str) -> list[Any]:
    value = _get(obj, camel, snake, [])
    if not isinstance(value, list):
        raise OtlpDecodeError(f"{camel}: expected a list, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise OtlpDecodeError(f"expected an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise OtlpDecodeError(f"expected an integer, got {value!r}")
        return int(value)
    try:
        return int(value)
    except ValueError as e:
        raise OtlpDecodeError(f"expected an integer, got {value!r}") from e


def _hex_id(value: Any, size: int) -> bytes:
    """Hex id to bytes; a wrong length or a non-hex string gives bytes that fail ``check_ids``."""
    if value is None or value == "":
        return b""
    if not isinstance(value, str) or len(value) != 2 * size:
        return b"\xff" * (size + 1)  # wrong length on purpose: rejected with the span
    try:
        return bytes.fromhex(value)
    except ValueError:
        return b"\xff" * (size + 1)


def _bytes(value: Any) -> bytes:
    if not isinstance(value, str):
        raise OtlpDecodeError(f"bytesValue: expected base64 text, got {value!r}")
    text = value + "=" * (-len(value) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise OtlpDecodeError(f"bytesValue: invalid base64 {value!r}") from e


def _any_value(v: Any) -> AttrValue:
    if not isinstance(v, Mapping):
        raise OtlpDecodeError(f"AnyValue: expected an object, got {v!r}")
    if "stringValue" in v or "string_value" in v:
        return str(_get(v, "stringValue", "string_value", ""))
    if "boolValue" in v or "bool_value" in v:
        return bool(_get(v, "boolValue", "bool_value", False))
    if "intValue" in v or "int_value" in v:
        return _int(_get(v, "intValue", "int_value", 0))
    if "doubleValue" in v or "double_value" in v:
        return float(_get(v, "doubleValue", "double_value", 0.0))
    if "arrayValue" in v or "array_value" in v:
        arr = _get(v, "arrayValue", "array_value", {})
        return tuple(_any_value(x) for x in _list(arr, "values", "values"))
    if "kvlistValue" in v or "kvlist_value" in v:
        return _attrs(_list(_get(v, "kvlistValue", "kvlist_value", {}), "values", "values"))
    if "bytesValue" in v or "bytes_value" in v:
        return _bytes(_get(v, "bytesValue", "bytes_value", ""))
    return None


def _attrs(kvs: Iterable[Any]) -> dict[str, AttrValue]:
    out: dict[str, AttrValue] = {}
    for kv in kvs:
        key = kv.get("key")
        if not isinstance(key, str):
            raise OtlpDecodeError(f"attribute without a string key: {kv!r}")
        value = kv.get("value")
        out[key] = None if value is None else _any_value(value)
    return out


def _enum(value: Any, names: Mapping[str, Any], default: Any) -> Any:
    if isinstance(value, str) and value in names:
        return names[value]
    number = _int(value)
    return next((v for v in names.values() if int(v) == number), default)


def _links(raw: list[Any]) -> tuple[SpanLink, ...]:
    out = []
    for ln in raw:
        tid = _hex_id(_get(ln, "traceId", "trace_id"), 16)
        sid = _hex_id(_get(ln, "spanId", "span_id"), 8)
        if check_ids(tid, sid, b"") is None:
            out.append(SpanLink(tid.hex(), sid.hex(), _attrs(_list(ln, "attributes", "attributes"))))
    return tuple(out)


def _span(sp: Mapping[str, Any], service: str, resource: dict[str, AttrValue], scope: str,
          out: DecodedBatch) -> None:
    name = _get(sp, "name", "name", "")
    tid = _hex_id(_get(sp, "traceId", "trace_id"), 16)
    sid = _hex_id(_get(sp, "spanId", "span_id"), 8)
    parent = _hex_id(_get(sp, "parentSpanId", "parent_span_id"), 8)
    problem = check_ids(tid, sid, parent)
    if problem is not None:
        out.reject(f"span {name!r}: {problem}")
        return
    status = _get(sp, "status", "status", {})
    events = tuple(
        SpanEvent(str(_get(e, "name", "name", "")), _int(_get(e, "timeUnixNano", "time_unix_nano", 0)),
                  _attrs(_list(e, "attributes", "attributes")))
        for e in _list(sp, "events", "events")
    )
    out.spans.append(Span(
        trace_id=tid.hex(),
        span_id=sid.hex(),
        parent_span_id=parent.hex() if parent else None,
        name=str(name),
        kind=_enum(_get(sp, "kind", "kind", 0), _KIND_NAMES, SpanKind.UNSPECIFIED),
        start_ns=_int(_get(sp, "startTimeUnixNano", "start_time_unix_nano", 0)),
        end_ns=_int(_get(sp, "endTimeUnixNano", "end_time_unix_nano", 0)),
        service=service,
        attributes=_attrs(_list(sp, "attributes", "attributes")),
        resource=resource,
        events=events,
        links=_links(_list(sp, "links", "links")),
        status_code=_enum(_get(status, "code", "code", 0), _STATUS_NAMES, StatusCode.UNSET),
        status_message=str(_get(status, "message", "message", "")),
        scope=scope,
    ))


def decode_document(doc: Any) -> DecodedBatch:
    """Decode an already-parsed OTLP/JSON ``ExportTraceServiceRequest`` (or ``TracesData``)."""
    if not isinstance(doc, Mapping):
        raise OtlpDecodeError("OTLP/JSON body must be an object with resourceSpans")
    out = DecodedBatch()
    try:
        for rs in _list(doc, "resourceSpans", "resource_spans"):
            resource = _attrs(_list(_get(rs, "resource", "resource", {}), "attributes", "attributes"))
            service = resource.get("service.name")
            for ss in _list(rs, "scopeSpans", "scope_spans"):
                scope = str(_get(_get(ss, "scope", "scope", {}), "name", "name", ""))
                for sp in _list(ss, "spans", "spans"):
                    _span(sp, service if isinstance(service, str) else "", resource, scope, out)
    except (AttributeError, TypeError, ValueError, RecursionError) as e:
        raise OtlpDecodeError(f"malformed OTLP/JSON: {e}") from e
    return out


def decode_json(body: bytes | str) -> DecodedBatch:
    """Decode an OTLP/JSON ``ExportTraceServiceRequest`` body (ids in hex)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise OtlpDecodeError(f"undecodable OTLP/JSON: {e}") from e
    return decode_document(doc)


# ---------------------------------------------------------------------------------------------
# encoding


def _any_json(value: AttrValue) -> dict[str, Any]:
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    if isinstance(value, tuple | list):
        return {"arrayValue": {"values": [_any_json(v) for v in value]}}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": _attrs_json(value)}}
    return {}


def _attrs_json(attrs: Mapping[str, AttrValue]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _any_json(v)} for k, v in attrs.items()]


def span_to_json(span: Span) -> dict[str, Any]:
    """One span in OTLP/JSON (ids hex, int64 as strings, enums as integers)."""
    doc: dict[str, Any] = {
        "traceId": span.trace_id,
        "spanId": span.span_id,
        "name": span.name,
        "kind": int(span.kind),
        "startTimeUnixNano": str(span.start_ns),
        "endTimeUnixNano": str(span.end_ns),
        "attributes": _attrs_json(span.attributes),
        "status": {"code": int(span.status_code), "message": span.status_message},
    }
    if span.parent_span_id:
        doc["parentSpanId"] = span.parent_span_id
    if span.events:
        doc["events"] = [
            {"name": e.name, "timeUnixNano": str(e.time_ns), "attributes": _attrs_json(e.attributes)}
            for e in span.events
        ]
    if span.links:
        doc["links"] = [
            {"traceId": ln.trace_id, "spanId": ln.span_id, "attributes": _attrs_json(ln.attributes)}
            for ln in span.links
        ]
    return doc


def spans_to_otlp_json(spans: Iterable[Span]) -> dict[str, Any]:
    """Spans as one OTLP/JSON ``ExportTraceServiceRequest`` document, grouped by resource and scope."""
    resources: dict[str, tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]] = {}
    for span in spans:
        attrs = dict(span.resource)
        if span.service and "service.name" not in attrs:
            attrs["service.name"] = span.service
        rkey = repr(sorted(attrs.items(), key=lambda kv: kv[0]))
        if rkey not in resources:
            resources[rkey] = ({"attributes": _attrs_json(attrs)}, {})
        resources[rkey][1].setdefault(span.scope, []).append(span_to_json(span))
    return {
        "resourceSpans": [
            {
                "resource": resource,
                "scopeSpans": [{"scope": {"name": scope}, "spans": sps} for scope, sps in scopes.items()],
            }
            for resource, scopes in resources.values()
        ]
    }
