"""Finish extras: a statement written in the same statement as a finished run (PostgreSQL), so the kafka
member's results-outbox row costs no round trip of its own — and is never stored without its run."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from tests.store.test_guard import Events
from tests.store.test_store_faults import run as finished
from tracecanary.daemon.store.base import FinishExtra, FinishStatement, RunRecord
from tracecanary.daemon.store.guard import GuardedStore
from tracecanary.daemon.store.postgres import PostgresStore
from tracecanary.daemon.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(postgres_url)
    await s.open()
    async with s._pool.connection() as conn:  # type: ignore[union-attr]
        await conn.execute("CREATE TABLE side (run_id TEXT PRIMARY KEY, note TEXT NOT NULL)")
    yield s
    await s.aclose()


async def _side(url: str) -> dict[str, str]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return {r[0]: r[1] for r in await (await conn.execute("SELECT run_id, note FROM side")).fetchall()}


def _extra(note: str, only: str | None = None, suffix: str = "") -> FinishExtra:
    def extra(run: RunRecord) -> FinishStatement | None:
        if only is not None and run.probe_id != only:
            return None
        return ("INSERT INTO side (run_id, note) VALUES (%s, %s) ON CONFLICT (run_id) DO NOTHING",
                (run.run_id + suffix, note))
    return extra


async def test_extras_are_written_with_the_run_and_only_when_they_apply(store: PostgresStore, postgres_url: str) -> None:
    store.finish_extras.append(_extra("first", only="p"))
    runs = [finished(f"r{i}", probe_id="p" if i % 2 == 0 else "q") for i in range(6)]
    for run in runs:
        await store.insert_run(run)
        await store.finish_run(run)
    assert await _side(postgres_url) == {"r0": "first", "r2": "first", "r4": "first"}
    assert all([await store.get_run(r.run_id) is not None for r in runs])
    store.finish_extras.append(_extra("second", suffix="+"))  # two: a data-modifying CTE and the last statement
    run = finished("r9")
    await store.finish_run(run)
    side = await _side(postgres_url)
    assert side["r9"] == "first" and side["r9+"] == "second" and "r1+" not in side
    got = await store.get_run("r9")
    assert got is not None and got.verdict == run.verdict


async def test_an_extra_that_fails_leaves_the_run_unwritten_too(store: PostgresStore) -> None:
    store.finish_extras.append(lambda run: ("INSERT INTO side (run_id, note) VALUES (%s, NULL)", (run.run_id,)))
    run = finished("r1")
    with pytest.raises(psycopg.errors.NotNullViolation):
        await store.finish_run(run)
    assert await store.get_run("r1") is None  # one statement: neither was written


async def test_a_late_run_writes_its_extra_inside_the_rollup_transaction(store: PostgresStore,
                                                                          postgres_url: str) -> None:
    store.finish_extras.append(_extra("late"))
    run = finished("old", started_ns=time.time_ns() - 3 * 3600 * 10**9)  # into a complete hour
    await store.finish_run(run)
    assert await _side(postgres_url) == {"old": "late"} and await store.get_run("old") is not None


async def test_the_guard_hands_extras_to_postgres_and_to_a_replacement_store_but_not_to_sqlite(
        store: PostgresStore, postgres_url: str, tmp_path: Path) -> None:
    sqlite = SqliteStore(f"sqlite:///{tmp_path / 'tc.db'}")
    guard = GuardedStore(sqlite, Events())
    assert guard.add_finish_extra(_extra("g")) is False  # the caller writes its row itself
    guard.replace_inner(store)
    await guard.finish_run(finished("g1"))
    assert await _side(postgres_url) == {"g1": "g"}
