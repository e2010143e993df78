"""Span intake throughput: OTLP/HTTP protobuf batches into the TraceBuffer, across processes.

    python benchmarks/ingest.py            # full run (1M spans buffered for the RSS figure)
    python benchmarks/ingest.py --quick    # CI smoke (< 20 s)

A receiver runs in its own process (receiver + TraceBuffer, one event loop, one core); a poster
process sends realistic 512-span protobuf batches (16-span traces, 8 attributes per span) over
loopback. Printed: spans/s for (a) traces nobody waits on (then a sample is fetched back to prove
they are retained and indexed) and (b) traces 64 waiters are watching (every span decoded and
delivered), next to the raw limits measured in the same run: ``ParseFromString`` + reading each
span's trace id, and full field extraction; plus the receiver's RSS with many spans buffered, the
receiver's gen2 GC collections during (b), and the gen2 GC pause with many spans buffered (unwatched,
watched, and after the watches closed), with the GC-tracked objects per buffered span.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import os
import random
import sys
import time
from typing import Any

SPANS_PER_BATCH = 512
SPANS_PER_TRACE = 16
ATTRS_PER_SPAN = 8


def make_template() -> tuple[bytes, list[bytes]]:
    """One realistic batch and its trace ids (placeholders replaced per posted batch)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    rnd = random.Random(7)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in (("service.name", "checkout"), ("service.version", "1.42.0"), ("host.name", "node-17"),
                 ("deployment.environment", "prod")):
        kv = rs.resource.attributes.add()
        kv.key, kv.value.string_value = k, v
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "opentelemetry.instrumentation.aiohttp", "0.66b2"
    trace_ids = [rnd.randbytes(16) for _ in range(SPANS_PER_BATCH // SPANS_PER_TRACE)]
    t0 = 1_763_900_000_000_000_000
    for i in range(SPANS_PER_BATCH):
        tid = trace_ids[i // SPANS_PER_TRACE]
        sp = ss.spans.add()
        sp.trace_id, sp.span_id = tid, rnd.randbytes(8)
        if i % SPANS_PER_TRACE:
            sp.parent_span_id = ss.spans[i - 1 - (i % 3 == 0 and i % SPANS_PER_TRACE > 1)].span_id
        sp.name = ["POST /orders", "validate", "SELECT orders", "GET /inventory", "orders publish"][i % 5]
        sp.kind = [2, 1, 3, 3, 4][i % 5]
        sp.start_time_unix_nano = t0 + i * 1_000_000
        sp.end_time_unix_nano = sp.start_time_unix_nano + rnd.randint(100_000, 90_000_000)
        attrs: list[tuple[str, Any]] = [
            ("http.method", "POST"), ("http.route", "/orders/{id}"), ("http.status_code", 200),
            ("net.peer.name", "inventory.internal"), ("db.system", "postgresql"),
            ("order.id", f"ord-{rnd.randint(0, 10**9)}"), ("retry", False), ("payload.bytes", rnd.randint(10, 99999)),
        ][:ATTRS_PER_SPAN]
        for k, v in attrs:
            kv = sp.attributes.add()
            kv.key = k
            if isinstance(v, bool):
                kv.value.bool_value = v
            elif isinstance(v, int):
                kv.value.int_value = v
            else:
                kv.value.string_value = v
        sp.status.code = 1
    return req.SerializeToString(), trace_ids


def make_bodies(template: bytes, trace_ids: list[bytes], count: int, seed: int) -> list[tuple[bytes, list[str]]]:
    """``count`` distinct batches: the template with fresh trace ids."""
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        body = template
        fresh = [rnd.randbytes(16) for _ in trace_ids]
        for old, new in zip(trace_ids, fresh, strict=True):
            body = body.replace(old, new)
        out.append((body, [t.hex() for t in fresh]))
    return out


def raw_limits(template: bytes, batches: int) -> tuple[float, float]:
    """Spans/s for ParseFromString + each span's trace id, and for full field extraction."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tracecanary.daemon.spans.otlp import decode_request

    t = time.perf_counter()
    for _ in range(batches):
        req = ExportTraceServiceRequest.FromString(template)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    _ = sp.trace_id
    ids_rate = batches * SPANS_PER_BATCH / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(max(1, batches // 4)):
        decode_request(ExportTraceServiceRequest.FromString(template))
    full_rate = max(1, batches // 4) * SPANS_PER_BATCH / (time.perf_counter() - t)
    return ids_rate, full_rate


def gc_figures(template: bytes, trace_ids: list[bytes], batches: int) -> list[str]:
    """Full (gen2) collection time with ``batches`` batches buffered: raw, watched, after the watches."""
    from tracecanary.daemon.spans.buffer import TraceBuffer
    from tracecanary.daemon.spans.otlp import scan_protobuf

    def collect() -> tuple[float, int]:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            gc.collect()
            best = min(best, time.perf_counter() - t)
        return best * 1e3, len(gc.get_objects())

    bodies = make_bodies(template, trace_ids, batches, seed=5)
    base_ms, base_objects = collect()
    buffer = TraceBuffer(max_spans=10**8, max_bytes=2**40)
    watches = [buffer.watch() for _ in range(64)]
    watched = [t for _, ts in bodies[: batches // 2] for t in ts]
    for i, tid in enumerate(watched):
        watches[i % len(watches)].add_trace(tid)
    for body, _ in bodies:
        buffer.add_batch(scan_protobuf(body))
    spans = buffer.stats().spans
    lines = [f"gc gen2 pause, empty process: {base_ms:.1f} ms ({base_objects:,} tracked objects)"]
    for label in (f"{len(watched) * SPANS_PER_TRACE:,} of them watched", "after the watches closed"):
        ms, objects = collect()
        lines.append(f"gc gen2 pause with {spans:,} spans buffered, {label}: {ms:.1f} ms "
                     f"(+{(objects - base_objects) / spans:.2f} tracked objects per span)")
        for w in watches:
            w.close()
    return lines


# ------------------------------------------------------------------------------------ receiver


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def receiver_main(conn: Any, max_spans: int) -> None:
    import anyio
    from aiohttp import web

    from tracecanary.daemon.spans.buffer import TraceBuffer
    from tracecanary.daemon.spans.receiver import Ingest, OtlpSettings, make_otlp_app

    buffer = TraceBuffer(max_spans=max_spans, max_bytes=2 * 1024**3)
    settings = OtlpSettings(http="127.0.0.1:0", grpc=None, max_pending_batches=64)
    ingest = Ingest(buffer, settings)
    app = make_otlp_app(buffer, settings, ingest)
    delivered = [0]
    gen2: list[float] = []  # pause of each full collection, seconds
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                gen2.append(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)

    async def follow(watches: list[Any]) -> None:
        async def drain(w: Any) -> None:
            while True:
                spans = await w.wait(3600)
                delivered[0] += len(spans)

        for w in watches:
            asyncio.get_running_loop().create_task(drain(w))

    async def watch(request: web.Request) -> web.Response:
        doc = await request.json()
        watches = [buffer.watch() for _ in range(doc["watchers"])]
        for i, tid in enumerate(doc["traces"]):
            watches[i % len(watches)].add_trace(tid)
        await follow(watches)
        return web.json_response({"ok": True})

    async def sample(request: web.Request) -> web.Response:
        doc = await request.json()
        counts = {t: len(buffer.trace(t)) for t in doc["traces"]}
        return web.json_response({"counts": counts, "delivered": delivered[0], **_stats()})

    def _stats() -> dict[str, Any]:
        st = buffer.stats()
        return {"cpu_s": time.process_time(), "spans": st.spans, "traces": st.traces, "received": st.received_total,
                "evicted": st.evicted_spans, "bytes": st.bytes, "rss_mib": _rss_mib(),
                "gen2": len(gen2), "gen2_max_ms": max(gen2, default=0.0) * 1e3}

    async def stats(request: web.Request) -> web.Response:
        await anyio.wait_all_tasks_blocked()  # let the waiters drain what was delivered
        return web.json_response({"delivered": delivered[0], **_stats()})

    async def offload(request: web.Request) -> web.Response:
        ingest.offload_bytes = (await request.json())["bytes"]  # decode in a worker thread above this
        return web.json_response({"ok": True})

    app.add_routes([web.post("/bench/offload", offload), web.post("/bench/watch", watch), web.post("/bench/sample", sample),
                    web.get("/bench/stats", stats)])

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(runner.addresses[0][1])
        await anyio.sleep_forever()

    anyio.run(main)


# ------------------------------------------------------------------------------------ poster


def poster_main(conn: Any, port: int, bodies: list[bytes], connections: int) -> None:
    """A lean HTTP/1.1 client (pre-built requests on keep-alive sockets) so the receiver is the bottleneck."""

    async def main() -> float:
        head = (f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/x-protobuf\r\nContent-Length: ")
        requests = [head.encode() + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies]
        queue = list(reversed(requests))

        async def worker() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while queue:
                writer.write(queue.pop())
                status = await reader.readuntil(b"\r\n\r\n")
                if not status.startswith(b"HTTP/1.1 200"):
                    raise SystemExit(f"receiver answered {status[:40]!r}")
                length = int(status.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            writer.close()

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return time.perf_counter() - t

    conn.send(asyncio.run(main()))


def post(port: int, bodies: list[bytes], connections: int = 4) -> float:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=poster_main, args=(child, port, bodies, connections))
    proc.start()
    elapsed: float = parent.recv()
    proc.join()
    return elapsed


def control(port: int, path: str, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    import json
    import urllib.request

    data = None if doc is None else json.dumps(doc).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


# ------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run for CI (< 20 s)")
    args = ap.parse_args()
    quick = args.quick
    n_a, n_b, n_fill = (60, 30, 240) if quick else (600, 200, 2000)

    template, trace_ids = make_template()
    print(f"batch: {SPANS_PER_BATCH} spans, {len(trace_ids)} traces, {ATTRS_PER_SPAN} attributes/span, "
          f"{len(template)} bytes protobuf")
    ids_rate, full_rate = raw_limits(template, 40 if quick else 200)
    print(f"raw limit, ParseFromString + each trace id: {ids_rate:>10,.0f} spans/s")
    print(f"raw limit, full field extraction (eager):   {full_rate:>10,.0f} spans/s")

    fill_target = n_fill * SPANS_PER_BATCH
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=receiver_main, args=(child, fill_target), daemon=True)
    server.start()
    port: int = parent.recv()
    try:
        warm = make_bodies(template, trace_ids, 10, seed=0)
        post(port, [b for b, _ in warm])

        batches_a = make_bodies(template, trace_ids, n_a, seed=1)
        cpu0 = control(port, "/bench/stats")["cpu_s"]
        elapsed = post(port, [b for b, _ in batches_a])
        cpu_a = control(port, "/bench/stats")["cpu_s"] - cpu0
        rate_a = n_a * SPANS_PER_BATCH / cpu_a
        sample_ids = [random.choice(t) for _, t in random.sample(batches_a, min(20, n_a))]
        sample = control(port, "/bench/sample", {"traces": sample_ids})
        ok = all(c == SPANS_PER_TRACE for c in sample["counts"].values())
        print(f"(a) unwatched traces:  {rate_a:>10,.0f} spans/s per receiver core = {rate_a / ids_rate:.0%} of the "
              f"trace-id limit (goal 300,000); wall clock {n_a * SPANS_PER_BATCH / elapsed:,.0f} spans/s; "
              f"sample of {len(sample_ids)} traces read back complete: {ok}")

        if not quick:  # the same traffic with decoding in a worker thread, for comparison
            control(port, "/bench/offload", {"bytes": 0})
            batches_t = make_bodies(template, trace_ids, n_a // 2, seed=4)
            cpu0 = control(port, "/bench/stats")["cpu_s"]
            elapsed_t = post(port, [b for b, _ in batches_t])
            cpu_t = control(port, "/bench/stats")["cpu_s"] - cpu0
            control(port, "/bench/offload", {"bytes": 1024 * 1024})
            print(f"    same, decoded in a worker thread: {len(batches_t) * SPANS_PER_BATCH / cpu_t:,.0f} spans/s "
                  f"per receiver CPU second; wall clock {len(batches_t) * SPANS_PER_BATCH / elapsed_t:,.0f} spans/s")

        batches_b = make_bodies(template, trace_ids, n_b, seed=2)
        control(port, "/bench/watch", {"traces": [t for _, ts in batches_b for t in ts], "watchers": 64})
        st0 = control(port, "/bench/stats")
        cpu0 = st0["cpu_s"]
        elapsed_b = post(port, [b for b, _ in batches_b])
        st_b = control(port, "/bench/stats")
        delivered, cpu_b = st_b["delivered"], st_b["cpu_s"] - cpu0
        rate_b = n_b * SPANS_PER_BATCH / cpu_b
        print(f"(b) watched traces:    {rate_b:>10,.0f} spans/s per receiver core = {rate_b / full_rate:.0%} of the "
              f"full-extraction limit (goal 60,000); wall clock {n_b * SPANS_PER_BATCH / elapsed_b:,.0f} spans/s; "
              f"spans delivered to 64 waiters: {delivered}/{n_b * SPANS_PER_BATCH}")
        print(f"    receiver gen2 GC collections during (b): {st_b['gen2'] - st0['gen2']}, longest pause so far "
              f"{st_b['gen2_max_ms']:.1f} ms ({st_b['spans']:,} spans buffered)")

        fill = make_bodies(template, trace_ids, n_fill, seed=3)
        before = control(port, "/bench/stats")
        post(port, [b for b, _ in fill])
        st = control(port, "/bench/stats")
        print(f"RSS with {st['spans']:,} spans buffered ({st['traces']:,} traces, estimate {st['bytes'] / 2**20:,.0f} MiB): "
              f"{st['rss_mib']:,.0f} MiB (goal: <= 1024 MiB at 1,000,000 spans)")
        if quick:
            slope = (st["rss_mib"] - before["rss_mib"]) / max(1, st["spans"] - before["spans"])
            print(f"  extrapolated to 1M spans (RSS growth per span during the fill): "
                  f"{st['rss_mib'] + slope * (1_000_000 - st['spans']):,.0f} MiB")
    finally:
        server.terminate()
        server.join()
    for line in gc_figures(template, trace_ids, 120 if quick else 1200):
        print(line)
    return 0 if ok and delivered == n_b * SPANS_PER_BATCH else 1


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
