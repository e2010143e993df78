"""The daemon's own OpenTelemetry tracing: an explicit TracerProvider (never the global one).

- ``setup_telemetry`` builds the provider and, when an endpoint is configured, an OTLP exporter —
  unless the endpoint is one of our own receiver addresses: exporting our spans to ourselves would
  judge them, trace the judging, export that, and so on (a feedback loop), so it is refused.
- ``add_span_sink`` lets the runner put every span it ends (probe root spans, client spans) straight
  into the trace buffer, converted by ``otel_span_to_span``, so the judged tree has no false orphan.
- ``TraceContextFilter`` stamps log records with the current ``trace_id``/``span_id``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from tracecanary.assertions.spans import AttrValue, Span, SpanEvent, SpanKind, SpanLink, StatusCode
from tracecanary.daemon.run.ids import MintingIdGenerator

log = logging.getLogger("tracecanary.telemetry")

_WILDCARDS = {"", "0.0.0.0", "::", "*"}
EXPORT_TIMEOUT_S = 10.0
"""Deadline of one OTLP export request."""


def setup_telemetry(
    otlp_endpoint: str | None,
    *,
    service_name: str = "tracecanary",
    own_receiver_addrs: Iterable[str] = (),
) -> TracerProvider:
    """A TracerProvider for the daemon's own spans, exporting over OTLP when ``otlp_endpoint`` is set.

    ``otlp_endpoint``: ``http(s)://host:port`` (OTLP/HTTP; ``/v1/traces`` is appended when the URL has
    no path, as with ``OTEL_EXPORTER_OTLP_ENDPOINT``) or ``grpc://host:port`` (OTLP/gRPC, plaintext).
    An endpoint matching one of ``own_receiver_addrs`` (``host:port``) is ignored with a warning.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), id_generator=MintingIdGenerator())
    if not otlp_endpoint:
        return provider
    own = [a for a in own_receiver_addrs if a]
    if is_own_endpoint(otlp_endpoint, own):
        log.warning("telemetry.export_refused endpoint=%s reason=feedback_loop own_receivers=%s",
                    otlp_endpoint, ",".join(own))
        return provider
    provider.add_span_processor(BatchSpanProcessor(_exporter(otlp_endpoint, EXPORT_TIMEOUT_S)))
    log.info("telemetry.export endpoint=%s service=%s", otlp_endpoint, service_name)
    return provider


def _exporter(endpoint: str, timeout_s: float) -> SpanExporter:
    parts = urlsplit(endpoint)
    if parts.scheme == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=parts.netloc, insecure=True, timeout=int(timeout_s))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    url = endpoint if parts.path not in ("", "/") else endpoint.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=url, timeout=timeout_s)


def _host_port(addr: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(addr if "://" in addr else f"//{addr}")
    return (parts.hostname or "").lower(), parts.port or default_port


def _is_local(host: str) -> bool:
    if host in ("localhost", socket.gethostname().lower(), socket.getfqdn().lower()):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def is_own_endpoint(endpoint: str, own_receiver_addrs: Iterable[str]) -> bool:
    """True when ``endpoint`` would reach one of our own receivers (same port on this host)."""
    scheme = urlsplit(endpoint).scheme
    host, port = _host_port(endpoint, {"https": 443, "grpc": 4317}.get(scheme, 4318))
    for addr in own_receiver_addrs:
        own_host, own_port = _host_port(addr, 4318)
        if own_port != port:
            continue
        if own_host == host or (own_host in _WILDCARDS and _is_local(host)) or (_is_local(own_host) and _is_local(host)):
            return True
    return False


class _SinkProcessor(SpanProcessor):
    def __init__(self, sink: Callable[[ReadableSpan], None]) -> None:
        self._sink = sink

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        try:
            self._sink(span)
        except Exception:  # a sink must never break the code that ended the span
            log.exception("telemetry.sink_failed span=%s", span.name)


def add_span_sink(provider: TracerProvider, sink: Callable[[ReadableSpan], None]) -> None:
    """Call ``sink`` synchronously with every span the provider ends (keep it quick: no I/O)."""
    provider.add_span_processor(_SinkProcessor(sink))


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _attrs(values: Mapping[str, Any] | None) -> dict[str, AttrValue]:
    """Attribute maps of the shared model: sequences become tuples (hashable, immutable)."""
    out: dict[str, AttrValue] = {}
    for key, value in (values or {}).items():
        if isinstance(value, list | tuple):
            out[key] = tuple(value)
        elif isinstance(value, Mapping):
            out[key] = dict(value)
        else:
            out[key] = value
    return out


def otel_span_to_span(rs: ReadableSpan) -> Span:
    """Convert an SDK span to the shared model (hex ids, OTLP kind/status numbers, ns times)."""
    ctx = rs.get_span_context()
    if ctx is None:  # pragma: no cover - SDK spans always carry a context
        raise ValueError(f"span {rs.name!r} has no context")
    resource = _attrs(rs.resource.attributes if rs.resource is not None else None)
    start_ns = rs.start_time or 0
    return Span(
        trace_id=_hex(ctx.trace_id, 32),
        span_id=_hex(ctx.span_id, 16),
        parent_span_id=_hex(rs.parent.span_id, 16) if rs.parent is not None and rs.parent.is_valid else None,
        name=rs.name,
        kind=SpanKind[rs.kind.name],
        start_ns=start_ns,
        end_ns=rs.end_time or start_ns,
        service=str(resource.get("service.name", "")),
        attributes=_attrs(rs.attributes),
        resource=resource,
        events=tuple(SpanEvent(e.name, e.timestamp, _attrs(e.attributes)) for e in rs.events),
        links=tuple(SpanLink(_hex(link.context.trace_id, 32), _hex(link.context.span_id, 16),
                             _attrs(link.attributes)) for link in rs.links),
        status_code=StatusCode[rs.status.status_code.name],
        status_message=rs.status.description or "",
        scope=rs.instrumentation_scope.name if rs.instrumentation_scope is not None else "",
    )


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` (hex, or empty) of the current OTel span to each record.

    Attach it to handlers (``handler.addFilter``) so records from every ``tracecanary.*`` logger get
    the fields; use them in the format, e.g. ``… %(message)s trace_id=%(trace_id)s``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = otel_trace.get_current_span().get_span_context()
        record.trace_id = _hex(ctx.trace_id, 32) if ctx.is_valid else ""
        record.span_id = _hex(ctx.span_id, 16) if ctx.is_valid else ""
        return True
