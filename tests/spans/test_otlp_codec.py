"""OTLP decoding details: JSON mapping rules, AnyValue kinds, bulk id scan, lazy attributes."""

from __future__ import annotations

import base64
import json
import os

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.spans.sdk import expected, make_sdk_spans
from tracecanary.assertions.spans import Span, SpanKind, StatusCode
from tracecanary.daemon.spans.otlp import (
    LazyAttributes,
    OtlpDecodeError,
    decode_json,
    decode_protobuf,
    decode_request,
    encode_request,
    scan_protobuf,
    spans_to_otlp_json,
)

TID = "5B8EFFF798038103D269B633813FC60C"
SID = "EEE19B7EC3C1B174"


def _doc(span: dict[str, object], **resource: object) -> bytes:
    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": k, "value": {"stringValue": v}} for k, v in resource.items()]},
        "scopeSpans": [{"scope": {"name": "lib", "version": "1"}, "spans": [span]}],
        "schemaUrl": "https://opentelemetry.io/schemas/1.21.0",
    }]}).encode()


def test_json_hex_ids_where_json_format_would_silently_break() -> None:
    body = _doc({"traceId": TID, "spanId": SID, "name": "x"})
    pb = json_format.Parse(body, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    assert len(pb.resource_spans[0].scope_spans[0].spans[0].trace_id) == 24  # the pitfall
    (span,) = decode_json(body).spans
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TID.lower(), SID.lower(), None)


def test_json_value_kinds_int64_forms_enums_and_unknown_fields() -> None:
    body = _doc({
        "traceId": TID, "spanId": SID, "parentSpanId": "", "name": "op", "kind": 3,
        "startTimeUnixNano": "1700000000000000001", "endTimeUnixNano": 1700000000000000009,
        "unknownTopLevel": [1, 2],
        "attributes": [
            {"key": "s", "value": {"stringValue": "v"}},
            {"key": "b", "value": {"boolValue": True}},
            {"key": "i", "value": {"intValue": "-9007199254740993"}},
            {"key": "i2", "value": {"intValue": 7}},
            {"key": "d", "value": {"doubleValue": 1.5}},
            {"key": "nan", "value": {"doubleValue": "NaN"}},
            {"key": "arr", "value": {"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "two"}]}}},
            {"key": "kv", "value": {"kvlistValue": {"values": [{"key": "in", "value": {"boolValue": False}}]}}},
            {"key": "raw", "value": {"bytesValue": base64.b64encode(b"\x00\xff").decode()}},
            {"key": "empty", "value": {}},
        ],
        "events": [{"timeUnixNano": "5", "name": "ev", "attributes": [], "droppedAttributesCount": 0}],
        "links": [{"traceId": TID.lower(), "spanId": "00f067aa0ba902b7", "traceState": "k=v"},
                  {"traceId": "abcd", "spanId": SID}],  # invalid link: dropped, span kept
        "status": {"code": 2, "message": "bad"},
    }, **{"service.name": "svc"})
    (span,) = decode_json(body).spans
    attrs = dict(span.attributes)
    nan = attrs.pop("nan")
    assert nan != nan
    assert attrs == {"s": "v", "b": True, "i": -9007199254740993, "i2": 7, "d": 1.5, "arr": (1, "two"),
                     "kv": {"in": False}, "raw": b"\x00\xff", "empty": None}
    assert (span.kind, span.start_ns, span.end_ns) == (SpanKind.CLIENT, 1700000000000000001, 1700000000000000009)
    assert (span.status_code, span.status_message, span.service, span.scope) == (StatusCode.ERROR, "bad", "svc", "lib")
    assert [(e.name, e.time_ns) for e in span.events] == [("ev", 5)]
    assert [(ln.trace_id, ln.span_id) for ln in span.links] == [(TID.lower(), "00f067aa0ba902b7")]


def test_json_snake_case_and_enum_names_are_accepted() -> None:
    body = json.dumps({"resource_spans": [{"scope_spans": [{"spans": [{
        "trace_id": TID, "span_id": SID, "name": "n", "kind": "SPAN_KIND_CONSUMER",
        "status": {"code": "STATUS_CODE_OK"}}]}]}]}).encode()
    (span,) = decode_json(body).spans
    assert (span.kind, span.status_code) == (SpanKind.CONSUMER, StatusCode.OK)


@pytest.mark.parametrize("body", [b"", b"[]", b"{\"resourceSpans\": {}}", b"\xff\xfe",
                                  b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"' + TID.encode()
                                  + b'","spanId":"' + SID.encode() + b'","startTimeUnixNano":"soon"}]}]}]}'])
def test_json_undecodable_raises(body: bytes) -> None:
    with pytest.raises(OtlpDecodeError):
        decode_json(body)


def test_deeply_nested_values_are_a_decode_error_not_a_crash() -> None:
    value = '{"stringValue": "x"}'
    for _ in range(5000):
        value = '{"arrayValue": {"values": [' + value + ']}}'
    body = _doc({"traceId": TID, "spanId": SID, "name": "deep", "attributes": [{"key": "k", "value": "@"}]})
    with pytest.raises(OtlpDecodeError):
        decode_json(body.replace(b'"@"', value.encode()))


def test_protobuf_round_trip_and_scan_agree() -> None:
    spans = [expected(s) for s in make_sdk_spans()]
    body = encode_request(spans).SerializeToString()
    key = lambda s: s.span_id  # noqa: E731
    assert sorted(decode_protobuf(body).spans, key=key) == sorted(spans, key=key)
    raw = scan_protobuf(body)
    assert raw.fallback is None and raw.span_count == 4 and raw.has_links
    assert {t.hex(): n for t, n in raw.trace_counts.items()} == {
        s.trace_id: sum(1 for x in spans if x.trace_id == s.trace_id) for s in spans}
    link = next(s for s in spans if s.links).links[0]
    assert raw.link_targets() == {bytes.fromhex(link.trace_id)}
    assert sorted(raw.decode(), key=key) == sorted(spans, key=key)
    json_body = json.dumps(spans_to_otlp_json(spans)).encode()
    assert sorted(decode_json(json_body).spans, key=key) == sorted(spans, key=key)


def test_scan_falls_back_and_rejects_zero_and_short_ids() -> None:
    spans = [Span(trace_id=os.urandom(16).hex(), span_id=os.urandom(8).hex(), parent_span_id=None, name=f"s{i}")
             for i in range(3)]
    req = encode_request(spans)
    req.resource_spans[0].scope_spans[0].spans[0].trace_id = bytes(16)
    req.resource_spans[0].scope_spans[0].spans[1].parent_span_id = b"\x01" * 3
    raw = scan_protobuf(req.SerializeToString())
    assert raw.fallback is not None and raw.rejected == 2
    assert [s.name for s in raw.fallback.spans] == ["s2"]
    assert "invalid trace id" in raw.error_message and "invalid parent span id" in raw.error_message
    with pytest.raises(OtlpDecodeError):
        scan_protobuf(b"\x0a\x05\x12")


def test_lazy_attributes_behave_like_a_dict() -> None:
    spans = [expected(s) for s in make_sdk_spans()]
    req = encode_request(spans)
    lazy = decode_request(req, lazy=True).spans
    eager = decode_request(req).spans
    assert lazy == eager
    root = next(s for s in lazy if s.name == "POST /orders")
    assert isinstance(root.attributes, LazyAttributes)
    assert root.attributes["http.status_code"] == 201 and "ok" in root.attributes and "nope" not in root.attributes
    assert dict(root.attributes) == dict(next(s for s in eager if s.name == "POST /orders").attributes)
    assert repr(root.attributes).startswith("{'http.method'")
    assert json.dumps(dict(root.attributes))


def test_fast_span_constructor_builds_equal_spans() -> None:
    from dataclasses import fields, replace

    from tracecanary.daemon.spans.model import new_span

    s = expected(make_sdk_spans()[0])
    kw = {f.name: getattr(s, f.name) for f in fields(Span)}
    fast = new_span(**kw)
    assert type(fast) is Span and fast == s and repr(fast) == repr(s)
    assert replace(fast, name="other").name == "other"
    with pytest.raises(AttributeError):
        fast.name = "frozen"  # type: ignore[misc]
