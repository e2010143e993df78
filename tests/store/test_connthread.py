"""The SQLite connection thread: one thread owns the connection, calls run in order, none is lost."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from tracecanary.daemon.store.connthread import ConnectionThread

pytestmark = pytest.mark.anyio


def _schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
    conn.commit()


def _insert(key: str) -> Callable[[sqlite3.Connection], int]:
    def insert(conn: sqlite3.Connection) -> int:
        n = conn.execute("INSERT INTO t VALUES (?)", (key,)).rowcount
        conn.commit()
        return n

    return insert


def _keys(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT k FROM t ORDER BY rowid")]


async def test_calls_run_in_order_on_one_thread_that_is_not_the_loop(tmp_path: Path) -> None:
    ct = ConnectionThread(str(tmp_path / "c.db"))
    await ct.start(_schema)
    try:
        async with anyio.create_task_group() as tg:
            for k in "abcde":
                tg.start_soon(ct.call, _insert(k))  # started in this order: queued in this order
        assert await ct.call(_keys) == list("abcde")
        idents = {await ct.call(lambda _c: threading.get_ident()) for _ in range(3)}
        assert len(idents) == 1 and threading.get_ident() not in idents
    finally:
        await ct.aclose()


async def test_errors_reach_their_caller_and_the_thread_goes_on(tmp_path: Path) -> None:
    ct = ConnectionThread(str(tmp_path / "c.db"))
    await ct.start(_schema)
    try:
        assert await ct.call(_insert("a")) == 1
        with pytest.raises(sqlite3.IntegrityError):
            await ct.call(_insert("a"))
        assert await ct.call(_insert("b")) == 1
    finally:
        await ct.aclose()


async def test_a_cancelled_caller_abandons_its_wait_not_its_call(tmp_path: Path) -> None:
    ct = ConnectionThread(str(tmp_path / "c.db"))
    await ct.start(_schema)
    gate = threading.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ct.call, lambda _c: gate.wait(10))  # holds the thread until released
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as inner:
                    inner.start_soon(ct.call, _insert("cancelled-caller"))
                    await anyio.wait_all_tasks_blocked()
                    scope.cancel()
            assert scope.cancelled_caught
            gate.set()
        assert await ct.call(_keys) == ["cancelled-caller"]
    finally:
        gate.set()
        await ct.aclose()


async def test_close_runs_the_calls_made_before_it_then_refuses_more(tmp_path: Path) -> None:
    ct = ConnectionThread(str(tmp_path / "c.db"))
    await ct.start(_schema)
    results: list[int] = []

    async def insert(k: str) -> None:
        results.append(await ct.call(_insert(k)))

    async with anyio.create_task_group() as tg:
        for k in "xyz":
            tg.start_soon(insert, k)
        await anyio.wait_all_tasks_blocked()  # all three queued
        await ct.aclose()
    assert results == [1, 1, 1]
    await ct.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="not open"):
        await ct.call(_keys)
    with sqlite3.connect(tmp_path / "c.db") as other:
        assert _keys(other) == list("xyz")


async def test_a_connection_that_cannot_open_fails_start_and_ends_the_thread(tmp_path: Path) -> None:
    ct = ConnectionThread(str(tmp_path))  # a directory: sqlite cannot open it
    with anyio.fail_after(5), pytest.raises(sqlite3.OperationalError):
        await ct.start(_schema)
    with pytest.raises(RuntimeError, match="not open"):
        await ct.call(_keys)
