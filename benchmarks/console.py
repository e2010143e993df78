"""The console's overview under load: server time of ``GET /`` with 500 probes and 1M stored runs.

    python benchmarks/console.py [--quick] [--postgres]

A SQLite store is filled with N runs spread over the last 30 days across P probes (one run every
~40 min per probe at full size; 3% fail, 1% unknown, durations 50 ms–3 s), then the real dashboard
(aiohttp on loopback) is asked for the overview at each range. Figures: the handler's server time
(a middleware times it: store reads, aggregation and rendering) on the first request of a range
(rollups filled from the runs) and the median of the next ones (rollups read); the probe page too.
Goal: < 300 ms warm at 500 probes / 1M runs. --quick: 50 probes, 100k runs.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path

import aiohttp
import anyio
from aiohttp import web

from tracecanary.assertions.spans import Span
from tracecanary.daemon.cluster.membership import SingleMembership
from tracecanary.daemon.config.secrets import Secrets
from tracecanary.daemon.store.base import Store
from tracecanary.daemon.store.sqlite import sqlite_path
from tracecanary.daemon.store.urls import open_store
from tracecanary.daemon.web.api import ApiAuth
from tracecanary.daemon.web.control import AlertsControl, DemoControl
from tracecanary.daemon.web.dashboard.views import dashboard_routes
from tracecanary.probes.base import ProbeSpec

DAY_NS = 86_400 * 10**9
KINDS = ("http", "github_webhook", "slack_mention", "kafka")


class BenchControl:
    """The Control the dashboard reads (the daemon's DaemonControl needs a running engine)."""

    def __init__(self, store: Store, probes: list[ProbeSpec]) -> None:
        self.store = store
        self.alerts: AlertsControl | None = None
        self.demo: DemoControl | None = None
        self._probes = probes
        self.public_status = False
        self.membership = SingleMembership()

    def probes(self) -> list[ProbeSpec]:
        return self._probes

    def secrets(self) -> Secrets:
        return Secrets()

    def next_run(self, probe_id: str) -> datetime | None:
        return None

    async def run_now(self, probe_id: str) -> str:
        raise KeyError(probe_id)

    def live_spans(self, trace_id: str) -> list[Span]:
        return []

    def links_for(self, trace_id: str, run_id: str, probe_id: str) -> dict[str, str]:
        return {}

    def passive(self, probe_id: str) -> None:
        return None

    def cluster_role(self) -> str | None:
        return None


COLUMNS = "run_id, probe_id, kind, attempt, first_run_id, trace_id, started_ns, finished_ns, status, verdict, final"


def batches(n_probes: int, n_runs: int) -> Iterator[list[tuple[object, ...]]]:
    """The runs, about 100k rows at a time."""
    rng = random.Random(17)
    now = time.time_ns()
    per_probe = n_runs // n_probes
    step = 30 * DAY_NS // per_probe
    rows: list[tuple[object, ...]] = []
    for p in range(n_probes):
        for i in range(per_probe):
            started = now - (i + 1) * step + rng.randrange(step // 2)
            r = rng.random()
            verdict = "fail" if r < 0.03 else "unknown" if r < 0.04 else "pass"
            rid = f"p{p}-{i}"
            rows.append((rid, f"probe-{p:03d}", KINDS[p % len(KINDS)], 1, rid, "ab" * 16, started,
                         started + int(rng.uniform(0.05, 3.0) * 1e9), "finished", verdict, 1))
        if len(rows) >= 100_000 or p == n_probes - 1:
            yield rows
            rows = []


def fill(url: str, n_probes: int, n_runs: int) -> float:
    """Insert the runs straight through the driver (the store's schema, created by open()); seconds taken."""
    t0 = time.perf_counter()
    if url.startswith("sqlite"):
        conn = sqlite3.connect(sqlite_path(url))
        for rows in batches(n_probes, n_runs):
            conn.executemany(f"INSERT INTO runs ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
            conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(url) as pg, pg.cursor() as cur:
            for rows in batches(n_probes, n_runs):
                with cur.copy(f"COPY runs ({COLUMNS}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            cur.execute("ANALYZE runs")
    return time.perf_counter() - t0


async def measure(n_probes: int, n_runs: int, repeats: int, postgres: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = None
        if postgres:
            from tracecanary.demo.pgcluster import FAST_SETTINGS, start_postgres

            cluster = start_postgres(FAST_SETTINGS)
            url = cluster.create_database("console")
        else:
            url = f"sqlite:///{Path(tmp) / 'tc.db'}"
        try:
            await _measure(url, n_probes, n_runs, repeats)
        finally:
            if cluster is not None:
                cluster.stop()


async def _measure(url: str, n_probes: int, n_runs: int, repeats: int) -> None:
    store = open_store(url)
    await store.open()
    await store.aclose()
    print(f"{url.split(':')[0]}: filled {n_runs:,} runs over 30 days for {n_probes} probes in "
          f"{fill(url, n_probes, n_runs):.1f} s")
    store = open_store(url)
    await store.open()
    probes = [ProbeSpec.model_validate({"id": f"probe-{p:03d}", "kind": "http", "tags": [f"team-{p % 7}"],
                                        "every": "60s"}) for p in range(n_probes)]
    times: list[float] = []

    @web.middleware
    async def timer(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        t = time.perf_counter()
        resp = await handler(request)
        times.append(time.perf_counter() - t)
        return resp

    app = web.Application(middlewares=[timer])
    app.add_routes(dashboard_routes(BenchControl(store, probes), auth=ApiAuth(None, False)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as s:
            for path_qs in ("/?range=1h", "/?range=24h", "/?range=7d", "/?range=30d",
                            "/?range=24h&state=failing&q=probe-01", "/probes/probe-001?range=30d",
                            "/probes/probe-001?range=24h"):
                times.clear()
                for _ in range(repeats + 1):
                    async with s.get(f"http://127.0.0.1:{port}{path_qs}") as r:
                        assert r.status == 200, (path_qs, r.status, await r.text())
                        size = len(await r.read())
                cold, warm = times[0] * 1000, statistics.median(times[1:]) * 1000
                print(f"GET {path_qs:42s} first {cold:7.1f} ms   warm median {warm:6.1f} ms   "
                      f"(max {max(times[1:]) * 1000:.1f} ms, {size // 1024} KiB)")
    finally:
        await runner.cleanup()
        await store.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="50 probes, 100k runs")
    ap.add_argument("--postgres", action="store_true", help="the PostgreSQL store (a throwaway local cluster)")
    args = ap.parse_args()
    n_probes, n_runs, repeats = (50, 100_000, 3) if args.quick else (500, 1_000_000, 5)
    anyio.run(measure, n_probes, n_runs, repeats, args.postgres)


if __name__ == "__main__":
    main()
