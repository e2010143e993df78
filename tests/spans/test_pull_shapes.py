"""The converters on documents in the shapes Jaeger and Tempo produce, each copied from or written after
the upstream file named beside it (jaegertracing/jaeger at 8498073f, grafana/tempo at ad33aa8f):

- Jaeger api_v3 today: ``cmd/jaeger/internal/extension/jaegerquery/internal/apiv3/snapshots/GetTrace.json``
  (``{"result": …}`` from ``http_gateway.go`` ``returnTrace``; ids hex, enums integers).
- Jaeger api_v3 before v1.53 (grpc-gateway): ``cmd/query/app/apiv3/snapshots/GetTrace.json`` at 003111bb5~1
  (base64 ids, int64 strings); streamed chunks per ``GRPCGatewayWrapper`` in
  ``internal/proto/api_v3/query_service.pb.go``; ``instrumentationLibrarySpans`` per the OTLP it used in
  2021 (``proto-gen/otel/trace/v1/trace.pb.go`` at 29b601632).
- Jaeger JSON model: ``internal/uimodel/model.go`` and ``cmd/anonymizer/app/uiconv/fixtures/trace_success.json``
  (64-bit trace id, embedded ``process``, a ``bool`` tag whose value is the string ``"true"``); the
  envelope ``structuredResponse`` of ``jaegerquery/internal/http_handler.go``; the parent rule of
  ``model/span.go`` ``ParentSpanID`` (at 5fa0297a8~1).
- Tempo: ``pkg/tempopb/tempo.proto`` (``Trace``, ``TraceByIDResponse``, ``PartialStatus``),
  ``pkg/tempopb/trace_utils.go`` (``batches`` in v1 JSON), gogo jsonpb (base64 bytes, enum names).
"""

from __future__ import annotations

import json

import pytest

from tracecanary.assertions.spans import SpanKind, StatusCode
from tracecanary.daemon.spans.jaeger import JaegerTraceSource
from tracecanary.daemon.spans.jaeger_convert import convert_traces
from tracecanary.daemon.spans.otlp_pulled import decode_pulled, json_objects
from tracecanary.daemon.spans.tempo import TempoApiError, trace_field
from tracecanary.demo.emulators.tempo import trace_by_id_response

JAEGER_V3_SNAPSHOT = {"result": {"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {}, "spans": [{
    "kind": 2, "name": "foobar", "spanId": "0000000000000002", "status": {"code": 2},
    "traceId": "00000000000000000000000000000001"}]}]}]}}

JAEGER_V3_GRPC_GATEWAY_SNAPSHOT = {"result": {"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {}, "spans": [{
    "endTimeUnixNano": "11651379494838206464", "name": "foobar", "spanId": "AAAAAAAAALQ=",
    "startTimeUnixNano": "11651379494838206464", "status": {}, "traceId": "AAAAAAAAAJYAAAAAAAAAoA=="}]}]}]}}

UICONV_TRACE_SUCCESS = [
    {"traceID": "2be38093ead7a083", "spanID": "7606ddfe69932d34", "flags": 1, "operationName": "a071653098f9250d",
     "references": [{"refType": "CHILD_OF", "traceID": "2be38093ead7a083", "spanID": "492770a15935810f"}],
     "startTime": 1605223981761425, "duration": 267037, "tags": [{"key": "span.kind", "type": "string", "value": "server"}],
     "logs": [], "process": {"serviceName": "16af988c443cff37", "tags": []}, "warnings": None},
    {"traceID": "2be38093ead7a083", "spanID": "7bd66f09ba90ea3d", "flags": 1, "operationName": "471418097747d04a",
     "references": [{"refType": "CHILD_OF", "traceID": "2be38093ead7a083", "spanID": "7606ddfe69932d34"}],
     "startTime": 1605223981965074, "duration": 32782,
     "tags": [{"key": "span.kind", "type": "string", "value": "client"}, {"key": "error", "type": "bool", "value": "true"}],
     "logs": [], "process": {"serviceName": "3c220036602f839e", "tags": []}, "warnings": None},
]

TID = "5b8efff798038103d269b633813fc60c"
TEMPO_SPAN = {  # gogo jsonpb of an OTLP span: base64 ids, enum names, int64 as strings
    "traceId": "W47/95gDgQPSabYzgT/GDA==", "spanId": "7v8PUQBd8wM=", "parentSpanId": "AAAAAAAAAAE=",
    "name": "HTTP GET", "kind": "SPAN_KIND_SERVER", "startTimeUnixNano": "1700000000000000000",
    "endTimeUnixNano": "1700000000250000000",
    "attributes": [{"key": "http.status_code", "value": {"intValue": "500"}},
                   {"key": "retry", "value": {"boolValue": True}}],
    "status": {"code": "STATUS_CODE_ERROR", "message": "boom"},
    "events": [{"timeUnixNano": "1700000000100000000", "name": "exception",
                "attributes": [{"key": "exception.type", "value": {"stringValue": "ValueError"}}]}],
    "links": [{"traceId": "AAAAAAAAAAAAAAAAAAAAAQ==", "spanId": "AAAAAAAAAAI="}],
}
RESOURCE = {"attributes": [{"key": "service.name", "value": {"stringValue": "frontend"}}]}


def test_jaeger_v3_today() -> None:
    [span] = decode_pulled(JAEGER_V3_SNAPSHOT["result"], "0" * 31 + "1")
    assert (span.span_id, span.name, span.kind, span.status_code) == ("0" * 15 + "2", "foobar", SpanKind.SERVER,
                                                                      StatusCode.ERROR)


def test_jaeger_v3_grpc_gateway_base64_ids() -> None:
    [span] = decode_pulled(JAEGER_V3_GRPC_GATEWAY_SNAPSHOT["result"], "000000000000009600000000000000a0")
    assert span.span_id == "00000000000000b4"
    assert span.start_ns == 11651379494838206464


def test_jaeger_v3_streamed_chunks_and_library_spans() -> None:
    old = {"resourceSpans": [{"resource": RESOURCE, "instrumentationLibrarySpans": [
        {"instrumentationLibrary": {"name": "io.opentelemetry.http"}, "spans": [TEMPO_SPAN]}]}]}
    body = (json.dumps({"result": old}) + "\n" + json.dumps({"result": JAEGER_V3_SNAPSHOT["result"]}) + "\n").encode()
    chunks = list(json_objects(body))
    assert len(chunks) == 2
    [span] = JaegerTraceSource._v3_chunk(chunks[0], TID, "/api/v3/traces/x")
    assert (span.scope, span.service, span.kind) == ("io.opentelemetry.http", "frontend", SpanKind.SERVER)
    not_found = {"error": {"grpcCode": 5, "httpCode": 404, "message": "trace not found", "httpStatus": "Not Found"}}
    assert JaegerTraceSource._v3_chunk(not_found, TID, "/p") == []


def test_jaeger_json_model_fixture() -> None:
    tid = "2be38093ead7a083".rjust(32, "0")
    spans = {s.span_id: s for s in convert_traces([{"traceID": "2be38093ead7a083", "spans": UICONV_TRACE_SUCCESS}], tid)}
    server, client = spans["7606ddfe69932d34"], spans["7bd66f09ba90ea3d"]
    assert server.trace_id == tid and server.kind is SpanKind.SERVER and server.service == "16af988c443cff37"
    assert server.parent_span_id == "492770a15935810f"
    assert client.parent_span_id == server.span_id and client.kind is SpanKind.CLIENT
    assert client.status_code is StatusCode.ERROR and "error" not in client.attributes
    assert (client.start_ns, client.end_ns) == (1605223981965074000, (1605223981965074 + 32782) * 1000)


def test_jaeger_parent_rule_and_links() -> None:
    tid = "ab" * 16
    other = "cd" * 16

    def span(sid: str, refs: list[tuple[str, str, str]]) -> dict[str, object]:
        return {"traceID": tid, "spanID": sid, "operationName": sid, "startTime": 1, "duration": 1, "processID": "p1",
                "references": [{"refType": r, "traceID": t, "spanID": s} for r, t, s in refs],
                "tags": [{"key": "otel.status_code", "type": "string", "value": "OK"},
                         {"key": "n", "type": "int64", "value": "7"}, {"key": "f", "type": "float64", "value": 0.5}],
                "logs": [{"timestamp": 5, "fields": [{"key": "event", "type": "string", "value": "cache miss"},
                                                     {"key": "key", "type": "string", "value": "k1"}]}]}

    trace = {"traceID": tid, "processes": {"p1": {"serviceName": "api", "tags": [
        {"key": "hostname", "type": "string", "value": "h1"}]}}, "spans": [
        span("00000000000000a1", [("FOLLOWS_FROM", tid, "00000000000000f1"), ("CHILD_OF", tid, "00000000000000c1")]),
        span("00000000000000a2", [("FOLLOWS_FROM", other, "00000000000000e1"), ("FOLLOWS_FROM", tid, "00000000000000f2")]),
        span("00000000000000a3", [("CHILD_OF", other, "00000000000000e2")]),
    ]}
    got = {s.span_id: s for s in convert_traces([trace], tid)}
    a1, a2, a3 = got["00000000000000a1"], got["00000000000000a2"], got["00000000000000a3"]
    assert a1.parent_span_id == "00000000000000c1" and [ln.span_id for ln in a1.links] == ["00000000000000f1"]
    assert a2.parent_span_id == "00000000000000f2" and [(ln.trace_id, ln.span_id) for ln in a2.links] == [
        (other, "00000000000000e1")]
    assert a3.parent_span_id is None and a3.links[0].attributes["jaeger.ref_type"] == "CHILD_OF"
    assert a1.status_code is StatusCode.OK and a1.attributes == {"n": 7, "f": 0.5}
    assert a1.resource == {"hostname": "h1", "service.name": "api"} and a1.service == "api"
    assert [(e.name, e.time_ns, dict(e.attributes)) for e in a1.events] == [("cache miss", 5000, {"key": "k1"})]


@pytest.mark.parametrize("scopes_key", ["scopeSpans", "instrumentationLibrarySpans"])
def test_tempo_v1_batches(scopes_key: str) -> None:
    scope_key = "scope" if scopes_key == "scopeSpans" else "instrumentationLibrary"
    doc = {"batches": [{"resource": RESOURCE, scopes_key: [{scope_key: {"name": "net/http"}, "spans": [TEMPO_SPAN]}]}]}
    [span] = decode_pulled(json.loads(json.dumps(doc)), TID)
    assert (span.span_id, span.parent_span_id) == ("eeff0f51005df303", "0000000000000001")
    assert (span.kind, span.status_code, span.status_message) == (SpanKind.SERVER, StatusCode.ERROR, "boom")
    assert span.attributes == {"http.status_code": 500, "retry": True}
    assert span.events[0].attributes == {"exception.type": "ValueError"} and span.scope == "net/http"
    assert [(ln.trace_id, ln.span_id) for ln in span.links] == [("0" * 31 + "1", "0" * 15 + "2")]


def test_tempo_v2_envelope_and_protobuf_status() -> None:
    doc = {"trace": {"resourceSpans": [{"resource": RESOURCE, "scopeSpans": [{"spans": [TEMPO_SPAN]}]}]},
           "metrics": {"inspectedBytes": "300"}, "status": "PARTIAL", "message": "trace exceeds max size"}
    [span] = decode_pulled(doc["trace"], TID)
    assert span.service == "frontend"
    trace, status = trace_field(trace_by_id_response(b"\x0a\x00", partial=True, message="cut"))
    assert (trace, status) == (b"\x0a\x00", 1)
    with pytest.raises(TempoApiError, match="truncated"):
        trace_field(b"\x0a\x05ab")
