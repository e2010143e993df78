"""The store guard over a real SQLite store: faults reported once, refused runs kept (bounded in
count, spans and time) and written on recovery, what cannot be kept counted lost with run ids, a
hanging health check reported instead of waited on."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from tests.daemon.harness import immutable
from tracecanary.assertions.spans import Span
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.store.base import RunRecord, RunStatus
from tracecanary.daemon.store.guard import GuardedStore, StoreHealthSettings
from tracecanary.daemon.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


@dataclass
class Events:
    """Records what the guard reports (the engine turns these into metrics, /readyz and alerts)."""

    errors: list[str] = field(default_factory=list)
    failing: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    lost: list[tuple[list[str], str]] = field(default_factory=list)

    def store_error(self, op: str, error: BaseException) -> None:
        self.errors.append(op)

    def store_failing(self, reason: str, error: BaseException) -> None:
        self.failing.append(reason)

    def store_recovered(self, was: str) -> None:
        self.recovered.append(was)

    def runs_lost(self, run_ids: list[str], why: str) -> None:
        self.lost.append((run_ids, why))


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def run(run_id: str, spans: int = 0) -> RunRecord:
    now = time.time_ns()
    return RunRecord(run_id=run_id, probe_id="p", kind="http", attempt=1, first_run_id=run_id, trace_id="ab" * 16,
                     started_ns=now, status=RunStatus.FINISHED, finished_ns=now + 1, verdict=Verdict.PASS,
                     spans=[Span(trace_id="ab" * 16, span_id=f"{i:016x}", parent_span_id=None, name="s")
                            for i in range(spans)])


@dataclass
class Setup:
    guard: GuardedStore
    events: Events
    clock: Clock
    db: Path


@pytest.fixture
async def guarded(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    settings = getattr(request, "param", None) or StoreHealthSettings()
    events, clock, db = Events(), Clock(), tmp_path / "tc.db"
    inner = SqliteStore(f"sqlite:///{db}")
    await inner.open()
    guard = GuardedStore(inner, events, settings, clock=clock)
    yield Setup(guard, events, clock, db)
    await guard.aclose()


def stored(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as con:
        return {r[0] for r in con.execute("SELECT run_id FROM runs")}


async def test_refused_runs_are_kept_and_written_on_recovery(guarded: Setup) -> None:
    g, ev = guarded.guard, guarded.events
    await g.finish_run(run("before"))
    with immutable(guarded.db, Path(f"{guarded.db}-wal")):
        await g.insert_run(r1 := run("r1"))  # refused: kept, not raised to the runner
        await g.finish_run(r1)
        await g.finish_run(run("r2"))
        assert [r.run_id for r in g.pending_runs] == ["r1", "r2"]
        assert await g.get_run("r1") is r1  # the API still finds it
        assert "is read-only" in (await g.check() or "")
        assert ev.errors[:3] == ["insert_run", "finish_run", "finish_run"] and "health" in ev.errors
        assert len(ev.failing) == 2  # the first write's cause, then the check's more precise one
        assert "is read-only" in ev.failing[-1] and g.failing == ev.failing[-1]
    assert await g.check() is None
    assert g.pending_runs == [] and g.failing is None and ev.recovered == [ev.failing[-1]]
    assert stored(guarded.db) == {"before", "r1", "r2"}
    assert ev.lost == []


@pytest.mark.parametrize("guarded", [StoreHealthSettings(max_pending_runs=2, max_pending_spans=10)],
                         indirect=True)
async def test_kept_runs_are_bounded_in_count_and_spans(guarded: Setup) -> None:
    g, ev = guarded.guard, guarded.events
    with immutable(guarded.db, Path(f"{guarded.db}-wal")):
        for i in range(3):
            await g.finish_run(run(f"r{i}"))
        assert [r.run_id for r in g.pending_runs] == ["r1", "r2"]
        assert ev.lost[0][0] == ["r0"] and "more than 2 runs" in ev.lost[0][1]
        await g.finish_run(run("big", spans=9))  # r1 + r2 + big = 3 runs, 9 spans: r1 goes for the count
        await g.finish_run(run("bigger", spans=5))  # 14 spans > 10: the oldest go until it fits
        assert [r.run_id for r in g.pending_runs] == ["bigger"]
        assert [ids for ids, _ in ev.lost] == [["r0"], ["r1"], ["r2", "big"]]
    assert await g.check() is None
    assert stored(guarded.db) == {"bigger"}


@pytest.mark.parametrize("guarded", [StoreHealthSettings(keep_runs_for=60.0)], indirect=True)
async def test_kept_runs_expire_into_lost_and_so_does_a_stop(guarded: Setup) -> None:
    g, ev, clock = guarded.guard, guarded.events, guarded.clock
    with immutable(guarded.db, Path(f"{guarded.db}-wal")):
        await g.finish_run(run("old"))
        clock.now_s += 30
        await g.finish_run(run("young"))
        clock.now_s += 31
        await g.check()
        assert [r.run_id for r in g.pending_runs] == ["young"]
        assert ev.lost == [(["old"], "the store failed for longer than keep_runs_for=60s")]
        await g.aclose()  # stopping while the store still fails: one last try, then lost, loudly
    assert ev.lost[-1] == (["young"], "the daemon stopped while the store was failing")


@pytest.mark.parametrize("guarded", [StoreHealthSettings(check_interval=0.05, check_timeout=0.3)], indirect=True)
async def test_a_hanging_check_is_a_fault_not_a_wait(guarded: Setup) -> None:
    g, ev = guarded.guard, guarded.events
    with closing(sqlite3.connect(guarded.db, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")  # the check's write waits on SQLite's busy timeout (5 s)
        async with anyio.create_task_group() as tg:
            await tg.start(g.run)
            with anyio.fail_after(10):
                while not ev.failing:
                    await anyio.sleep(0.02)
            other.execute("ROLLBACK")  # the disk "comes back": the pending check completes, a later one passes
            with anyio.fail_after(10):
                while not ev.recovered:
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
    assert ev.failing == ["the store did not answer a health check within 0.3s (hung disk?)"]
    assert g.failing is None
