"""Event-loop stalls of a loaded engine: the longest time one step, or a garbage collection, held the loop.

    python benchmarks/loop_stall.py            # ~600k buffered spans, half of them watched by 30 runs
    python benchmarks/loop_stall.py --quick    # CI (< 60 s): ~70k buffered spans, 3 runs

The engine (the one `run` and `check` use, its SQLite store, OTLP/HTTP receiver and GC tuning) runs in
this process; a load process serves the probe's webhook and posts OTLP protobuf batches to the engine:
unwatched 16-span traces (512-span batches, 8 attributes per span) and, for each run, a 10k-span trace
(20 services, depth up to 12) exported in 512-span batches, all runs' traces interleaved. Each run judges
its trace against a 51-node expected tree, plus a ``count`` over thousands of spans and a ``forbid``
rule (so the run waits for ``settle`` with its trace watched). Phases: (1) ingest only, (2) ingest and
runs judging as spans arrive, a full collection forced at the peak (all spans buffered, the runs'
traces watched), (3) the runs' verdicts, reports and store writes, (4) three runs whose whole trace is exported before
the webhook answers (buffered before the run watches it).

A 1 ms ticker measures how late the loop wakes; ``gc.callbacks`` attribute pauses to GC generations and a
sampler thread names where the loop was during a stall. Printed per phase: the longest stall excluding
GC time (and where), the longest gen-2 pause, p99 lag. Goals: no step over 20 ms; gen-2 pauses under
30 ms with 600k spans buffered, half of them watched.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing as mp
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks' trace and batch builders

TRACE_SPANS = 10_000
BATCH_SPANS = 512
PLACEHOLDER_TRACE = bytes.fromhex("5eed5eed5eed5eed0123456789abcdef")
PLACEHOLDER_PARENT = bytes.fromhex("feedfacecafebeef")


# ------------------------------------------------------------------------------------ load process


def run_trace_bodies() -> tuple[list[bytes], int]:
    """A 10k-span trace (benchmarks/assertions.py's shape) as 512-span protobuf bodies, in export order,
    with a placeholder trace id and root parent id replaced per run."""
    from dataclasses import replace

    from assertions import build_trace, export_order
    from tracecanary.daemon.spans.otlp import encode_request

    spans = build_trace(TRACE_SPANS)
    tid = PLACEHOLDER_TRACE.hex()
    spans = [replace(s, trace_id=tid, parent_span_id=s.parent_span_id or PLACEHOLDER_PARENT.hex()) for s in spans]
    return [encode_request(batch).SerializeToString() for batch in export_order(spans, BATCH_SPANS)], len(spans)


def load_main(conn: Any, otlp_port: int, background: int, seed: int) -> None:
    """The load process: the probe's webhook target and the OTLP poster."""
    import asyncio

    import aiohttp
    from aiohttp import web
    from ingest import make_bodies, make_template

    template, trace_ids = make_template()
    pool = [b for b, _ in make_bodies(template, trace_ids, background, seed=seed)]
    run_bodies, run_spans = run_trace_bodies()
    url = f"http://127.0.0.1:{otlp_port}/v1/traces"
    headers = {"Content-Type": "application/x-protobuf"}
    runs: list[tuple[bytes, bytes]] = []
    state: dict[str, Any] = {"expected_runs": 0, "exported": 0}

    async def post(session: aiohttp.ClientSession, body: bytes) -> None:
        async with session.post(url, data=body, headers=headers) as r:
            await r.read()
            if r.status != 200:
                raise SystemExit(f"receiver answered {r.status}")

    async def webhook(request: web.Request) -> web.Response:
        _, trace_id, parent, _ = request.headers["traceparent"].split("-")
        if request.path.endswith("/first"):  # the whole trace is exported before the answer: buffered before watched
            for body in run_bodies:
                await post(request.app["session"],
                           body.replace(PLACEHOLDER_TRACE, bytes.fromhex(trace_id)).replace(
                               PLACEHOLDER_PARENT, bytes.fromhex(parent)))
            return web.json_response({"ok": True})
        runs.append((bytes.fromhex(trace_id), bytes.fromhex(parent)))
        if len(runs) == state["expected_runs"]:
            request.app["tasks"].add(asyncio.create_task(export_runs(request.app["session"])))
        return web.json_response({"ok": True})

    async def export_runs(session: aiohttp.ClientSession) -> None:
        """Every run's trace, interleaved body by body, so every run still watches its trace at the end."""
        queue = [body.replace(PLACEHOLDER_TRACE, tid).replace(PLACEHOLDER_PARENT, parent)
                 for body in run_bodies for tid, parent in runs]
        queue.reverse()

        async def worker() -> None:
            while queue:
                await post(session, queue.pop())
                state["exported"] += 1

        await asyncio.gather(*(worker() for _ in range(4)))

    async def expect(request: web.Request) -> web.Response:
        doc = await request.json()
        runs.clear()
        state.update(expected_runs=doc["runs"], exported=0)
        return web.json_response({"bodies": doc["runs"] * len(run_bodies)})

    async def fill(request: web.Request) -> web.Response:
        doc = await request.json()
        bodies = [pool.pop() for _ in range(min(doc["batches"], len(pool)))]
        t = time.perf_counter()

        async def worker() -> None:
            while bodies:
                await post(request.app["session"], bodies.pop())

        await asyncio.gather(*(worker() for _ in range(doc.get("connections", 4))))
        return web.json_response({"elapsed_s": time.perf_counter() - t})

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"exported": state["exported"]})

    async def main() -> None:
        app = web.Application(client_max_size=2**24)
        app["tasks"] = set()
        app.add_routes([web.post("/webhook", webhook), web.post("/webhook/first", webhook),
                        web.post("/expect", expect), web.post("/fill", fill),
                        web.get("/status", status)])
        connector = aiohttp.TCPConnector(limit=16)
        async with aiohttp.ClientSession(connector=connector) as session:
            app["session"] = session
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            conn.send((runner.addresses[0][1], run_spans))
            await asyncio.Event().wait()

    asyncio.run(main())


# ------------------------------------------------------------------------------------ the monitor


@dataclass
class Phase:
    name: str
    lags_s: list[float] = field(default_factory=list)
    """How late the 1 ms ticker woke, each tick: one loop iteration's steps (and GC) delayed it."""
    steps: list[tuple[float, float, str]] = field(default_factory=list)
    """Steps (one callback of the loop) over 5 ms: wall and CPU time, GC time excluded from both, and where."""
    gc_max_s: dict[int, float] = field(default_factory=dict)
    gc_max_cpu_s: dict[int, float] = field(default_factory=dict)
    gc_count: dict[int, int] = field(default_factory=dict)

    def worst_step(self) -> tuple[float, float, str]:
        return max(self.steps, default=(0.0, 0.0, ""))

    def worst_cpu_step(self) -> tuple[float, float, str]:
        return max(self.steps, default=(0.0, 0.0, ""), key=lambda s: s[1])


class Monitor:
    """On the engine's loop: every step's duration (GC excluded) and where it was, a 1 ms ticker's lag,
    and GC pauses per generation.

    Steps are timed by wrapping ``asyncio.Handle._run``, the call the loop makes for every callback and
    task step (an instrument of this benchmark only); a sampler thread names a step running over 5 ms.
    """

    def __init__(self) -> None:
        from tracecanary.daemon.observe.lag import GcPauses, StallSampler

        self.phase = Phase("start")
        self.phases: list[Phase] = []
        self.paused = False
        self.pauses = GcPauses()
        self.cpu_pauses = GcPauses(time.thread_time)  # CPU time of the collecting thread: what load cannot inflate
        self.sampler = StallSampler(threading.get_ident(), overdue_s=0.005, period_s=0.002)

    def begin(self, name: str) -> Phase:
        self.phase = Phase(name)
        self.phases.append(self.phase)
        return self.phase

    async def run(self) -> None:
        import asyncio

        handle_run = asyncio.Handle._run
        monitor, sampler, pauses, clock, cpu = self, self.sampler, self.pauses, time.perf_counter, time.thread_time

        def timed_run(handle: asyncio.Handle) -> None:
            beat, gc0, t0, c0 = sampler.beat(), pauses.total_s, clock(), cpu()
            handle_run(handle)
            gc_s = pauses.total_s - gc0
            step = clock() - t0 - gc_s
            if step > 0.005 and not monitor.paused:
                monitor.phase.steps.append((step, cpu() - c0 - gc_s, sampler.sample_for(beat) or _callback_name(handle)))

        self.sampler.start()
        asyncio.Handle._run = timed_run  # type: ignore[method-assign]
        try:
            with self.pauses, self.cpu_pauses:
                while True:
                    t0 = time.perf_counter()
                    await anyio.sleep(0.001)
                    lag = max(0.0, time.perf_counter() - t0 - 0.001)
                    gcs, cpu_gcs = self.pauses.take(), self.cpu_pauses.take()
                    if not self.paused:
                        self._record(lag, gcs, cpu_gcs)
        finally:
            asyncio.Handle._run = handle_run  # type: ignore[method-assign]
            self.sampler.stop()

    def _record(self, lag: float, gcs: list[Any], cpu_gcs: list[Any]) -> None:
        ph = self.phase
        ph.lags_s.append(lag)
        for p in gcs:
            ph.gc_max_s[p.generation] = max(ph.gc_max_s.get(p.generation, 0.0), p.duration_s)
            ph.gc_count[p.generation] = ph.gc_count.get(p.generation, 0) + 1
        for p in cpu_gcs:
            ph.gc_max_cpu_s[p.generation] = max(ph.gc_max_cpu_s.get(p.generation, 0.0), p.duration_s)


def _callback_name(handle: Any) -> str:
    """A step's task (its coroutine) or callback, when the sampler did not catch it."""
    cb = getattr(handle, "_callback", None)
    owner = getattr(cb, "__self__", None)
    coro = getattr(owner, "get_coro", None)
    if coro is not None:
        return f"task {getattr(coro(), '__qualname__', '?')}"
    return repr(handle)[:120]


# ------------------------------------------------------------------------------------ engine side


def suite(target: str, runs_timeout_s: int, count: int) -> str:
    from assertions import build_expectation

    exp = build_expectation().model_dump(mode="json", by_alias=True, exclude_defaults=True)
    if count:
        exp["tree"].append({"span": "svc-* op-*", "count": {"gte": count}})
    exp["forbid"] = [{"status": "error"}]
    exp["settle"] = "3s"
    doc = {
        "daemon": {"buffer": {"max_spans": 4_000_000, "max_bytes": "8GiB"}},
        "probes": [{"id": probe_id, "kind": "http", "timeout": f"{runs_timeout_s}s",
                    "request": {"method": "POST", "url": f"{target}{path}"},
                    "expect": {"response": {"status": 200}, "trace": exp}}
                   for probe_id, path in (("big", "/webhook"), ("big-first", "/webhook/first"))],
    }
    return json.dumps(doc, indent=1)


def control(port: int, path: str, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    import urllib.request

    data = None if doc is None else json.dumps(doc).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


async def bench(args: argparse.Namespace) -> int:
    from tracecanary.daemon.config.load import load_config
    from tracecanary.daemon.engine import Engine, Overrides
    from tracecanary.demo.broker import free_port

    n_runs, fill_a, fill_b = (3, 100, 30) if args.quick else (30, 440, 146)
    otlp_port = free_port()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    load = ctx.Process(target=load_main, args=(child, otlp_port, fill_a + fill_b + 10, 11), daemon=True)
    load.start()
    if not parent.poll(120):
        raise SystemExit("the load process did not start")
    load_port, spans_per_run = parent.recv()
    tmp = Path(tempfile.mkdtemp(prefix="tc-loopstall-"))
    (tmp / "suite.yaml").write_text(suite(f"http://127.0.0.1:{load_port}", 300, args.count))
    cfg = load_config(tmp / "suite.yaml")
    engine = Engine(cfg, Overrides(otlp_http=f"127.0.0.1:{otlp_port}", otlp_grpc="none",
                                   store=f"sqlite:///{tmp / 'loopstall.db'}"), serve_api=False)
    monitor = Monitor()
    verdicts: list[str] = []
    findings: list[str] = []
    peak: dict[str, Any] = {}
    try:
        async with engine.started(), anyio.create_task_group() as tg:
            tg.start_soon(monitor.run)

            async def run_one(probe: Any = cfg.probes[0]) -> None:
                run = await engine.runner.run_attempt(probe)
                verdicts.append(run.verdict.value if run.verdict else "aborted")
                if run.verdict is None or not run.verdict.ok:
                    findings.extend(str(f) for f in run.findings[:3])

            async def runs(n: int) -> None:
                await anyio.to_thread.run_sync(control, load_port, "/expect", {"runs": n})
                async with anyio.create_task_group() as rg:
                    for _ in range(n):
                        rg.start_soon(run_one)

            monitor.begin("warm-up (1 run, one-time costs)")
            await runs(1)
            received0 = engine.buffer.stats().received_total

            monitor.begin("1 ingest only")
            t = time.perf_counter()
            await anyio.to_thread.run_sync(control, load_port, "/fill", {"batches": fill_a})
            ingest_s = time.perf_counter() - t

            monitor.begin("2 ingest + runs judging as spans arrive")
            expected = received0 + (fill_a + fill_b) * BATCH_SPANS + n_runs * spans_per_run
            async with anyio.create_task_group() as rg:
                rg.start_soon(runs, n_runs)
                rg.start_soon(anyio.to_thread.run_sync, control, load_port, "/fill", {"batches": fill_b})
                with anyio.fail_after(300):
                    while engine.buffer.stats().received_total < expected:
                        await anyio.sleep(0.05)
                await anyio.sleep(0.2)  # the last batches' spans judged
                peak.update(await forced_collection(engine, monitor))
                monitor.begin("3 verdicts, reports and store writes")
            monitor.begin("4 runs whose 10k-span trace was buffered before they watch it")
            async with anyio.create_task_group() as rg:
                for _ in range(3):
                    rg.start_soon(run_one, cfg.probes[1])
            tg.cancel_scope.cancel()
    finally:
        load.terminate()
        load.join()
    report(monitor, peak, verdicts, findings, ingest_s, fill_a)
    return 0 if verdicts and all(v == "pass" for v in verdicts) else 1


async def forced_collection(engine: Any, monitor: Monitor) -> dict[str, Any]:
    """A full collection at the peak, on the loop, as an automatic gen-2 collection would run there."""
    stats = engine.buffer.stats()
    t, cpu = time.perf_counter(), time.thread_time()
    gc.collect()
    pause_s, pause_cpu_s = time.perf_counter() - t, time.thread_time() - cpu
    monitor.paused = True  # counting objects walks the heap: not a stall the engine would see
    t2 = time.thread_time()
    gc.collect()
    again_cpu_s = time.thread_time() - t2
    tracked = gc.get_objects()
    objects = len(tracked)
    kinds = Counter(type(o).__name__ for o in tracked)
    refs: Counter[str] = Counter()
    for o in tracked:
        refs[type(o).__name__] += len(gc.get_referents(o))
    del tracked
    frozen = gc.get_freeze_count()
    await anyio.lowlevel.checkpoint()
    monitor.paused = False
    top = ", ".join(f"{k} {n:,} ({refs[k]:,} refs)" for k, n in kinds.most_common(8))
    top += "; most refs: " + ", ".join(f"{k} {n:,}" for k, n in refs.most_common(5))
    top += f"; a second collection right after: {again_cpu_s * 1e3:.1f} ms CPU"
    return {"pause_s": pause_s, "pause_cpu_s": pause_cpu_s, "objects": objects, "frozen": frozen, "spans": stats.spans, "top": top}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def report(monitor: Monitor, peak: dict[str, Any], verdicts: list[str], findings: list[str],
           ingest_s: float, fill_a: int) -> None:
    print(f"runs: {len(verdicts)} (+1 warm-up): " + ", ".join(f"{v}={verdicts.count(v)}" for v in sorted(set(verdicts))))
    for f in findings[:5]:
        print(f"  finding: {f[:300]}")
    print(f"ingest only: {fill_a * BATCH_SPANS / ingest_s:,.0f} spans/s wall clock")
    if peak:
        print(f"forced full collection at the peak ({peak['spans']:,.0f} spans buffered, half of them watched): "
              f"{peak['pause_s'] * 1e3:.1f} ms ({peak['pause_cpu_s'] * 1e3:.1f} ms CPU), {peak['objects']:,.0f} tracked objects "
              f"({peak['objects'] / max(1, peak['spans']):.2f} per buffered span; {peak['frozen']:,.0f} frozen)")
        print(f"  most tracked: {peak['top']}")
    every: list[float] = []
    worst: tuple[float, float, str, str] = (0.0, 0.0, "", "")
    gen2 = gen2_cpu = 0.0
    for ph in monitor.phases:
        every.extend(ph.lags_s)
        gcs = ", ".join(f"gen{g} max {ph.gc_max_s[g] * 1e3:.1f} ms ({ph.gc_max_cpu_s.get(g, 0) * 1e3:.1f} CPU) "
                        f"×{ph.gc_count[g]}" for g in sorted(ph.gc_max_s))
        step, step_cpu, where = ph.worst_step()
        print(f"[{ph.name}] longest step (GC excluded) {step * 1e3:.1f} ms wall, {step_cpu * 1e3:.1f} ms CPU; "
              f"most CPU in one step {ph.worst_cpu_step()[1] * 1e3:.1f} ms; loop lag (1 ms ticker, {len(ph.lags_s)} "
              f"ticks) p50 {_pct(ph.lags_s, 0.5) * 1e3:.2f} ms, p99 {_pct(ph.lags_s, 0.99) * 1e3:.2f} ms, max "
              f"{max(ph.lags_s, default=0) * 1e3:.1f} ms; gc: {gcs or 'none'}")
        over: dict[str, list[tuple[float, float]]] = {}
        for s, c, w in ph.steps:
            if s > 0.02:
                over.setdefault(w, []).append((s, c))
        for w, ss in sorted(over.items(), key=lambda kv: -max(kv[1])[0])[:4]:
            s, c = max(ss)
            print(f"    {len(ss)} step(s) over 20 ms, longest {s * 1e3:.0f} ms ({c * 1e3:.0f} ms CPU): {w}")
        if not ph.name.startswith("warm-up"):
            if step > worst[0]:
                worst = (step, step_cpu, where, ph.name)
            gen2 = max(gen2, ph.gc_max_s.get(2, 0.0))
            gen2_cpu = max(gen2_cpu, ph.gc_max_cpu_s.get(2, 0.0))
    outside = max((st for ph in monitor.phases if not ph.name.startswith("warm-up") for st in ph.steps
                   if "daemon.store." not in st[2]), default=(0.0, 0.0, ""))
    print(f"SUMMARY longest step outside the store's span snapshot write: {outside[0] * 1e3:.1f} ms wall, "
          f"{outside[1] * 1e3:.1f} ms CPU: {outside[2] or '-'}")
    print(f"SUMMARY longest step excluding GC: {worst[0] * 1e3:.1f} ms wall, {worst[1] * 1e3:.1f} ms CPU "
          f"(goal <= 20 ms) in phase '{worst[3]}': {worst[2]}")
    print(f"SUMMARY longest gen-2 pause: {gen2 * 1e3:.1f} ms automatic ({gen2_cpu * 1e3:.1f} ms CPU), "
          f"{peak.get('pause_s', 0) * 1e3:.1f} ms forced at the peak ({peak.get('pause_cpu_s', 0) * 1e3:.1f} ms CPU) "
          f"(goal < 30 ms); loop lag p99 "
          f"{_pct(every, 0.99) * 1e3:.2f} ms, p99.9 {_pct(every, 0.999) * 1e3:.2f} ms, max "
          f"{max(every, default=0) * 1e3:.1f} ms over {len(every):,} ticks")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run for CI (< 60 s)")
    ap.add_argument("--count", type=int, default=2000,
                    help="the expectation's count over 'svc-* op-*' spans (0: no count node)")
    args = ap.parse_args()
    random.seed(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    return anyio.run(bench, args)


if __name__ == "__main__":
    raise SystemExit(main())
