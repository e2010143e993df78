"""End-to-end figures: probe runs/s through the whole engine, and span-arrival → verdict latency.

A target process answers POST /webhook at once, then exports a 20-span trace (a child of the probe's
client span, one protobuf OTLP request) to the engine's receiver and notes when the receiver answered.
The engine (one process, one event loop: "one core") fires runs at a fixed concurrency and judges
each run's trace against a 20-node expected tree.

    python benchmarks/e2e.py            # 2000 runs
    python benchmarks/e2e.py --quick    # 200 runs (CI)

Prints: runs/s (goal ≥ 200/s), and receiver-ack → verdict latency p50/p99 (goal p99 ≤ 50 ms; Tracetest's
poll-based completion takes ~10 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import anyio

SPANS_PER_TRACE = 20


def build_suite(base: str) -> str:
    children = "\n".join(f"                  - span: step-{i:02d}" for i in range(1, SPANS_PER_TRACE - 1))
    return f"""
probes:
  - id: e2e
    kind: http
    timeout: 20s
    request: {{method: POST, url: "{base}/webhook"}}
    expect:
      response: {{status: 200}}
      trace:
        tree:
          - span: "POST /webhook"
            service: bench
            children:
              - span: handle
                children:
{children}
"""


# --- target process ------------------------------------------------------------------------------
def target_main(port_file: str, otlp_url: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from aiohttp import web

    from tracecanary.assertions.spans import Span, SpanKind
    from tracecanary.daemon.spans.otlp import encode_request

    acked: dict[str, int] = {}

    async def webhook(request: web.Request) -> web.Response:
        _, trace_id, parent, _ = request.headers["traceparent"].split("-")
        request.app["tasks"].add(asyncio.create_task(export(request.app["session"], trace_id, parent)))
        return web.json_response({"ok": True})

    async def export(session: aiohttp.ClientSession, trace_id: str, parent: str) -> None:
        now = time.time_ns()
        server, handle = secrets.token_hex(8), secrets.token_hex(8)
        res = {"service.name": "bench"}
        spans = [Span(trace_id, server, parent, "POST /webhook", SpanKind.SERVER, now, now + 5_000_000, "bench",
                      resource=res),
                 Span(trace_id, handle, server, "handle", SpanKind.INTERNAL, now, now + 4_000_000, "bench", resource=res)]
        spans += [Span(trace_id, secrets.token_hex(8), handle, f"step-{i:02d}", SpanKind.INTERNAL, now + i,
                       now + i + 1000, "bench", attributes={"i": i}, resource=res)
                  for i in range(1, SPANS_PER_TRACE - 1)]
        body = encode_request(spans).SerializeToString()
        async with session.post(otlp_url, data=body, headers={"Content-Type": "application/x-protobuf"}) as r:
            await r.read()
            assert r.status == 200, r.status
        acked[trace_id] = time.time_ns()

    async def times(request: web.Request) -> web.Response:
        return web.json_response(acked)

    async def main() -> None:
        app = web.Application()
        app["tasks"] = set()
        app.add_routes([web.post("/webhook", webhook), web.get("/times", times)])
        async with aiohttp.ClientSession() as session:
            app["session"] = session
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            Path(port_file).write_text(str(site._server.sockets[0].getsockname()[1]))  # type: ignore[union-attr]
            await asyncio.Event().wait()

    asyncio.run(main())


# --- engine side ---------------------------------------------------------------------------------
async def bench(runs: int, concurrency: int) -> None:
    from tracecanary.daemon.config import load_config
    from tracecanary.daemon.engine import Engine, Overrides
    from tracecanary.demo.broker import free_port

    otlp_port = free_port()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"tc-e2e-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    port_file = tmp / "port"
    target = subprocess.Popen([sys.executable, __file__, "--target", str(port_file),
                               f"http://127.0.0.1:{otlp_port}/v1/traces"])
    try:
        with anyio.fail_after(30):
            while not port_file.exists() or not port_file.read_text():
                await anyio.sleep(0.05)
        base = f"http://127.0.0.1:{port_file.read_text()}"
        (tmp / "suite.yaml").write_text(build_suite(base))
        cfg = load_config(tmp / "suite.yaml")
        engine = Engine(cfg, Overrides(otlp_http=f"127.0.0.1:{otlp_port}", otlp_grpc="none",
                                       store=f"sqlite:///{tmp / 'e2e.db'}"), serve_api=False)
        async with engine.started():
            probe = cfg.probes[0]
            results = []
            limit = anyio.Semaphore(concurrency)

            async def one() -> None:
                async with limit:
                    results.append(await engine.runner.run_attempt(probe))

            await one()  # warm-up
            results.clear()
            cpu0, t0 = time.process_time(), time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(runs):
                    tg.start_soon(one)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            async with aiohttp.ClientSession() as s, s.get(f"{base}/times") as r:
                acked = json.loads(await r.text())
        verdicts = [r.verdict.value if r.verdict else "none" for r in results]
        lat_ms = sorted((r.finished_ns - acked[r.trace_id]) / 1e6 for r in results if r.trace_id in acked and r.finished_ns)
        print(f"runs: {runs} at concurrency {concurrency}; verdicts: "
              + ", ".join(f"{v}={verdicts.count(v)}" for v in sorted(set(verdicts))))
        print(f"end-to-end: {runs / wall:8.1f} runs/s wall ({runs / cpu:8.1f} runs per engine-CPU-second)"
              f"  goal >= 200/s")
        if lat_ms:
            p = lambda q: lat_ms[min(len(lat_ms) - 1, int(q * len(lat_ms)))]  # noqa: E731
            print(f"receiver ack -> verdict recorded: p50 {p(0.5):.1f} ms  p99 {p(0.99):.1f} ms  max {lat_ms[-1]:.1f} ms"
                  f"  goal p99 <= 50 ms (Tracetest default poll: ~10 s)")
        assert verdicts.count("pass") == runs, "every benchmark run must pass"
    finally:
        target.terminate()
        target.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--target", nargs=2, metavar=("PORT_FILE", "OTLP_URL"))
    args = ap.parse_args()
    if args.target:
        target_main(*args.target)
        return
    anyio.run(bench, args.runs or (200 if args.quick else 2000), args.concurrency)


if __name__ == "__main__":
    main()
