"""Shared by the Jaeger/Tempo source tests and the benchmark: sample traces, emulator flavours, sources."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from tracecanary.assertions.spans import Span, SpanEvent, SpanKind, SpanLink, StatusCode
from tracecanary.daemon.spans.jaeger import JaegerTraceSource
from tracecanary.daemon.spans.otlp_encode import encode_request
from tracecanary.daemon.spans.pull import PolledSource
from tracecanary.daemon.spans.tempo import TempoTraceSource
from tracecanary.demo.emulators.jaeger import JaegerEmulator
from tracecanary.demo.emulators.tempo import TempoEmulator
from tracecanary.demo.emulators.trace_backend import TraceBackendEmulator
from tracecanary.integrations import JaegerIntegration, TempoIntegration


@dataclass(frozen=True)
class Flavour:
    """One backend release/config: how to build its emulator and the source's integration."""

    name: str
    backend: str  # jaeger | tempo
    options: dict[str, Any]
    integration: dict[str, Any]

    def emulator(self, **extra: Any) -> TraceBackendEmulator:
        if self.backend == "jaeger":
            return JaegerEmulator(**{**self.options, **extra})
        return TempoEmulator(**{**self.options, **extra})

    def source(self, session: aiohttp.ClientSession, url: str, **timing: float) -> PolledSource:
        timing = {"poll_initial_s": 0.02, "poll_max_s": 0.1, "max_retry_after_s": 0.2, **timing}
        if self.backend == "jaeger":
            return JaegerTraceSource(session, JaegerIntegration(url=url, **self.integration), **timing)
        return TempoTraceSource(session, TempoIntegration(url=url, **self.integration), **timing)

    def tenant(self) -> str:
        return str(self.integration.get("tenant") or "")


FLAVOURS = [
    Flavour("jaeger-v3", "jaeger", {"api_v3": "current"}, {}),
    Flavour("jaeger-v3-grpc-gateway", "jaeger", {"api_v3": "grpc-gateway"}, {}),
    Flavour("jaeger-v1-only", "jaeger", {"api_v3": "absent"}, {}),
    Flavour("tempo-v2-json", "tempo", {}, {}),
    Flavour("tempo-v2-protobuf", "tempo", {}, {"format": "protobuf"}),
    Flavour("tempo-1x-json", "tempo", {"version": "1.x"}, {}),
    Flavour("tempo-1x-protobuf", "tempo", {"version": "1.x"}, {"format": "protobuf"}),
    Flavour("tempo-multitenant", "tempo", {"multitenant": True}, {"tenant": "team-a"}),
]


def sample_trace(trace_id: str | None = None, *, extra_children: int = 0, error: bool = False) -> list[Span]:
    """A checkout: server root → client call (with an event and typed attributes) and a producer that
    links to another trace; ``extra_children`` more internal spans under the root."""
    tid = trace_id or secrets.token_hex(16)
    now = time.time_ns()
    root_id, call_id, pub_id = secrets.token_hex(8), secrets.token_hex(8), secrets.token_hex(8)
    shop = {"service.name": "shop", "host.name": "web-1"}
    spans = [
        Span(tid, root_id, None, "POST /checkout", SpanKind.SERVER, now, now + 90_000_000, "shop",
             {"http.request.method": "POST", "http.response.status_code": 200, "sampled": True, "ratio": 0.25},
             shop, scope="shop.http"),
        Span(tid, call_id, root_id, "charge-card", SpanKind.CLIENT, now + 1_000_000, now + 40_000_000, "payments",
             {"card.last4": "4242", "amount_cents": 1999},
             {"service.name": "payments"},
             events=(SpanEvent("retry", now + 2_000_000, {"attempt": 2}),),
             status_code=StatusCode.ERROR if error else StatusCode.OK,
             status_message="card declined" if error else "", scope="payments"),
        Span(tid, pub_id, root_id, "orders publish", SpanKind.PRODUCER, now + 41_000_000, now + 45_000_000, "shop",
             {"messaging.system": "kafka"}, shop,
             links=(SpanLink(secrets.token_hex(16), secrets.token_hex(8)),), scope="shop.http"),
    ]
    spans += [Span(tid, secrets.token_hex(8), root_id, f"step-{i}", SpanKind.INTERNAL, now + 46_000_000 + i * 1000,
                   now + 46_000_000 + i * 1000 + 500, "shop", {"i": i}, shop, scope="shop.http")
              for i in range(extra_children)]
    return spans


@asynccontextmanager
async def backend(flavour: Flavour, **extra: Any) -> AsyncIterator[TraceBackendEmulator]:
    emulator = flavour.emulator(**extra)
    async with emulator:
        yield emulator


def ingest(emulator: TraceBackendEmulator, spans: list[Span], tenant: str = "") -> None:
    emulator.ingest(encode_request(spans), tenant)


def comparable(span: Span) -> tuple[Any, ...]:
    """What a pull source must carry over exactly (attributes with their types)."""
    return (span.trace_id, span.span_id, span.parent_span_id, span.name, span.kind, span.start_ns // 1000,
            span.end_ns // 1000, span.service, sorted((k, type(v).__name__, v) for k, v in span.attributes.items()),
            span.status_code, span.status_message, span.scope,
            [(e.name, e.time_ns // 1000, dict(e.attributes)) for e in span.events])
