"""What the Jaeger and Tempo emulators share: OTLP ingestion, a span store, faults, and serving.

Both backends ingest OTLP (``POST /v1/traces``, protobuf ``ExportTraceServiceRequest``, as the Collector's
``otlphttp`` exporter sends) and answer trace-by-id queries in their own shapes. Spans are kept as the
OTLP protobuf messages they arrived as, each with its resource and scope, per tenant and trace id.

Faults, set through the constructor or methods (never globals): ``ingest_delay_s`` (a span becomes
visible that long after it arrived, as in a real backend's ingestion path), :meth:`throttle` (429 +
``Retry-After``), :meth:`fail` (5xx), and :meth:`hide` (spans of these names are never served: a span
that went missing in the pipeline).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, TracesData

from tracecanary.demo.emulators.serving import Served

log = logging.getLogger("tracecanary.demo.trace_backend")

MAX_BODY_BYTES = 64 << 20


@dataclass(frozen=True)
class Stored:
    """One span as it arrived, with its resource and scope (copied into each answer)."""

    visible_at_s: float
    resource: Any
    scope: Any
    span: Any


class TraceBackendEmulator(Served):
    """The common half of a trace backend emulator; subclasses add their query routes in :meth:`routes`."""

    label = "trace backend"

    def __init__(self, *, ingest_delay_s: float = 0.0, max_spans: int = 1_000_000) -> None:
        self.ingest_delay_s = ingest_delay_s
        self.max_spans = max_spans
        self._traces: dict[str, dict[str, list[Stored]]] = defaultdict(dict)
        self._count = 0
        self.hidden: set[str] = set()
        self.requests: list[tuple[str, dict[str, str]]] = []
        """Every query: (path with query string, the request's headers)."""
        self._throttle: tuple[int, int, float] = (0, 0, 0.0)
        self._failures: tuple[int, int] = (0, 503)

    # --- ingestion -------------------------------------------------------------------------------
    def ingest(self, request: ExportTraceServiceRequest | TracesData, tenant: str = "") -> int:
        """Store every span of an OTLP request; returns how many were kept (beyond ``max_spans``: none)."""
        visible_at_s = time.monotonic() + self.ingest_delay_s
        kept = 0
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    if self._count >= self.max_spans:
                        return kept
                    tid = span.trace_id.hex()
                    self._traces[tenant].setdefault(tid, []).append(Stored(visible_at_s, rs.resource, ss.scope, span))
                    self._count += 1
                    kept += 1
        return kept

    async def _ingest_route(self, request: web.Request) -> web.Response:
        if "protobuf" not in request.content_type:
            return web.Response(status=415, text="send OTLP protobuf (application/x-protobuf)")
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.ingest(message, self.tenant_of(request) or "")
        return web.Response(body=b"", content_type="application/x-protobuf")

    def tenant_of(self, request: web.Request) -> str | None:
        """The request's tenant (Tempo: ``X-Scope-OrgID``); the single-tenant default is ``""``."""
        return ""

    def visible(self, trace_id: str, tenant: str = "", window_ns: tuple[int, int] | None = None) -> list[Stored]:
        """The spans of ``trace_id`` a query sees now (ingested, past their delay, not hidden), and with a
        query's time window (unix ns) only those overlapping it, as a backend reads only that time's blocks."""
        now = time.monotonic()
        return [s for s in self._traces.get(tenant, {}).get(trace_id.lower(), ())
                if s.visible_at_s <= now and s.span.name not in self.hidden
                and (window_ns is None or (s.span.start_time_unix_nano <= window_ns[1]
                                           and s.span.end_time_unix_nano >= window_ns[0]))]

    def resource_spans(self, stored: list[Stored]) -> list[ResourceSpans]:
        """Stored spans regrouped as OTLP ``ResourceSpans`` (one per resource and scope, in arrival order)."""
        groups: dict[tuple[bytes, bytes], ResourceSpans] = {}
        for s in stored:
            key = (s.resource.SerializeToString(deterministic=True), s.scope.SerializeToString(deterministic=True))
            rs = groups.get(key)
            if rs is None:
                rs = groups[key] = ResourceSpans()
                rs.resource.CopyFrom(s.resource)
                rs.scope_spans.add().scope.CopyFrom(s.scope)
            rs.scope_spans[0].spans.add().CopyFrom(s.span)
        return list(groups.values())

    # --- faults -----------------------------------------------------------------------------------
    def throttle(self, requests: int, retry_after_s: float = 1.0, *, after: int = 0) -> None:
        """Let ``after`` queries through, then answer ``requests`` with 429 + ``Retry-After``."""
        self._throttle = (after, requests, retry_after_s)

    def fail(self, requests: int, status: int = 503) -> None:
        """Answer the next ``requests`` queries with ``status`` (a 5xx)."""
        self._failures = (requests, status)

    def hide(self, *names: str) -> None:
        """Never serve spans with these names (lost on the way to the backend)."""
        self.hidden.update(names)

    @web.middleware
    async def _faults(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/v1/traces":
            return await handler(request)  # type: ignore[no-any-return]
        self.requests.append((request.path_qs, dict(request.headers)))
        after, left, retry_after_s = self._throttle
        if after > 0:
            self._throttle = (after - 1, left, retry_after_s)
        elif left > 0:
            self._throttle = (0, left - 1, retry_after_s)
            return web.Response(status=429, text="rate limited", headers={"Retry-After": f"{retry_after_s:g}"})
        failures, status = self._failures
        if failures > 0:
            self._failures = (failures - 1, status)
            return web.Response(status=status, text="backend unavailable")
        return await handler(request)  # type: ignore[no-any-return]

    # --- serving ------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        """The backend's query routes."""
        raise NotImplementedError

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._faults])
        app.add_routes([web.post("/v1/traces", self._ingest_route), *self.routes()])
        return app


def library_spans(doc: dict[str, Any]) -> None:
    """Rewrite protojson ``scopeSpans``/``scope`` as the OTLP of 2021 had them (``instrumentationLibrarySpans``/
    ``instrumentationLibrary``), which Jaeger's grpc-gateway api_v3 and Tempo 1.x wrote."""
    for rs in doc.get("resourceSpans", []):
        rs["instrumentationLibrarySpans"] = [
            {"instrumentationLibrary": ss.get("scope", {}), "spans": ss.get("spans", [])}
            for ss in rs.pop("scopeSpans", [])]


def query_window(request: web.Request, start: str, end: str, parse: Callable[[str], int]) -> tuple[int, int] | None:
    """A query's (start, end) in unix ns from two optional parameters; ValueError names a malformed one."""
    bounds: list[int] = []
    for name, missing in ((start, 0), (end, 1 << 63)):
        raw = request.query.get(name)
        try:
            bounds.append(parse(raw) if raw else missing)
        except ValueError as e:
            raise ValueError(f"malformed parameter {name}: {e}") from e
    return None if bounds == [0, 1 << 63] else (bounds[0], bounds[1])


__all__ = ["Stored", "TraceBackendEmulator", "library_spans", "query_window"]
