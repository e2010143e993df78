"""A Grafana Tempo query frontend emulator: OTLP in, Tempo's trace-by-id APIs out.

Routes and the shapes they serve (from grafana/tempo's own source):

- ``GET /api/traces/{trace_id}`` — ``tempopb.Trace`` (``pkg/tempopb/tempo.proto``): with ``Accept:
  application/protobuf`` its protobuf, else gogo jsonpb with ``resourceSpans`` renamed ``batches``
  (``pkg/tempopb/trace_utils.go`` ``MarshalToJSONV1``): base64 ids, enum names (``SPAN_KIND_SERVER``,
  ``STATUS_CODE_ERROR``), int64 as strings. ``version="1.x"`` writes the OTLP of Tempo 1.x
  (``instrumentationLibrarySpans``/``instrumentationLibrary``).
- ``GET /api/v2/traces/{trace_id}`` — ``TraceByIDResponse {trace, metrics, status, message}``: JSON
  ``{"trace": {"resourceSpans": …}, "metrics": {…}}`` (``"status": "PARTIAL"`` when :attr:`partial`), or its
  protobuf. ``version="1.x"`` has no v2: 404.
- Not found: 404 with an empty body (``modules/frontend/combiner/trace_by_id.go``).

``multitenant=True``: ingestion and queries take the tenant from ``X-Scope-OrgID``; a query without it
gets 401 ``no org id`` as from Tempo with ``multitenancy_enabled``.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from tracecanary.demo.emulators.trace_backend import TraceBackendEmulator, library_spans, query_window

TempoVersion = Literal["2.x", "1.x"]
PROTOBUF = "application/protobuf"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def trace_by_id_response(trace: bytes, *, partial: bool, message: str = "") -> bytes:
    """A protobuf ``TraceByIDResponse``: field 1 the ``Trace``, 3 the status (PARTIAL = 1), 4 the message."""
    out = b"\x0a" + _varint(len(trace)) + trace
    if partial:
        out += b"\x18\x01"
        if message:
            text = message.encode()
            out += b"\x22" + _varint(len(text)) + text
    return out


def tempo_json(message: TracesData, *, version: TempoVersion) -> dict[str, Any]:
    """gogo jsonpb of a ``tempopb.Trace`` (``resourceSpans``), in the OTLP of that Tempo version."""
    doc: dict[str, Any] = MessageToDict(message)
    if version == "1.x":
        library_spans(doc)
    return doc


class TempoEmulator(TraceBackendEmulator):
    """Tempo's query frontend (and its OTLP distributor) for tests, the demo and benchmarks."""

    label = "tempo"

    def __init__(self, *, version: TempoVersion = "2.x", multitenant: bool = False, ingest_delay_s: float = 0.0,
                 max_spans: int = 1_000_000) -> None:
        super().__init__(ingest_delay_s=ingest_delay_s, max_spans=max_spans)
        self.version: TempoVersion = version
        self.multitenant = multitenant
        self.partial = False
        """Answer v2 with ``status: PARTIAL`` (Tempo cut the trace)."""

    def tenant_of(self, request: web.Request) -> str | None:
        if not self.multitenant:
            return ""
        return request.headers.get("X-Scope-OrgID") or None

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/traces/{trace_id}", self._v1), web.get("/api/v2/traces/{trace_id}", self._v2)]

    def _found(self, request: web.Request) -> TracesData | web.Response:
        tenant = self.tenant_of(request)
        if tenant is None:
            return web.Response(status=401, text="no org id")
        trace_id = request.match_info["trace_id"].lower().rjust(32, "0")
        try:  # start/end in unix seconds (Tempo's api docs: "Optional. Along with end define a time range")
            window = query_window(request, "start", "end", lambda v: int(v) * 1_000_000_000)
        except ValueError as e:
            return web.Response(status=400, text=str(e))
        if window is not None and window[0] > window[1]:
            return web.Response(status=400, text="http parameter start must be before end")
        if window is not None:  # Tempo's end is inclusive of its whole second
            window = (window[0], window[1] + 999_999_999)
        stored = self.visible(trace_id, tenant, window)
        if not stored:
            return web.Response(status=404)
        return TracesData(resource_spans=self.resource_spans(stored))

    async def _v1(self, request: web.Request) -> web.Response:
        found = self._found(request)
        if isinstance(found, web.Response):
            return found
        if PROTOBUF in request.headers.get("Accept", ""):
            return web.Response(body=found.SerializeToString(), content_type=PROTOBUF)
        doc = tempo_json(found, version=self.version)
        return web.json_response({"batches": doc.get("resourceSpans", [])})

    async def _v2(self, request: web.Request) -> web.Response:
        if self.version == "1.x":
            return web.Response(status=404, text="404 page not found")
        found = self._found(request)
        if isinstance(found, web.Response):
            return found
        message = "trace exceeds max size" if self.partial else ""
        if PROTOBUF in request.headers.get("Accept", ""):
            body = trace_by_id_response(found.SerializeToString(), partial=self.partial, message=message)
            return web.Response(body=body, content_type=PROTOBUF)
        doc: dict[str, Any] = {"trace": tempo_json(found, version=self.version),
                               "metrics": {"inspectedBytes": str(found.ByteSize())}}
        if self.partial:
            doc.update(status="PARTIAL", message=message)
        return web.json_response(doc)


__all__ = ["TempoEmulator", "TempoVersion", "tempo_json", "trace_by_id_response"]
