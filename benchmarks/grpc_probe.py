"""grpc probe figures: the .proto compile at config load, and the cost of one probe call over loopback.

- compile: ``compile_proto`` cold (protoc child process, descriptor set, private pool) and cached (a reload
  with the same proto text);
- load: one grpc probe validated from its config (compile cached, method lookup, request check);
- call: ``GrpcProbe.fire`` against an in-process ``grpc.aio`` server (a channel per run, trace metadata,
  JSON ⇄ protobuf, response as JSON), next to a bare unary call on a kept channel; the difference is the
  probe's per-call overhead (mostly the channel it opens for each run).

    python benchmarks/grpc_probe.py            # 20 compiles, 300 calls
    python benchmarks/grpc_probe.py --quick
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
import uuid
from typing import Any

import aiohttp
import anyio
import grpc
import grpc.aio

from tracecanary.integrations import Integrations
from tracecanary.probes import grpc_proto
from tracecanary.probes.base import Inject, ProbeContext, RunLog, TraceContext
from tracecanary.probes.grpc import GrpcProbe
from tracecanary.probes.templating import Templates

PROTO = """syntax = "proto3";
package bench;
import "google/protobuf/timestamp.proto";
service Pricing { rpc Quote (QuoteRequest) returns (QuoteReply); }
message QuoteRequest { string symbol = 1; int32 quantity = 2; string test_id = 3; }
message QuoteReply { string quote_id = 1; double price = 2; google.protobuf.Timestamp at = 3; }
"""


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    return f"median {statistics.median(ordered) * 1000:.2f} ms, p90 {ordered[int(len(ordered) * 0.9) - 1] * 1000:.2f} ms"


def compile_figures(rounds: int) -> None:
    cold, warm = [], []
    for i in range(rounds):
        grpc_proto._descriptor_set.cache_clear()
        t0 = time.perf_counter()
        grpc_proto.compile_proto(PROTO + f"// round {i}\n")
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        grpc_proto.compile_proto(PROTO + f"// round {i}\n")
        warm.append(time.perf_counter() - t0)
    print(f"compile, cold (protoc child process): {_ms(cold)}")
    print(f"compile, cached (same text again):    {_ms(warm)}")
    loads = []
    raw = {"id": "quote", "kind": "grpc", "request": {"address": "127.0.0.1:1", "method": "bench.Pricing/Quote",
                                                      "proto": PROTO, "message": {"symbol": "SPY", "quantity": 2}}}
    for _ in range(rounds * 10):
        t0 = time.perf_counter()
        GrpcProbe.model_validate(raw)
        loads.append(time.perf_counter() - t0)
    print(f"one grpc probe validated (compile cached): {_ms(loads)}")


def _context(session: aiohttp.ClientSession) -> ProbeContext:
    run_id = str(uuid.uuid4())
    return ProbeContext(probe_id="quote", run_id=run_id, attempt=1, first_run_id=run_id,
                        trace=TraceContext(secrets.token_hex(16), secrets.token_hex(8)), session=session,
                        templates=Templates(), integrations=Integrations(), inject=Inject(), log=RunLog(),
                        trigger_ns=time.time_ns(), deadline_s=anyio.current_time() + 30)


async def call_figures(calls: int) -> None:
    schema = grpc_proto.compile_proto(PROTO)
    method = schema.unary("bench.Pricing/Quote")
    request, reply = grpc_proto.message_class(method.input_type), grpc_proto.message_class(method.output_type)

    async def quote(req: Any, context: grpc.aio.ServicerContext) -> Any:
        return reply(quote_id="q", price=1.5 * req.quantity)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Pricing", {
        "Quote": grpc.unary_unary_rpc_method_handler(quote, request_deserializer=request.FromString,
                                                     response_serializer=lambda m: m.SerializeToString())}),))
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    probe = GrpcProbe.model_validate({"id": "quote", "kind": "grpc", "request": {
        "address": address, "method": "bench.Pricing/Quote", "proto": PROTO,
        "message": {"symbol": "SPY", "quantity": 2, "testId": "{{ run_id }}"}}})
    try:
        bare = []
        async with grpc.aio.insecure_channel(address) as channel:
            stub = channel.unary_unary("/bench.Pricing/Quote", request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=reply.FromString)
            for _ in range(calls):
                t0 = time.perf_counter()
                await stub(request(symbol="SPY", quantity=2), timeout=10)
                bare.append(time.perf_counter() - t0)
        fired = []
        async with aiohttp.ClientSession() as session:
            for _ in range(calls):
                ctx = _context(session)
                t0 = time.perf_counter()
                await probe.fire(ctx)
                fired.append(time.perf_counter() - t0)
    finally:
        await server.stop(None)
    print(f"bare unary call, kept channel:      {_ms(bare)}")
    print(f"GrpcProbe.fire (channel per run):   {_ms(fired)}")
    print(f"probe overhead per call (medians):  {(statistics.median(fired) - statistics.median(bare)) * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a few rounds (CI)")
    parser.add_argument("--compiles", type=int, default=20)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    compiles, calls = (3, 20) if args.quick else (args.compiles, args.calls)
    compile_figures(compiles)
    anyio.run(call_figures, calls)


if __name__ == "__main__":
    main()
