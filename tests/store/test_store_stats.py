"""The aggregate reads of the Store protocol (uptime, percentiles, strip), on every backend in BACKENDS."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.store.test_store import BACKENDS
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.store.base import RunRecord, RunStatus, Store
from tracecanary.daemon.store.stats import (
    DAY_NS,
    DURATION_BINS_S,
    HOUR_NS,
    RunStats,
    Segment,
    chunks,
    missing_ranges,
    plan,
)
from tracecanary.daemon.store.urls import open_store

pytestmark = pytest.mark.anyio
S = 10**9


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(BACKENDS[request.param](request, tmp_path))
    await s.open()
    yield s
    await s.aclose()


def _run(probe: str, started_ns: int, verdict: Verdict | None, duration_s: float = 0.1, *, final: bool = True,
         status: RunStatus = RunStatus.FINISHED) -> RunRecord:
    rid = f"r{probe}{started_ns}"
    return RunRecord(run_id=rid, probe_id=probe, kind="http", attempt=1, first_run_id=rid, trace_id="ab" * 16,
                     started_ns=started_ns, status=status, verdict=verdict, final=final,
                     finished_ns=started_ns + int(duration_s * S))


def test_plan_splits_days_hours_and_raw_edges() -> None:
    day0 = 20_000 * DAY_NS
    since, until = day0 - 90 * 60 * S, day0 + 2 * DAY_NS + 30 * 60 * S + 5 * HOUR_NS
    assert plan(since, until) == [
        Segment(None, since, day0 - HOUR_NS), Segment("hour", day0 - HOUR_NS, day0),
        Segment("day", day0, day0 + 2 * DAY_NS), Segment("hour", day0 + 2 * DAY_NS, day0 + 2 * DAY_NS + 5 * HOUR_NS),
        Segment(None, day0 + 2 * DAY_NS + 5 * HOUR_NS, until),
    ]
    assert plan(day0 + S, day0 + 2 * S) == [Segment(None, day0 + S, day0 + 2 * S)]
    assert missing_ranges(HOUR_NS, 0, 4 * HOUR_NS, {HOUR_NS}) == [(0, HOUR_NS), (2 * HOUR_NS, 4 * HOUR_NS)]
    # a cold fill goes two days at a time (the store is not held for seconds)
    assert chunks([(HOUR_NS, 0, 3 * DAY_NS), (DAY_NS, 0, DAY_NS)]) == [
        [(HOUR_NS, 0, 2 * DAY_NS)], [(HOUR_NS, 2 * DAY_NS, 3 * DAY_NS)], [(DAY_NS, 0, DAY_NS)]]


def test_quantile_interpolates_inside_the_bin() -> None:
    s = RunStats()
    i = next(i for i, b in enumerate(DURATION_BINS_S) if b >= 0.1)
    for _ in range(100):
        s.add(i, 1, 0, 0)
    lo, hi = DURATION_BINS_S[i - 1], DURATION_BINS_S[i]
    assert s.quantile_s(0.95) == pytest.approx(lo + (hi - lo) * 0.95)
    assert RunStats().quantile_s(0.95) is None and RunStats().uptime is None


async def test_run_stats_over_rollups_and_edges_match_raw(store: Store) -> None:
    now = time.time_ns()
    # 3 days of runs every 10 minutes: 2 probes; p1 fails every 4th, p2 is unknown every 5th
    for i in range(3 * 24 * 6):
        t = now - (i + 1) * 600 * S
        await store.finish_run(_run("p1", t, Verdict.FAIL if i % 4 == 0 else Verdict.PASS, 0.05 + (i % 10) * 0.1))
        await store.finish_run(_run("p2", t, Verdict.UNKNOWN if i % 5 == 0 else Verdict.DEGRADED, 2.0))
    await store.finish_run(_run("p1", now - 30 * S, Verdict.FAIL, final=False))  # a retried attempt: not counted
    await store.insert_run(_run("p1", now - 20 * S, None, status=RunStatus.RUNNING))
    for _ in range(2):  # the second read comes from the rollups the first one filled
        stats = await store.run_stats(now - 2 * DAY_NS, now)
        p1, p2 = stats[("p1", 0)], stats[("p2", 0)]
        assert p1.runs == 2 * 24 * 6 and p1.down == 72 and p1.uptime == pytest.approx(216 / 288)
        assert p2.unknown == 58 and p2.up == 230 and p2.uptime == 1.0
        assert 0.85 <= (p1.quantile_s(0.95) or 0) <= 1.0 and 2.0 <= (p2.quantile_s(0.5) or 0) <= 3.0
    # a late write to a rolled-up hour is seen
    await store.finish_run(_run("p1", now - 25 * HOUR_NS - 7 * S, Verdict.FAIL))
    assert (await store.run_stats(now - 2 * DAY_NS, now))[("p1", 0)].down == 73
    one = await store.run_stats(now - HOUR_NS, now, probe_id="p2")
    assert set(one) == {("p2", 0)} and one[("p2", 0)].runs == 6


async def test_run_stats_buckets_for_charts(store: Store) -> None:
    now = time.time_ns()
    since = (now // HOUR_NS + 1) * HOUR_NS - DAY_NS  # hour-aligned: 23 whole hours and the current one
    for i in range(48):
        await store.finish_run(_run("p", since + i * 1800 * S + S, Verdict.PASS if i % 2 else Verdict.ERROR))
    for _ in range(2):
        buckets = await store.run_stats(since, now, probe_id="p", bucket_ns=HOUR_NS)
        assert sorted(k for _, k in buckets) == list(range(24))
        assert all(s.uptime == 0.5 for (_, k), s in buckets.items() if since + (k + 1) * HOUR_NS < now)
    minutes = await store.run_stats(since, since + HOUR_NS, probe_id="p", bucket_ns=300 * S)
    assert sorted(k for _, k in minutes) == [0, 6]
    with pytest.raises(ValueError, match="multiple of an hour"):
        await store.run_stats(since + S, now, bucket_ns=HOUR_NS)


async def test_recent_and_latest_runs(store: Store) -> None:
    now = time.time_ns()
    for i in range(5):
        await store.finish_run(_run("a", now - i * S, Verdict.PASS))
    await store.insert_run(_run("b", now, None, status=RunStatus.RUNNING))
    recent = await store.recent_runs(["a", "b", "c"], limit=3)
    assert [h.started_ns for h in recent["a"]] == [now, now - S, now - 2 * S] and recent["c"] == []
    assert recent["b"][0].status is RunStatus.RUNNING and recent["b"][0].verdict is None
    latest = await store.latest_runs(["a", "b", "c"])
    assert set(latest) == {"a", "b"} and latest["a"].started_ns == now and latest["a"].response is None


async def test_retention_clears_rollups(store: Store) -> None:
    now = time.time_ns()
    await store.finish_run(_run("p", now - 3 * DAY_NS, Verdict.PASS))
    assert (await store.run_stats(now - 7 * DAY_NS, now))[("p", 0)].runs == 1
    assert await store.apply_retention(max_age_s=86400, max_runs_per_probe=100) == 1
    assert await store.run_stats(now - 7 * DAY_NS, now) == {}


async def test_retention_keeps_later_rollups_warm(store: Store) -> None:
    now = time.time_ns()
    for i in range(5):
        await store.finish_run(_run("p", now - (i + 1) * DAY_NS, Verdict.PASS))
    assert (await store.run_stats(now - 7 * DAY_NS, now))[("p", 0)].runs == 5
    assert await store.apply_retention(max_age_s=30 * 86400, max_runs_per_probe=3) == 2
    assert (await store.run_stats(now - 7 * DAY_NS, now))[("p", 0)].runs == 3


async def test_postgres_replicas_see_each_others_late_writes(postgres_url: str) -> None:
    """Replicas keep sums of whole buckets in memory only while the database's rollup version holds."""
    a, b = open_store(postgres_url), open_store(postgres_url)
    await a.open()
    await b.open()
    try:
        now = time.time_ns()
        await a.finish_run(_run("p", now - 2 * DAY_NS, Verdict.PASS))
        assert (await a.run_stats(now - 7 * DAY_NS, now))[("p", 0)].runs == 1
        await b.finish_run(_run("p", now - 2 * DAY_NS + 1, Verdict.FAIL))  # a late write by the other replica
        stats = (await a.run_stats(now - 7 * DAY_NS, now))[("p", 0)]
        assert (stats.runs, stats.down) == (2, 1)
    finally:
        await a.aclose()
        await b.aclose()
