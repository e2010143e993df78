"""/metrics scrape cost with many probes: series count, body size, and the time one scrape takes.

    python benchmarks/metrics_scrape.py [--quick] [--probes 500] [--scrapes 50]

N probes are registered at start (every series exists before its first run), each then records one
failing run with two findings; a tenth of them have an open incident and a tenth are silenced, in a
real SQLite store. A scrape is what ``GET /metrics`` does: read every probe's alert state from the store
(``AlertManager.alert_states``), then encode the registry. Goal: well under a second for 500 probes (a
Prometheus scrape timeout is 10 s by default; the event loop is held for the encoding part).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio
from prometheus_client import generate_latest

from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.alerts.manager import AlertManager
from tracecanary.daemon.alerts.policy import AlertsSettings
from tracecanary.daemon.observe.metrics import Metrics
from tracecanary.daemon.store.base import RunRecord, RunStatus
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.probes.base import ProbeSpec


def probes(n: int) -> list[ProbeSpec]:
    return [ProbeSpec.model_validate({"id": f"probe-{i:04d}", "kind": "http",
                                      "tags": ["maintenance"] if i % 10 == 5 else []}) for i in range(n)]


def failing_run(p: ProbeSpec, i: int) -> RunRecord:
    findings = [Finding(type=t, message="x", severity=Verdict.FAIL) for t in ("trace.missing", "response")]
    return RunRecord(run_id=f"r{i}", probe_id=p.id, kind="http", attempt=1, first_run_id=f"r{i}",
                     trace_id=f"{i + 1:032x}", started_ns=time.time_ns(), finished_ns=time.time_ns() + 10**8,
                     status=RunStatus.FINISHED, verdict=Verdict.FAIL, findings=findings, final=True, span_count=12,
                     time_to_verdict_s=0.1)


async def bench(n: int, scrapes: int) -> None:
    specs = probes(n)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(f"sqlite:///{Path(tmp) / 'b.db'}")
        await store.open()
        try:
            settings = AlertsSettings.model_validate({
                "channels": {"hook": {"type": "webhook", "url": "http://127.0.0.1:9/hook"}},  # queued, never sent
                "policies": {"default": {"channels": ["hook"], "failure_threshold": 1}},
                "silences": [{"tags": ["maintenance"], "start": "2020-01-01T00:00:00Z"}]})
            alerts = AlertManager(store, settings)
            metrics = Metrics()
            t0 = time.perf_counter()
            metrics.register(specs)
            register_ms = (time.perf_counter() - t0) * 1000
            for i, p in enumerate(specs):
                run = failing_run(p, i)
                metrics.record_run(p, run)
                if i % 10 == 0:  # an open incident
                    await alerts.on_run_finished(p, run)
            results = {}
            for mode in ("inline", "thread"):
                results[mode] = await scrape_many(alerts, metrics, specs, scrapes, threaded=mode == "thread")
            states = await alerts.alert_states(specs)
            body = generate_latest(metrics.registry)
        finally:
            await store.aclose()
    lines = [ln for ln in body.decode().splitlines() if ln and not ln.startswith("#")]
    failing = sum(1 for s in states.values() if s == 1)
    silenced = sum(1 for s in states.values() if s == 2)
    print(f"probes={n} series={len(lines)} body_bytes={len(body)} register_ms={register_ms:.1f} "
          f"failing={failing} silenced={silenced}")
    for mode, (times_ms, read_ms, (stall_p99_ms, stall_max_ms)) in results.items():
        times_ms.sort()
        print(f"encoding {mode}: scrape_ms p50={statistics.median(times_ms):.1f} "
              f"p95={times_ms[int(0.95 * (len(times_ms) - 1))]:.1f} max={times_ms[-1]:.1f} "
              f"(alert states read p50={statistics.median(read_ms):.1f} ms); event-loop stall during the scrapes "
              f"p99={stall_p99_ms:.1f} max={stall_max_ms:.1f} ms")


async def scrape_many(alerts: AlertManager, metrics: Metrics, specs: list[ProbeSpec], scrapes: int, *,
                      threaded: bool) -> tuple[list[float], list[float], tuple[float, float]]:
    """What GET /metrics does, ``scrapes`` times, while a 1 ms ticker measures the event loop's longest stall."""
    times_ms: list[float] = []
    read_ms: list[float] = []
    stalls_ms: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await anyio.sleep(0.001)
            stalls_ms.append((time.perf_counter() - t0 - 0.001) * 1000)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        for _ in range(scrapes):
            t0 = time.perf_counter()
            states = await alerts.alert_states(specs)
            t1 = time.perf_counter()
            metrics.set_alert_states(states)
            if threaded:
                await anyio.to_thread.run_sync(generate_latest, metrics.registry)
            else:
                generate_latest(metrics.registry)
            read_ms.append((t1 - t0) * 1000)
            times_ms.append((time.perf_counter() - t0) * 1000)
        done.set()
    stalls_ms.sort()
    return times_ms, read_ms, (stalls_ms[int(0.99 * (len(stalls_ms) - 1))], stalls_ms[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 probes, 10 scrapes")
    parser.add_argument("--probes", type=int, default=500)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    n, scrapes = (100, 10) if args.quick else (args.probes, args.scrapes)
    anyio.run(bench, n, scrapes)


if __name__ == "__main__":
    main()
