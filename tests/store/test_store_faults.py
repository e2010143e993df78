"""The SQLite store's faults with real files: open refuses what it cannot write (bounded in time),
health checks find a deleted, replaced or read-only file, an old database is migrated. (Finding retry
chains pending is in the shared suite, test_store.py, with the ``run`` helper below.)"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from tests.daemon.harness import immutable
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.store.base import RunRecord, RunStatus, StoreFault
from tracecanary.daemon.store.migrations import MIGRATIONS
from tracecanary.daemon.store.postgres import PostgresStore
from tracecanary.daemon.store.sqlite import SqliteStore
from tracecanary.daemon.store.urls import open_store
from tracecanary.errors import StartupError

pytestmark = pytest.mark.anyio

SCHEMA_V1 = str(MIGRATIONS[0].sqlite)
"""The tables as the first release created them (before retry_at_ns and retry_aborted, before versioning)."""


def run(run_id: str, *, attempt: int = 1, first: str | None = None, final: bool = True, **kw: object) -> RunRecord:
    now = time.time_ns()
    r = RunRecord(run_id=run_id, probe_id="p", kind="http", attempt=attempt, first_run_id=first or run_id,
                  trace_id="ab" * 16, started_ns=now, status=RunStatus.FINISHED, finished_ns=now + 1,
                  verdict=Verdict.FAIL, final=final)
    for k, v in kw.items():
        setattr(r, k, v)
    return r


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(f"sqlite:///{tmp_path / 'tc.db'}")
    await s.open()
    yield s
    await s.aclose()


async def test_open_refuses_a_missing_folder_and_does_not_create_it(tmp_path: Path) -> None:
    with pytest.raises(StoreFault, match=r"folder .*/missing does not exist"):
        await SqliteStore(f"sqlite:///{tmp_path / 'missing' / 'tc.db'}").open()
    assert not (tmp_path / "missing").exists()


async def test_open_refuses_a_read_only_file_and_folder(tmp_path: Path) -> None:
    db = tmp_path / "tc.db"
    with closing(sqlite3.connect(db)) as con:
        con.executescript(SCHEMA_V1)
    with immutable(db), pytest.raises(StoreFault, match="is read-only"):
        await SqliteStore(f"sqlite:///{db}").open()
    folder = tmp_path / "ro"
    folder.mkdir()
    with immutable(folder), pytest.raises(StoreFault, match="is not writable"):
        await SqliteStore(f"sqlite:///{folder / 'tc.db'}").open()


async def test_open_is_bounded_when_another_process_holds_the_lock(tmp_path: Path) -> None:
    db = tmp_path / "tc.db"
    with closing(sqlite3.connect(db, isolation_level=None)) as other:
        other.execute("PRAGMA journal_mode=WAL")
        other.executescript(SCHEMA_V1)
        other.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with anyio.fail_after(10), pytest.raises(StoreFault, match=r"not opened within 0\.5s"):
            await SqliteStore(f"sqlite:///{db}", open_timeout_s=0.5).open()
        took_s = time.monotonic() - started
        other.execute("ROLLBACK")
    assert took_s < 5, took_s  # bounded by open_timeout_s, not by SQLite's 5 s busy timeout


def test_unknown_scheme_is_a_startup_error() -> None:
    with pytest.raises(StartupError, match="unknown URL scheme 'mysql'"):
        open_store("mysql://x")
    assert isinstance(open_store("postgresql://tc:pw@db:5432/tc"), PostgresStore)
    assert isinstance(open_store("postgres://db/tc"), PostgresStore)
    assert isinstance(open_store("sqlite://"), SqliteStore)


async def test_deleted_file_refuses_writes_until_a_file_is_back(store: SqliteStore, tmp_path: Path) -> None:
    db = tmp_path / "tc.db"
    assert await store.health() is None
    await store.insert_run(run("kept"))
    backup = tmp_path / "backup.db"
    with closing(sqlite3.connect(db)) as live, closing(sqlite3.connect(backup)) as copy:
        live.backup(copy)
    db.unlink()
    with pytest.raises(StoreFault, match="deleted or replaced"):  # refused at once, not lost in the inode
        await store.insert_run(run("refused"))
    reason = await store.health()
    assert reason is not None and "was deleted" in reason
    assert await store.health() == reason  # still gone
    shutil.copy(backup, tmp_path / "restore.tmp")
    os.replace(tmp_path / "restore.tmp", db)
    assert await store.health() is None  # re-opened
    await store.insert_run(run("after"))
    with closing(sqlite3.connect(db)) as con:
        assert {r[0] for r in con.execute("SELECT run_id FROM runs")} == {"kept", "after"}
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_a_file_renamed_back_is_the_same_store(store: SqliteStore, tmp_path: Path) -> None:
    db = tmp_path / "tc.db"
    db.rename(tmp_path / "moved.db")
    assert "was deleted" in (await store.health() or "")
    (tmp_path / "moved.db").rename(db)
    assert await store.health() is None
    await store.insert_run(run("r1"))


async def test_a_replaced_file_is_reported_then_re_opened(store: SqliteStore, tmp_path: Path) -> None:
    db = tmp_path / "tc.db"
    await store.insert_run(run("old"))
    other = tmp_path / "other.db"
    async with _opened(other) as s2:
        await s2.insert_run(run("other"))
    os.replace(other, db)
    reason = await store.health()
    assert reason is not None and "was replaced" in reason
    assert await store.health() is None
    assert [r.run_id for r in await store.list_runs()] == ["other"]  # the old WAL was not replayed into it


async def test_read_only_file_is_found_by_the_check_and_by_writes(store: SqliteStore, tmp_path: Path) -> None:
    db = tmp_path / "tc.db"
    await store.insert_run(run("r1"))
    with immutable(db, Path(f"{db}-wal")):
        assert "is read-only" in (await store.health() or "")
        with pytest.raises(StoreFault, match="cannot be written: I/O error"):
            await store.insert_run(run("r2"))
        assert [r.run_id for r in await store.list_runs()] == ["r1"]  # reads still work
    assert await store.health() is None
    await store.insert_run(run("r2"))


async def test_an_older_database_is_migrated_and_its_pending_chain_found(tmp_path: Path) -> None:
    db = tmp_path / "tc.db"
    with closing(sqlite3.connect(db)) as con:
        con.executescript(SCHEMA_V1)
        con.execute("INSERT INTO runs (run_id, probe_id, kind, attempt, first_run_id, trace_id, started_ns, "
                    "finished_ns, status, verdict, final) VALUES ('a1', 'p', 'http', 1, 'a1', 't', 1, 2, "
                    "'finished', 'fail', 0)")
        con.commit()
    async with _opened(db) as s:
        [pending] = await s.pending_retries()
    assert (pending.run_id, pending.retry_at_ns, pending.retry_aborted) == ("a1", None, None)
    with closing(sqlite3.connect(db)) as con:
        columns = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
    assert {"retry_at_ns", "retry_aborted"} <= columns


class _Opened:
    def __init__(self, path: Path) -> None:
        self.store = SqliteStore(f"sqlite:///{path}")

    async def __aenter__(self) -> SqliteStore:
        await self.store.open()
        return self.store

    async def __aexit__(self, *exc: object) -> None:
        await self.store.aclose()


def _opened(path: Path) -> _Opened:
    return _Opened(path)
