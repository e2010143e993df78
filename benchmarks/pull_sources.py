"""Jaeger and Tempo pull-source figures: spans/s converted, per shape, and per fetch over loopback HTTP.

- conversion alone: a ``--spans``-span trace as each backend writes it (the emulators' renderers), parsed
  and converted into Span objects, ``--rounds`` times — Jaeger's JSON model (``/api/traces``), api_v3
  today (hex ids) and under grpc-gateway (base64 ids, enum names), Tempo v1 ``batches`` JSON, v2 JSON,
  and protobuf;
- fetch: ``source.fetch(trace_id)`` against the in-process emulator (HTTP request, body read, convert);
  the emulator renders in this process too, so these figures include the backend's side.

Rates are given by CPU time of this process (steady when other work shares the machine) and by wall time.

    python benchmarks/pull_sources.py            # 1,000-span trace, 20 rounds
    python benchmarks/pull_sources.py --quick
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import time
from collections.abc import Callable

import aiohttp
import anyio
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from tracecanary.assertions.spans import Span, SpanEvent, SpanKind
from tracecanary.daemon.spans.jaeger import JaegerTraceSource
from tracecanary.daemon.spans.jaeger_convert import convert_traces
from tracecanary.daemon.spans.otlp import decode_protobuf
from tracecanary.daemon.spans.otlp_encode import encode_request
from tracecanary.daemon.spans.otlp_pulled import decode_pulled
from tracecanary.daemon.spans.pull import PolledSource
from tracecanary.daemon.spans.tempo import TempoTraceSource
from tracecanary.demo.emulators.jaeger import JaegerEmulator, otlp_json, v1_trace
from tracecanary.demo.emulators.tempo import TempoEmulator, tempo_json
from tracecanary.demo.emulators.trace_backend import TraceBackendEmulator
from tracecanary.integrations import JaegerIntegration, TempoIntegration


def make_trace(count: int) -> list[Span]:
    """A root with ``count - 1`` children across 4 services, 6 typed attributes and an event each."""
    tid, now = secrets.token_hex(16), time.time_ns()
    root = secrets.token_hex(8)
    spans = [Span(tid, root, None, "POST /checkout", SpanKind.SERVER, now, now + 10**9, "shop",
                  {"http.request.method": "POST"}, {"service.name": "shop"})]
    for i in range(count - 1):
        service = f"svc-{i % 4}"
        spans.append(Span(tid, secrets.token_hex(8), root, f"step {i}", SpanKind.CLIENT, now + i * 1000,
                          now + i * 1000 + 500, service,
                          {"i": i, "ok": True, "ratio": i / 3, "db.system": "postgresql", "peer": "db-1", "n": "x" * 16},
                          {"service.name": service}, events=(SpanEvent("retry", now + i * 1000 + 1, {"attempt": 1}),)))
    return spans


def _rate(label: str, spans: int, wall_s: list[float], cpu_s: list[float]) -> None:
    """Spans/s by CPU time of this process (steady on a shared machine) and by wall time."""
    cpu, wall = statistics.median(cpu_s), statistics.median(wall_s)
    print(f"{label:<36} {spans / cpu:>9,.0f} spans/s cpu  {spans / wall:>9,.0f} spans/s wall  "
          f"(median {wall * 1e3:7.1f} ms wall per {spans}-span trace)")


def _timed(times: tuple[list[float], list[float]], start: tuple[float, float]) -> None:
    times[0].append(time.perf_counter() - start[0])
    times[1].append(time.process_time() - start[1])


def bench_conversion(spans: list[Span], rounds: int) -> None:
    jaeger, tempo = JaegerEmulator(), TempoEmulator()
    tid = spans[0].trace_id
    for e in (jaeger, tempo):
        e.ingest(encode_request(spans))
    stored = jaeger.visible(tid)
    message = TracesData(resource_spans=jaeger.resource_spans(stored))
    bodies: dict[str, tuple[bytes, Callable[[bytes], list[Span]]]] = {
        "jaeger /api/traces (JSON model)": (json.dumps({"data": [v1_trace(stored)]}).encode(),
                                            lambda b: convert_traces(json.loads(b)["data"], tid)),
        "jaeger api_v3 (OTLP/JSON, hex)": (json.dumps({"result": otlp_json(message, legacy=False)}).encode(),
                                           lambda b: decode_pulled(json.loads(b)["result"], tid)),
        "jaeger api_v3 grpc-gateway (b64)": (json.dumps({"result": otlp_json(message, legacy=True)}).encode(),
                                             lambda b: decode_pulled(json.loads(b)["result"], tid)),
        "tempo /api/traces (batches JSON)": (json.dumps({"batches": tempo_json(message, version="2.x")["resourceSpans"]}).encode(),
                                             lambda b: decode_pulled(json.loads(b), tid)),
        "tempo /api/v2/traces (JSON)": (json.dumps({"trace": tempo_json(message, version="2.x")}).encode(),
                                        lambda b: decode_pulled(json.loads(b)["trace"], tid)),
        "tempo protobuf": (message.SerializeToString(), lambda b: decode_protobuf(b).spans),
    }
    print(f"conversion (parse + convert), {len(spans)} spans, {rounds} rounds:")
    for label, (body, convert) in bodies.items():
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(rounds):
            start = (time.perf_counter(), time.process_time())
            got = convert(body)
            _timed(times, start)
        assert len(got) == len(spans), (label, len(got))
        _rate(f"  {label}", len(spans), *times)


async def bench_fetch(spans: list[Span], rounds: int) -> None:
    print(f"fetch over loopback HTTP (emulator render + request + read + convert), {len(spans)} spans, {rounds} rounds:")
    cases: list[tuple[str, TraceBackendEmulator, Callable[[aiohttp.ClientSession, str], PolledSource]]] = [
        ("  jaeger (api_v3)", JaegerEmulator(), lambda s, u: JaegerTraceSource(s, JaegerIntegration(url=u))),
        ("  jaeger (api/traces only)", JaegerEmulator(api_v3="absent"),
         lambda s, u: JaegerTraceSource(s, JaegerIntegration(url=u))),
        ("  tempo (v2 JSON)", TempoEmulator(), lambda s, u: TempoTraceSource(s, TempoIntegration(url=u))),
        ("  tempo (v2 protobuf)", TempoEmulator(),
         lambda s, u: TempoTraceSource(s, TempoIntegration(url=u, format="protobuf"))),
    ]
    async with aiohttp.ClientSession() as session:
        for label, emulator, build in cases:
            async with emulator:
                emulator.ingest(encode_request(spans))
                source = build(session, emulator.base_url)
                await source.fetch(spans[0].trace_id)  # learn which API answers
                times: tuple[list[float], list[float]] = ([], [])
                for _ in range(rounds):
                    start = (time.perf_counter(), time.process_time())
                    got = await source.fetch(spans[0].trace_id)
                    _timed(times, start)
                assert len(got) == len(spans), (label, len(got))
                _rate(label, len(spans), *times)


def main(span_count: int = 1000, rounds: int = 20) -> None:
    spans = make_trace(span_count)
    bench_conversion(spans, rounds)
    anyio.run(bench_fetch, spans, rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="200 spans, 3 rounds (CI)")
    parser.add_argument("--spans", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    if args.quick:
        main(200, 3)
    else:
        main(args.spans, args.rounds)
