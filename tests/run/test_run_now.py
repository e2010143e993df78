"""'Run now' goes through the scheduler: real runs against a local target obey the overlap policy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import anyio
import anyio.abc
import pytest
from aiohttp import web

from tests.probes.helpers import serve
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.run.runner import Runner, RunnerDeps
from tracecanary.daemon.run.scheduler import OverlapSkipped, Scheduler
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.store.base import RunRecord, RunStatus
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.probes.base import ProbeSpec
from tracecanary.probes.http import HttpProbe

pytestmark = pytest.mark.anyio

HOUR_S = 3600.0


class Changes:
    """An event re-armed on every change; ``until`` waits (bounded) for a condition to hold."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def changed(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def until(self, cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
        with anyio.fail_after(timeout_s):
            while not cond():
                await self._event.wait()


@dataclass
class Target:
    """/slow holds every request until the test releases them."""

    changes: Changes
    waiting: int = 0
    hits: int = 0
    release: anyio.Event = field(default_factory=anyio.Event)

    async def slow(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.waiting += 1
        self.changes.changed()
        try:
            await self.release.wait()
        finally:
            self.waiting -= 1
            self.changes.changed()
        return web.json_response({"ok": True})


@dataclass
class Finished:
    """A RunHook recording every finished run."""

    changes: Changes
    runs: list[RunRecord] = field(default_factory=list)

    async def on_run_started(self, probe: ProbeSpec, run: RunRecord) -> None:
        self.changes.changed()

    async def on_run_finished(self, probe: ProbeSpec, run: RunRecord) -> None:
        self.runs.append(run)
        self.changes.changed()


@dataclass
class World:
    scheduler: Scheduler
    runner: Runner
    store: SqliteStore
    target: Target
    finished: Finished
    changes: Changes
    skips: list[str]


def _probe(url: str, overlap: str) -> ProbeSpec:
    return HttpProbe.model_validate({
        "id": "slow", "kind": "http", "every": "1h", "jitter": "0%", "overlap": overlap, "timeout": "10s",
        "request": {"url": f"{url}/slow"}, "expect": {"response": {"status": 200}},
    })


@asynccontextmanager
async def world(tmp_path: Path, overlap: str) -> AsyncIterator[World]:
    """A scheduler firing real runs; its wall clock puts the first hourly tick 300 ms after the probes are set
    (taken then, not before the store and server start: on a loaded machine those can outlast the lead)."""
    changes = Changes()
    target = Target(changes)
    app = web.Application()
    app.add_routes([web.get("/slow", target.slow)])
    t0 = [anyio.current_time()]
    start_wall = 1000 * HOUR_S - 0.3  # just before a grid instant of `every: 1h, jitter: 0%`
    store = SqliteStore(f"sqlite:///{tmp_path}/runs.db")
    await store.open()
    finished = Finished(changes)
    skips: list[str] = []
    try:
        async with serve(app) as url, aiohttp.ClientSession() as session, anyio.create_task_group() as tg:
            runner = Runner(RunnerDeps(store=store, buffer=TraceBuffer(), session=session, hooks=[finished]))

            async def fire(probe: ProbeSpec, scheduled_at: float, first_run_id: str) -> None:
                await runner.run_probe(probe, first_run_id=first_run_id)

            scheduler = Scheduler(fire, wall=lambda: start_wall + (anyio.current_time() - t0[0]),
                                  on_skip=skips.append)
            t0[0] = anyio.current_time()
            scheduler.set_probes([_probe(url, overlap)])  # computes the first tick from the wall clock
            await tg.start(scheduler.run)
            try:
                yield World(scheduler, runner, store, target, finished, changes, skips)
            finally:
                target.release.set()
                scheduler.stop()
    finally:
        await store.aclose()


async def _scheduled_run_in_flight(w: World) -> str:
    await w.changes.until(lambda: w.target.waiting == 1 and len(w.runner.in_flight) == 1)
    [run_id] = w.runner.in_flight
    return run_id


async def test_skip_refuses_a_manual_run_while_a_scheduled_one_is_in_flight(tmp_path: Path) -> None:
    async with world(tmp_path, "skip") as w:
        scheduled = await _scheduled_run_in_flight(w)
        with pytest.raises(OverlapSkipped, match="has a run in flight; its overlap policy is skip"):
            w.scheduler.run_now("slow")
        assert w.skips == ["slow"] and w.scheduler.skipped("slow") == 1  # counted like a skipped tick
        w.target.release.set()
        await w.changes.until(lambda: len(w.finished.runs) == 1 and w.scheduler.running("slow") == 0)
        assert [r.run_id for r in await w.store.list_runs("slow")] == [scheduled]
    assert [r.run_id for r in w.finished.runs] == [scheduled] and w.target.hits == 1


async def test_queue_starts_the_manual_run_under_its_id_once_the_scheduled_one_ends(tmp_path: Path) -> None:
    async with world(tmp_path, "queue") as w:
        scheduled = await _scheduled_run_in_flight(w)
        manual = w.scheduler.run_now("slow")
        assert manual != scheduled and await w.store.get_run(manual) is None  # queued, not started
        with pytest.raises(OverlapSkipped, match="a run is already queued; its overlap policy is queue"):
            w.scheduler.run_now("slow")
        assert w.target.waiting == 1 and w.scheduler.running("slow") == 1
        w.target.release.set()
        await w.changes.until(lambda: len(w.finished.runs) == 2)
        first, second = w.finished.runs
        assert (first.run_id, second.run_id) == (scheduled, manual)
        assert second.first_run_id == manual and second.verdict is Verdict.PASS
        stored = await w.store.get_run(manual)
        assert stored is not None and stored.status is RunStatus.FINISHED
    assert first.finished_ns is not None and second.started_ns >= first.finished_ns  # never overlapped


async def test_allow_runs_the_manual_run_beside_the_scheduled_one(tmp_path: Path) -> None:
    async with world(tmp_path, "allow") as w:
        scheduled = await _scheduled_run_in_flight(w)
        manual = w.scheduler.run_now("slow")
        await w.changes.until(lambda: w.target.waiting == 2)
        assert set(w.runner.in_flight) == {scheduled, manual} and w.scheduler.running("slow") == 2
        w.target.release.set()
        await w.changes.until(lambda: len(w.finished.runs) == 2)
    assert {r.run_id for r in w.finished.runs} == {scheduled, manual}
    assert all(r.verdict is Verdict.PASS for r in w.finished.runs) and w.skips == []
