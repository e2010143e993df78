"""A Jaeger query service emulator: OTLP in, Jaeger's query APIs out.

Routes and the shapes they serve (each from jaegertracing/jaeger's own source):

- ``GET /api/traces/{trace_id}`` — the JSON model of ``internal/uimodel/model.go`` in the envelope of
  ``cmd/jaeger/internal/extension/jaegerquery/internal/http_handler.go`` (``structuredResponse``:
  ``data``, ``total``, ``limit``, ``offset``, ``errors``); 404 ``errors: [{code: 404, msg: "trace not found"}]``.
  Spans come out as the OpenTelemetry → Jaeger translation writes them: parent as a ``CHILD_OF``
  reference, links as ``FOLLOWS_FROM``, ``span.kind``, ``otel.status_code`` + ``error``,
  ``otel.status_description``, ``otel.scope.name``/``version`` tags, events as logs with an ``event``
  field, processes ``p1``, ``p2``… A trace id whose high 64 bits are zero is written in 16 hex characters
  (Jaeger's ``TraceID.String``).
- ``GET /api/v3/traces/{trace_id}``, by ``api_v3``:
  ``"current"`` — ``apiv3/http_gateway.go``: ``{"result": <OTLP/JSON>}`` (hex ids, integer enums, int64 as
  strings); 404 ``{"error": {"httpCode": 404, "message": …}}``.
  ``"grpc-gateway"`` — before v1.53 (``cmd/query/app/apiv3``, snapshot ``GetTrace.json`` of that era):
  protojson (base64 ids, enum names), ``instrumentationLibrarySpans``, streamed as one ``{"result": …}``
  object per resource.
  ``"absent"`` — a query service without api_v3: 404.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from tracecanary.demo.emulators.trace_backend import Stored, TraceBackendEmulator, library_spans, query_window

ApiV3 = Literal["current", "grpc-gateway", "absent"]
_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _tag(key: str, value: Any) -> dict[str, Any]:
    """An OTLP AnyValue (as protojson) → a typed Jaeger tag."""
    if "boolValue" in value:
        return {"key": key, "type": "bool", "value": bool(value["boolValue"])}
    if "intValue" in value:
        return {"key": key, "type": "int64", "value": int(value["intValue"])}
    if "doubleValue" in value:
        return {"key": key, "type": "float64", "value": float(value["doubleValue"])}
    if "bytesValue" in value:
        return {"key": key, "type": "binary", "value": value["bytesValue"]}
    if "stringValue" in value:
        return {"key": key, "type": "string", "value": value["stringValue"]}
    return {"key": key, "type": "string", "value": json.dumps(value, sort_keys=True)}


def _tags(attrs: Iterable[Any]) -> list[dict[str, Any]]:
    return [_tag(a["key"], a.get("value", {})) for a in attrs]


def jaeger_trace_id(raw: bytes) -> str:
    """Jaeger's ``TraceID.String``: 16 hex characters when the high half is zero, else 32."""
    return raw[8:].hex() if raw[:8] == bytes(8) else raw.hex()


def _b64hex(value: str) -> str:
    return base64.b64decode(value).hex() if value else ""


def _span(s: Stored, process_id: str) -> dict[str, Any]:
    sp = MessageToDict(s.span)
    tags = _tags(sp.get("attributes", []))
    kind = _KINDS.get(int(s.span.kind))
    if kind:
        tags.append({"key": "span.kind", "type": "string", "value": kind})
    code = int(s.span.status.code)
    if code:
        tags.append({"key": "otel.status_code", "type": "string", "value": "ERROR" if code == 2 else "OK"})
    if code == 2:
        tags.append({"key": "error", "type": "bool", "value": True})
    if s.span.status.message:
        tags.append({"key": "otel.status_description", "type": "string", "value": s.span.status.message})
    if s.scope.name:
        tags.append({"key": "otel.scope.name", "type": "string", "value": s.scope.name})
    if s.scope.version:
        tags.append({"key": "otel.scope.version", "type": "string", "value": s.scope.version})
    trace_id = jaeger_trace_id(s.span.trace_id)
    refs = []
    if s.span.parent_span_id:
        refs.append({"refType": "CHILD_OF", "traceID": trace_id, "spanID": s.span.parent_span_id.hex()})
    refs += [{"refType": "FOLLOWS_FROM", "traceID": jaeger_trace_id(ln.trace_id), "spanID": ln.span_id.hex()}
             for ln in s.span.links]
    logs = [{"timestamp": int(ev.get("timeUnixNano", 0)) // 1000,
             "fields": [{"key": "event", "type": "string", "value": ev.get("name", "")},
                        *_tags(ev.get("attributes", []))]} for ev in sp.get("events", [])]
    start_us = s.span.start_time_unix_nano // 1000
    return {
        "traceID": trace_id, "spanID": s.span.span_id.hex(), "operationName": s.span.name, "references": refs,
        "startTime": start_us, "duration": max(0, s.span.end_time_unix_nano // 1000 - start_us),
        "tags": tags, "logs": logs, "processID": process_id, "warnings": None,
    }


def v1_trace(stored: list[Stored]) -> dict[str, Any]:
    """One trace in Jaeger's JSON model (``data[0]`` of ``/api/traces/{id}``)."""
    processes: dict[str, dict[str, Any]] = {}
    ids: dict[bytes, str] = {}
    spans = []
    for s in stored:
        key = s.resource.SerializeToString(deterministic=True)
        if key not in ids:
            ids[key] = f"p{len(ids) + 1}"
            attrs = MessageToDict(s.resource).get("attributes", [])
            service = next((a["value"].get("stringValue", "") for a in attrs if a["key"] == "service.name"), "")
            processes[ids[key]] = {"serviceName": service,
                                   "tags": _tags(a for a in attrs if a["key"] != "service.name")}
        spans.append(_span(s, ids[key]))
    return {"traceID": jaeger_trace_id(stored[0].span.trace_id), "spans": spans, "processes": processes,
            "warnings": None}


def _hex_ids(obj: dict[str, Any]) -> None:
    for key in ("traceId", "spanId", "parentSpanId"):
        if obj.get(key):
            obj[key] = _b64hex(obj[key])


def otlp_json(message: TracesData, *, legacy: bool) -> dict[str, Any]:
    """``TracesData`` as api_v3 writes it: the Collector's OTLP/JSON (hex ids, integer enums), or
    (``legacy``) grpc-gateway protojson of 2021's OTLP (base64 ids, enum names, instrumentationLibrarySpans)."""
    doc: dict[str, Any] = MessageToDict(message, use_integers_for_enums=not legacy)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for sp in ss.get("spans", []):
                if not legacy:
                    _hex_ids(sp)
                    for ln in sp.get("links", []):
                        _hex_ids(ln)
    if legacy:
        library_spans(doc)
    return doc


class JaegerEmulator(TraceBackendEmulator):
    """Jaeger's query service (and its OTLP receiver) for tests, the demo and benchmarks."""

    label = "jaeger"

    def __init__(self, *, api_v3: ApiV3 = "current", ingest_delay_s: float = 0.0, max_spans: int = 1_000_000) -> None:
        super().__init__(ingest_delay_s=ingest_delay_s, max_spans=max_spans)
        self.api_v3: ApiV3 = api_v3

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/traces/{trace_id}", self._v1), web.get("/api/v3/traces/{trace_id}", self._v3)]

    @staticmethod
    def _trace_id(request: web.Request) -> str:
        return request.match_info["trace_id"].lower().rjust(32, "0")

    async def _v1(self, request: web.Request) -> web.Response:
        try:  # api/traces/{id}?start=&end= in unix microseconds (http_handler.go parseGetTraceParameters)
            window = query_window(request, "start", "end", lambda v: int(v) * 1000)
        except ValueError as e:
            return web.json_response({"data": None, "total": 0, "limit": 0, "offset": 0,
                                      "errors": [{"code": 400, "msg": str(e)}]}, status=400)
        stored = self.visible(self._trace_id(request), window_ns=window)
        if not stored:
            body = {"data": None, "total": 0, "limit": 0, "offset": 0,
                    "errors": [{"code": 404, "msg": "trace not found"}]}
            return web.json_response(body, status=404)
        return web.json_response({"data": [v1_trace(stored)], "total": 0, "limit": 0, "offset": 0, "errors": None})

    async def _v3(self, request: web.Request) -> web.StreamResponse:
        if self.api_v3 == "absent":
            return web.Response(status=404, text="404 page not found")
        legacy = self.api_v3 == "grpc-gateway"
        try:  # api_v3 getTrace reads start_time/end_time as RFC 3339 (Jaeger 1.6x+; the grpc-gateway ignored them)
            window = None if legacy else query_window(request, "start_time", "end_time", _rfc3339_ns)
        except ValueError as e:
            return web.json_response({"error": {"httpCode": 400, "message": str(e)}}, status=400)
        stored = self.visible(self._trace_id(request), window_ns=window)
        if not stored:
            error = {"grpcCode": 5, "httpCode": 404, "message": "trace not found", "httpStatus": "Not Found"} \
                if legacy else {"httpCode": 404, "message": "No traces found"}
            return web.json_response({"error": error}, status=404)
        batches = self.resource_spans(stored)
        if not legacy:
            return web.json_response({"result": otlp_json(TracesData(resource_spans=batches), legacy=False)})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for rs in batches:  # grpc-gateway streams one object per message the server sent
            chunk = {"result": otlp_json(TracesData(resource_spans=[rs]), legacy=True)}
            await response.write(json.dumps(chunk).encode() + b"\n")
        await response.write_eof()
        return response


def _rfc3339_ns(value: str) -> int:
    whole, _, rest = value.partition(".")
    fraction = rest.rstrip("Z").split("+")[0] if rest else ""
    moment = datetime.fromisoformat(whole + ("+00:00" if value.endswith("Z") else ""))
    return int(moment.timestamp()) * 1_000_000_000 + int((fraction or "0").ljust(9, "0")[:9])


__all__ = ["ApiV3", "JaegerEmulator", "jaeger_trace_id", "otlp_json", "v1_trace"]
