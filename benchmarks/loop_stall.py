"""Event-loop stalls of a loaded engine: the longest time one step, or a garbage collection, held the loop.

    python benchmarks/loop_stall.py                # ~600k buffered spans, half of them watched by 30 runs
    python benchmarks/loop_stall.py --quick        # CI (< 60 s): ~100k buffered spans, 3 runs
    python benchmarks/loop_stall.py --count 0      # the same without the expectation's count node

The engine (the one `run` and `check` use: SQLite store, OTLP/HTTP receiver, GC tuning, lag monitor) runs
in this process; a load process serves the probes' webhook and posts OTLP protobuf batches: unwatched
16-span traces (512-span batches, 8 attributes per span) and, for each run, a 10k-span trace (20 services,
depth up to 12, benchmarks/assertions.py's shape) in 512-span batches, all runs' traces interleaved. Each
run judges its trace against a 51-node expected tree, a ``count`` over thousands of spans and a ``forbid``
rule (so it waits for ``settle`` with its trace watched). Phases: (1) ingest only; (2) ingest and 30 runs
judging as spans arrive, then a full collection forced at the peak (~600k spans buffered, half of them in
the watched traces); (3) the runs' verdicts, reports and store writes; (4) three runs whose whole trace
is exported before the webhook answers (buffered before the run watches it).

Every step of the loop (each callback or task step it runs) is timed, GC time excluded, wall and CPU (on
a shared machine wall time includes time the process was not scheduled), and named by a sampler thread;
a 1 ms ticker gives the loop lag (one loop iteration runs every ready step); ``gc.callbacks`` give GC
pauses per generation. Goals: no step over 20 ms; gen-2 pauses under 30 ms with 600k spans buffered,
half of them watched.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing as mp
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
    expected_runs = [0]

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
        if len(runs) == expected_runs[0]:
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

        await asyncio.gather(*(worker() for _ in range(4)))

    async def expect(request: web.Request) -> web.Response:
        runs.clear()
        expected_runs[0] = (await request.json())["runs"]
        return web.json_response({"ok": True})

    async def fill(request: web.Request) -> web.Response:
        doc = await request.json()
        bodies = [pool.pop() for _ in range(min(doc["batches"], len(pool)))]
        t = time.perf_counter()

        async def worker() -> None:
            while bodies:
                await post(request.app["session"], bodies.pop())

        await asyncio.gather(*(worker() for _ in range(doc.get("connections", 4))))
        return web.json_response({"elapsed_s": time.perf_counter() - t})

    async def main() -> None:
        app = web.Application(client_max_size=2**24)
        app["tasks"] = set()
        app.add_routes([web.post("/webhook", webhook), web.post("/webhook/first", webhook),
                        web.post("/expect", expect), web.post("/fill", fill)])
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

    def worst_step(self, by_cpu: bool = False) -> tuple[float, float, str]:
        return max(self.steps, default=(0.0, 0.0, "-"), key=lambda s: s[1] if by_cpu else s[0])


class Monitor:
    """On the engine's loop: every step's duration (GC excluded) and where it was, a 1 ms ticker's lag,
    and GC pauses per generation.

    Steps are timed by wrapping ``asyncio.Handle._run``, the call the loop makes for every callback and
    task step: asyncio has no public per-step hook (debug mode's slow-callback log only warns, and costs
    more), so this instrument lives in the benchmark only. A sampler thread names a step running over 5 ms.
    """

    def __init__(self) -> None:
        from tracecanary.daemon.observe.lag import GcPauses, StallSampler

        self.phase = Phase("start")
        self.phases: list[Phase] = []
        self.paused = False
        self.pauses = GcPauses()
        self.cpu_pauses = GcPauses(time.thread_time)  # CPU time of the collecting thread: what load cannot inflate
        self.sampler = StallSampler(threading.get_ident(), overdue_s=0.005, period_s=0.002, depth=6)

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
        asyncio.Handle._run = timed_run  # type: ignore[method-assign]  # the benchmark's step timer, removed below
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
            asyncio.Handle._run = handle_run  # type: ignore[method-assign]  # restored
            self.sampler.stop()

    def _record(self, lag: float, gcs: list[Any], cpu_gcs: list[Any]) -> None:
        ph = self.phase
        ph.lags_s.append(lag)
        for p, cpu in zip(gcs, cpu_gcs, strict=False):
            ph.gc_max_s[p.generation] = max(ph.gc_max_s.get(p.generation, 0.0), p.duration_s)
            ph.gc_max_cpu_s[p.generation] = max(ph.gc_max_cpu_s.get(p.generation, 0.0), cpu.duration_s)
            ph.gc_count[p.generation] = ph.gc_count.get(p.generation, 0) + 1


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


def control(port: int, path: str, doc: dict[str, Any]) -> None:
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(doc).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        r.read()


@dataclass
class Results:
    verdicts: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    peak: dict[str, Any] = field(default_factory=dict)
    ingest_spans_s: float = 0.0


async def bench(args: argparse.Namespace) -> int:
    from tracecanary.daemon.config.load import load_config
    from tracecanary.daemon.engine import Engine, Overrides
    from tracecanary.demo.broker import free_port

    n_runs, fill_a, fill_b = (3, 100, 30) if args.quick else (30, 440, 146)
    otlp_port = free_port()
    parent, child = mp.get_context("spawn").Pipe()
    load = mp.get_context("spawn").Process(target=load_main, args=(child, otlp_port, fill_a + fill_b, 11),
                                           daemon=True)
    load.start()
    if not parent.poll(120):
        raise SystemExit("the load process did not start")
    load_port, spans_per_run = parent.recv()
    tmp = Path(tempfile.mkdtemp(prefix="tc-loopstall-"))
    (tmp / "suite.yaml").write_text(suite(f"http://127.0.0.1:{load_port}", 300, args.count))
    cfg = load_config(tmp / "suite.yaml")
    engine = Engine(cfg, Overrides(otlp_http=f"127.0.0.1:{otlp_port}", otlp_grpc="none",
                                   store=f"sqlite:///{tmp / 'loopstall.db'}"), serve_api=False)
    monitor, out = Monitor(), Results()

    async def control_(path: str, doc: dict[str, Any]) -> None:
        await anyio.to_thread.run_sync(control, load_port, path, doc)

    async def runs(n: int, probe: Any = cfg.probes[0]) -> None:
        await control_("/expect", {"runs": n})
        async with anyio.create_task_group() as rg:
            for _ in range(n):
                rg.start_soon(run_one, engine, probe, out)

    try:
        async with engine.started(), anyio.create_task_group() as tg:
            tg.start_soon(monitor.run)
            monitor.begin("warm-up (1 run, one-time costs)")
            await runs(1)
            expected = engine.buffer.stats().received_total + (fill_a + fill_b) * BATCH_SPANS + n_runs * spans_per_run
            monitor.begin("1 ingest only")
            t = time.perf_counter()
            await control_("/fill", {"batches": fill_a})
            out.ingest_spans_s = fill_a * BATCH_SPANS / (time.perf_counter() - t)
            monitor.begin("2 ingest + runs judging as spans arrive")
            async with anyio.create_task_group() as rg:
                rg.start_soon(runs, n_runs)
                rg.start_soon(control_, "/fill", {"batches": fill_b})
                with anyio.fail_after(300):
                    while engine.buffer.stats().received_total < expected:
                        await anyio.sleep(0.05)
                await anyio.sleep(0.2)  # the last batches' spans judged
                out.peak = await forced_collection(engine, monitor)
                monitor.begin("3 verdicts, reports and store writes")
            monitor.begin("4 runs whose 10k-span trace was buffered before they watch it")
            async with anyio.create_task_group() as rg:
                for _ in range(3):
                    rg.start_soon(run_one, engine, cfg.probes[1], out)
            tg.cancel_scope.cancel()
    finally:
        load.terminate()
        load.join()
    report(monitor, out)
    return 0 if out.verdicts and all(v == "pass" for v in out.verdicts) else 1


async def run_one(engine: Any, probe: Any, out: Results) -> None:
    run = await engine.runner.run_attempt(probe)
    out.verdicts.append(run.verdict.value if run.verdict else "aborted")
    if run.verdict is None or not run.verdict.ok:
        out.findings.extend(str(f) for f in run.findings[:3])


async def forced_collection(engine: Any, monitor: Monitor) -> dict[str, Any]:
    """A full collection at the peak, on the loop, as an automatic gen-2 collection would run there."""
    spans = engine.buffer.stats().spans
    t, cpu = time.perf_counter(), time.thread_time()
    gc.collect()
    pause_s, pause_cpu_s = time.perf_counter() - t, time.thread_time() - cpu
    monitor.paused = True  # what follows walks the heap: not a stall the engine would see
    cpu = time.thread_time()
    gc.collect()
    again_cpu_s = time.thread_time() - cpu
    tracked = gc.get_objects()
    kinds, refs = Counter(type(o).__name__ for o in tracked), Counter[str]()
    for o in tracked:
        refs[type(o).__name__] += len(gc.get_referents(o))
    await anyio.lowlevel.checkpoint()
    monitor.paused = False
    print(f"forced full collection at the peak ({spans:,} spans buffered, half of them watched): "
          f"{pause_s * 1e3:.1f} ms ({pause_cpu_s * 1e3:.1f} ms CPU), another right after {again_cpu_s * 1e3:.1f} ms "
          f"CPU; {len(tracked):,} tracked objects ({len(tracked) / max(1, spans):.2f} per buffered span, "
          f"{gc.get_freeze_count():,} frozen); most: "
          + ", ".join(f"{k} {n:,} ({refs[k]:,} refs)" for k, n in kinds.most_common(6)))
    return {"pause_s": pause_s, "pause_cpu_s": pause_cpu_s}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def phase_lines(ph: Phase) -> list[str]:
    gcs = ", ".join(f"gen{g} max {_ms(ph.gc_max_s[g])} ({_ms(ph.gc_max_cpu_s.get(g, 0))} CPU) ×{ph.gc_count[g]}"
                    for g in sorted(ph.gc_max_s))
    step, step_cpu, _ = ph.worst_step()
    lines = [f"[{ph.name}] longest step (GC excluded) {_ms(step)} wall, {_ms(step_cpu)} CPU; most CPU in one step "
             f"{_ms(ph.worst_step(by_cpu=True)[1])}; loop lag ({len(ph.lags_s)} ticks) p50 {_ms(_pct(ph.lags_s, 0.5))}, "
             f"p99 {_ms(_pct(ph.lags_s, 0.99))}, max {_ms(max(ph.lags_s, default=0))}; gc: {gcs or 'none'}"]
    over: dict[str, list[tuple[float, float]]] = {}
    for wall, cpu, where in ph.steps:
        if wall > 0.02:
            over.setdefault(where, []).append((wall, cpu))
    for where, ss in sorted(over.items(), key=lambda kv: -max(kv[1])[0])[:4]:
        wall, cpu = max(ss)
        lines.append(f"    {len(ss)} step(s) over 20 ms, longest {_ms(wall)} ({_ms(cpu)} CPU): {where}")
    return lines


def report(monitor: Monitor, out: Results) -> None:
    print(f"runs: {len(out.verdicts)} (incl. warm-up): "
          + ", ".join(f"{v}={out.verdicts.count(v)}" for v in sorted(set(out.verdicts))))
    for f in out.findings[:5]:
        print(f"  finding: {f[:300]}")
    print(f"ingest only: {out.ingest_spans_s:,.0f} spans/s wall clock")
    for ph in monitor.phases:
        print("\n".join(phase_lines(ph)))
    measured = [ph for ph in monitor.phases if not ph.name.startswith("warm-up")]
    steps = [st for ph in measured for st in ph.steps]
    mine = [st for st in steps if "daemon.store." not in st[2]]
    worst, wall, cpu = (max(steps, default=(0.0, 0.0, "-")), max(mine, default=(0.0, 0.0, "-")),
                        max(mine, default=(0.0, 0.0, "-"), key=lambda st: st[1]))
    every = [lag for ph in monitor.phases for lag in ph.lags_s]
    print(f"SUMMARY longest step excluding GC: {_ms(worst[0])} wall, {_ms(worst[1])} CPU (goal <= 20 ms): {worst[2]}")
    print(f"SUMMARY steps outside the store's span snapshot write: longest {_ms(wall[0])} wall ({_ms(wall[1])} CPU) "
          f"at {wall[2]}; most CPU in one step {_ms(cpu[1])} at {cpu[2]}")
    print(f"SUMMARY longest gen-2 pause: {_ms(max((ph.gc_max_s.get(2, 0) for ph in measured), default=0))} automatic "
          f"({_ms(max((ph.gc_max_cpu_s.get(2, 0) for ph in measured), default=0))} CPU), "
          f"{_ms(out.peak.get('pause_s', 0))} forced at the peak ({_ms(out.peak.get('pause_cpu_s', 0))} CPU) "
          f"(goal < 30 ms); loop lag p99 {_ms(_pct(every, 0.99))}, p99.9 {_ms(_pct(every, 0.999))}, "
          f"max {_ms(max(every, default=0))} over {len(every):,} ticks")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run for CI (< 60 s)")
    ap.add_argument("--count", type=int, default=2000,
                    help="the expectation's count over 'svc-* op-*' spans (0: no count node)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    return anyio.run(bench, args)


if __name__ == "__main__":
    raise SystemExit(main())
