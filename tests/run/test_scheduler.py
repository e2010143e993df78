"""The scheduler: stable phase, cron across DST in America/Los_Angeles, overlap policies, reload."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import anyio.abc
import pytest

from tracecanary.daemon.run.scheduler import (
    OverlapSkipped,
    Scheduler,
    cron_next_wall,
    every_next_wall,
    phase_fraction,
)
from tracecanary.probes.base import ProbeSpec
from tracecanary.probes.http import HttpProbe

LA = ZoneInfo("America/Los_Angeles")


def _spec(probe_id: str = "p", **kw: Any) -> ProbeSpec:
    return HttpProbe.model_validate({"id": probe_id, "request": {"url": "http://127.0.0.1:1/"}, **kw})


def _la(*args: int, fold: int = 0) -> float:
    return datetime(*args, tzinfo=LA, fold=fold).timestamp()  # type: ignore[misc]


def _cron_series(expr: str, start: float, n: int) -> list[str]:
    out, t = [], start
    for _ in range(n):
        t = cron_next_wall(expr, "America/Los_Angeles", t)
        out.append(datetime.fromtimestamp(t, LA).isoformat())
    return out


def test_phase_is_stable_and_spread() -> None:
    assert phase_fraction("orders-webhook") == phase_fraction("orders-webhook")
    fractions = [phase_fraction(f"probe-{i}") for i in range(1000)]
    assert 0 <= min(fractions) < 0.01 and 0.99 < max(fractions) < 1
    t = every_next_wall("orders-webhook", 60.0, 0.1, 1_000_000.0)
    assert t >= 1_000_000.0 and t - 1_000_000.0 <= 60
    assert (t % 60) == pytest.approx(phase_fraction("orders-webhook") * 6.0)
    assert every_next_wall("orders-webhook", 60.0, 0.1, t) == t


def test_cron_daily_keeps_local_time_across_spring_forward() -> None:
    series = _cron_series("0 8 * * *", _la(2026, 3, 6, 12), 3)
    assert series == ["2026-03-07T08:00:00-08:00", "2026-03-08T08:00:00-07:00", "2026-03-09T08:00:00-07:00"]


def test_cron_in_skipped_hour_runs_once_after_the_gap() -> None:
    series = _cron_series("30 2 * * *", _la(2026, 3, 7, 12), 2)
    assert series == ["2026-03-08T03:00:00-07:00", "2026-03-09T02:30:00-07:00"]


def test_cron_fixed_hour_runs_once_on_fall_back() -> None:
    series = _cron_series("30 1 * * *", _la(2026, 10, 31, 12), 2)
    assert series == ["2026-11-01T01:30:00-07:00", "2026-11-02T01:30:00-08:00"]


def test_cron_wildcard_hour_runs_on_both_passes_of_fall_back() -> None:
    series = _cron_series("*/30 * * * *", _la(2026, 11, 1, 0, 50), 5)
    assert series == [
        "2026-11-01T01:00:00-07:00", "2026-11-01T01:30:00-07:00",
        "2026-11-01T01:00:00-08:00", "2026-11-01T01:30:00-08:00", "2026-11-01T02:00:00-08:00",
    ]
    stamps = [datetime.fromisoformat(s).timestamp() for s in series]
    assert {b - a for a, b in itertools.pairwise(stamps)} == {1800.0}


def test_cron_hourly_across_spring_forward_has_no_phantom_hour() -> None:
    series = _cron_series("0 * * * *", _la(2026, 3, 8, 0, 10), 3)
    assert series == ["2026-03-08T01:00:00-08:00", "2026-03-08T03:00:00-07:00", "2026-03-08T04:00:00-07:00"]


@pytest.mark.anyio
async def test_next_run_with_a_wall_clock_just_before_dst() -> None:
    now = [_la(2026, 3, 8, 1, 59)]
    sched = Scheduler(_noop, wall=lambda: now[0])
    sched.set_probes([_spec("cron-probe", cron="0 * * * *", timezone="America/Los_Angeles"),
                      _spec("paused", every="1m", pause=True),
                      _spec("later", every="1m", jitter=0, start_at=datetime(2026, 3, 9, tzinfo=UTC))])
    nxt = sched.next_run("cron-probe")
    assert nxt is not None and nxt.astimezone(LA).isoformat() == "2026-03-08T03:00:00-07:00"
    assert nxt - datetime.fromtimestamp(now[0], UTC) == timedelta(minutes=1)
    assert sched.next_run("paused") is None
    assert sched.next_run("later") == datetime(2026, 3, 9, tzinfo=UTC)
    assert sched.next_run("unknown") is None


async def _noop(spec: ProbeSpec, scheduled_at: float, first_run_id: str) -> None:
    return None


class Recorder:
    """A fire callback that records calls and can hold runs open until released."""

    def __init__(self, hold: bool = False) -> None:
        self.calls: list[tuple[str, float]] = []
        self.hold = hold
        self.release = anyio.Event()
        self.changed = anyio.Event()
        self.active = 0
        self.max_active = 0

    async def __call__(self, spec: ProbeSpec, scheduled_at: float, first_run_id: str) -> None:
        self.calls.append((spec.id, scheduled_at))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.changed.set()
        try:
            if self.hold:
                await self.release.wait()
        finally:
            self.active -= 1

    async def until(self, cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
        with anyio.fail_after(timeout_s):
            while not cond():
                self.changed = anyio.Event()
                await self.changed.wait()


class Counter:
    """Counts callback hits; ``until(n)`` waits (bounded) for the n-th."""

    def __init__(self) -> None:
        self.n = 0
        self._event = anyio.Event()

    def hit(self, probe_id: str) -> None:
        self.n += 1
        self._event.set()

    async def until(self, n: int, timeout_s: float = 5.0) -> None:
        with anyio.fail_after(timeout_s):
            while self.n < n:
                self._event = anyio.Event()
                await self._event.wait()


async def _running(sched: Scheduler, body: Callable[[], Awaitable[None]]) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        await body()
        sched.stop()


@pytest.mark.anyio
async def test_every_fires_on_its_grid_and_reports_lateness() -> None:
    rec = Recorder()
    lateness: list[float] = []
    sched = Scheduler(rec, on_lateness=lambda pid, s: lateness.append(s))
    sched.set_probes([_spec("a", every="100ms", jitter="50%"), _spec("b", every="100ms", jitter="50%")])

    async def body() -> None:
        await rec.until(lambda: len(rec.calls) >= 6)

    await _running(sched, body)
    per_probe = {pid: sorted(t for p, t in rec.calls if p == pid) for pid in ("a", "b")}
    for pid, times in per_probe.items():
        assert len(times) >= 2
        assert times[1] - times[0] == pytest.approx(0.1, abs=1e-6)
        assert times[0] % 0.1 == pytest.approx(phase_fraction(pid) * 0.05, abs=1e-6)
    assert lateness and max(lateness) < 0.1


@pytest.mark.anyio
async def test_overlap_skip_counts_skipped_ticks() -> None:
    rec = Recorder(hold=True)
    skips = Counter()
    sched = Scheduler(rec, on_skip=skips.hit)
    sched.set_probes([_spec("s", every="50ms", overlap="skip")])

    async def body() -> None:
        await rec.until(lambda: len(rec.calls) == 1)
        await skips.until(3)
        assert sched.skipped("s") >= 3
        assert len(rec.calls) == 1 and sched.running("s") == 1
        rec.release.set()

    await _running(sched, body)


@pytest.mark.anyio
async def test_overlap_queue_keeps_at_most_one_pending() -> None:
    rec = Recorder(hold=True)
    skips = Counter()
    sched = Scheduler(rec, on_skip=skips.hit)
    sched.set_probes([_spec("q", every="50ms", overlap="queue")])

    async def body() -> None:
        await rec.until(lambda: len(rec.calls) == 1)
        await skips.until(2)  # one tick queued, later ones skipped
        sched.set_probes([_spec("q", every="1h", overlap="queue")])  # no more ticks while we watch
        rec.release.set()
        await rec.until(lambda: len(rec.calls) == 2)

    await _running(sched, body)
    assert rec.max_active == 1 and len(rec.calls) == 2


@pytest.mark.anyio
async def test_overlap_allow_runs_concurrently() -> None:
    rec = Recorder(hold=True)
    sched = Scheduler(rec)
    sched.set_probes([_spec("c", every="30ms", overlap="allow")])

    async def body() -> None:
        await rec.until(lambda: rec.active >= 3)
        rec.release.set()

    await _running(sched, body)
    assert rec.max_active >= 3 and sched.skipped("c") == 0


@pytest.mark.anyio
async def test_reload_keeps_unchanged_reschedules_changed_drops_removed() -> None:
    sched = Scheduler(_noop)
    keep, change, drop = _spec("keep", every="1h"), _spec("change", every="1h"), _spec("drop", every="1h")
    sched.set_probes([keep, change, drop])
    before = sched.next_run("keep")
    sched.set_probes([_spec("keep", every="1h"), _spec("change", every="10s", jitter=0), _spec("new", every="1m")])
    assert sched.next_run("keep") == before
    changed = sched.next_run("change")
    assert changed is not None and changed.timestamp() % 10 == 0
    assert sched.next_run("drop") is None and sched.next_run("new") is not None
    restarted = Scheduler(_noop)
    restarted.set_probes([keep])
    assert restarted.next_run("keep") == before  # phase survives a restart


@pytest.mark.anyio
async def test_run_now_owns_filter_and_stop_drains() -> None:
    rec = Recorder(hold=True)
    sched = Scheduler(rec, owns=lambda pid: pid != "theirs")
    sched.set_probes([_spec("mine", every="1h"), _spec("theirs", every="20ms")])
    done = anyio.Event()

    async def runner(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await sched.run(task_status=task_status)
        done.set()

    async with anyio.create_task_group() as tg:
        await tg.start(runner)
        assert sched.run_now("mine")  # fired: the new run's id
        await rec.until(lambda: len(rec.calls) == 1)
        with pytest.raises(OverlapSkipped):  # skip policy: already running
            sched.run_now("mine")
        assert sched.next_run("theirs") is None
        sched.stop()
        await anyio.sleep(0.05)
        assert not done.is_set()  # still draining the in-flight run
        rec.release.set()
        with anyio.fail_after(5):
            await done.wait()
    assert [pid for pid, _ in rec.calls] == ["mine"]


@pytest.mark.anyio
async def test_missed_ticks_after_a_wall_clock_jump_are_dropped_not_replayed() -> None:
    t0, jump = anyio.current_time(), [0.0]
    rec = Recorder()
    sched = Scheduler(rec, wall=lambda: 1_000_000.0 + (anyio.current_time() - t0) + jump[0])
    sched.set_probes([_spec("j", every="100ms", jitter=0)])

    async def body() -> None:
        await rec.until(lambda: len(rec.calls) == 1)
        jump[0] = 10.0  # the machine slept: the wall clock moved on, the monotonic one did not
        await rec.until(lambda: len(rec.calls) == 4)

    await _running(sched, body)
    times = [t for _, t in rec.calls]
    assert times[2] - times[1] == pytest.approx(10.0, abs=0.15)  # one leap to the current grid slot
    assert times[3] - times[2] == pytest.approx(0.1, abs=1e-6)


@pytest.mark.anyio
async def test_reloads_do_not_grow_the_timer_heap() -> None:
    sched = Scheduler(_noop)
    for i in range(50):
        sched.set_probes([_spec(f"p{j}", every=f"{10 + i}m") for j in range(20)])
    assert len(sched._heap) <= 2 * 20 + 64
    assert all(sched.next_run(f"p{j}") is not None for j in range(20))
