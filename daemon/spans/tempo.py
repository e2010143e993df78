"""Pull a trace from Grafana Tempo's query frontend (``expect.trace.source: tempo``).

Each fetch asks ``GET {url}/api/v2/traces/{trace_id}`` (``TraceByIDResponse``), then
``GET {url}/api/traces/{trace_id}`` (``tempopb.Trace``), and uses whichever returns the trace; 404 (or
an empty trace) from both means "not there yet". Once v1 has answered while v2 said 404 (a Tempo before
2.5 has no v2), v1 alone is asked. ``integrations.tempo.format`` picks the body by ``Accept``:
``application/json`` (gogo jsonpb, see ``otlp_pulled.py``) or ``application/protobuf``. A multi-tenant
Tempo gets the tenant as ``X-Scope-OrgID``. Polling is ``pull.poll_trace``, shared with Sentry and Jaeger.

Protobuf: ``tempopb.Trace`` is ``repeated ResourceSpans = 1`` — the wire format of OTLP's ``TracesData``
(old ``instrumentation_library_spans`` shares field 2 with ``scope_spans``), so the OTLP decoder reads it;
``TraceByIDResponse`` is ``{Trace trace = 1; TraceByIDMetrics metrics = 2; PartialStatus status = 3;
string message = 4}`` (``pkg/tempopb/tempo.proto``), whose field 1 is cut out here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp

from tracecanary.assertions.spans import Span
from tracecanary.daemon.spans import pull
from tracecanary.daemon.spans.model import OtlpDecodeError
from tracecanary.daemon.spans.otlp import decode_protobuf
from tracecanary.daemon.spans.otlp_pulled import decode_pulled
from tracecanary.integrations import TempoIntegration

log = logging.getLogger("tracecanary.spans.tempo")

ACCEPT = {"json": "application/json", "protobuf": "application/protobuf"}


class TempoApiError(pull.PullApiError):
    """Tempo answered with an error (or not at all)."""


class TempoAuthError(TempoApiError, pull.PullAuthError):
    """401/403 from Tempo (or the gateway in front of it)."""


class TempoRateLimitedError(TempoApiError, pull.PullRateLimitedError):
    """429 from Tempo (or the gateway in front of it)."""


_ERRORS = pull.ErrorKinds(api=TempoApiError, auth=TempoAuthError, rate_limited=TempoRateLimitedError)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise TempoApiError("truncated protobuf varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def trace_field(body: bytes) -> tuple[bytes, int]:
    """(field 1 ``trace`` bytes, field 3 ``status``) of a protobuf ``TraceByIDResponse``."""
    pos, trace, status = 0, b"", 0
    while pos < len(body):
        key, pos = _varint(body, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(body, pos)
            if field == 3:
                status = value
        elif wire == 2:
            size, pos = _varint(body, pos)
            if field == 1:
                trace += body[pos:pos + size]  # repeated occurrences of a message field merge
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise TempoApiError(f"unexpected protobuf wire type {wire}")
    if pos != len(body):
        raise TempoApiError("truncated protobuf message")
    return trace, status


class TempoTraceSource(pull.VersionedSource):
    """Fetch and poll traces from a Tempo query frontend through one aiohttp session."""

    name = "tempo"
    newer_api = "/api/v2/traces"

    def __init__(self, session: aiohttp.ClientSession, integration: TempoIntegration, **timing_s: float) -> None:
        """``timing_s``: ``poll_initial_s``, ``poll_max_s``, ``request_timeout_s``, ``max_retry_after_s``."""
        if not integration.url:
            raise TempoApiError("integrations.tempo needs url (the query frontend, e.g. http://tempo:3200)")
        headers = {"Accept": ACCEPT[integration.format], **integration.headers}
        if integration.tenant:
            headers["X-Scope-OrgID"] = integration.tenant
        super().__init__(session, integration.url, headers, _ERRORS, window_slack_s=integration.query_window,
                         **timing_s)
        self.partial = False
        """Whether the last v2 answer said PARTIAL (Tempo cut the trace: size limit or pruning)."""

    def window_params(self, window: pull.Window | None, *, newer: bool) -> list[tuple[str, str]]:
        """``start``/``end`` in unix seconds on both APIs (Tempo then searches only the blocks of that time,
        and the ingesters when the window reaches the present)."""
        if window is None:
            return []
        return [("start", str(window.start_ns // 1_000_000_000)), ("end", str(-(-window.end_ns // 1_000_000_000)))]

    async def fetch_newer(self, trace_id: str, params: list[tuple[str, str]]) -> list[Span]:
        """``/api/v2/traces/{id}`` (``TraceByIDResponse``)."""
        return await self._fetch(f"/api/v2/traces/{trace_id}", params, trace_id, v2=True)

    async def fetch_older(self, trace_id: str, params: list[tuple[str, str]]) -> list[Span]:
        """``/api/traces/{id}`` (``tempopb.Trace``)."""
        return await self._fetch(f"/api/traces/{trace_id}", params, trace_id, v2=False)

    async def _fetch(self, path: str, params: list[tuple[str, str]], trace_id: str, *, v2: bool) -> list[Span]:
        reply = await self._http.get(path, params, passed=(404,))
        if reply.status == 404 or not reply.body.strip():
            return []
        try:
            if "protobuf" in reply.content_type:
                return self._protobuf(reply, trace_id, v2=v2)
            return self._json(reply, path, trace_id, v2=v2)
        except (OtlpDecodeError, ValueError, TypeError, AttributeError) as e:
            raise TempoApiError(f"GET {path}: unreadable trace: {e}", reply.status) from e

    def _protobuf(self, reply: pull.Reply, trace_id: str, *, v2: bool) -> list[Span]:
        body = reply.body
        if v2:
            body, status = trace_field(body)
            self.partial = status == 1
        return [s for s in decode_protobuf(body).spans if s.trace_id == trace_id]

    def _json(self, reply: pull.Reply, path: str, trace_id: str, *, v2: bool) -> list[Span]:
        doc = reply.json(f"GET {path}", _ERRORS)
        if not isinstance(doc, Mapping):
            raise TempoApiError(f"GET {path}: expected an object, got {type(doc).__name__}")
        if v2:
            self.partial = doc.get("status") in ("PARTIAL", 1)
            if self.partial:
                log.info("tempo returned a partial trace trace_id=%s message=%s", trace_id, doc.get("message", ""))
            doc = doc.get("trace") or {}
            if not isinstance(doc, Mapping):
                raise TempoApiError(f"GET {path}: trace is {type(doc).__name__}, not an object")
        return decode_pulled(doc, trace_id)


__all__ = ["ACCEPT", "TempoApiError", "TempoAuthError", "TempoRateLimitedError", "TempoTraceSource", "trace_field"]
