"""SQLite results store (WAL). The default backend: one file, no server.

One plain ``sqlite3`` connection on its own thread (``connthread.py``) serves reads and writes in
order; writes go through the group commit (``groupcommit.py``).

Faults are loud (``sqlite_files.py``): opening proves a write within ``open_timeout_s`` or raises
:class:`StoreFault`; a storage error on any later call is a :class:`StoreFault` naming the file and
the cause; :meth:`SqliteStore.health` checks the path still holds the file that was opened (a deleted
file would swallow every later write without an error) and that it is writable.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio

from tracecanary.daemon.store import sqlite_stats
from tracecanary.daemon.store.base import RunRecord, RunStatus, StoreFault
from tracecanary.daemon.store.connthread import ConnectionThread
from tracecanary.daemon.store.groupcommit import GroupCommit, apply_batch
from tracecanary.daemon.store.rows import (
    ABORT_RUNNING,
    HEALTH_NS,
    INSERT_RUN,
    INSERT_RUN_SPANS,
    KV_PUT,
    LIGHT_COLUMNS,
    RETENTION_BY_AGE,
    RETENTION_BY_COUNT,
    UPDATE_RUN,
    dumps,
    row_to_run,
    run_values,
)
from tracecanary.daemon.store.snapshot import encode_spans
from tracecanary.daemon.store.sqlbase import SqlStore
from tracecanary.daemon.store.sqlite_files import (
    FileIdentity,
    access_problem,
    fault_of,
    is_fault,
    remove_sidecars,
    sidecars_of,
)
from tracecanary.daemon.store.sqlite_schema import setup_connection
from tracecanary.daemon.store.stats import RollupCache, RunHead, RunStats, chunks, segments

log = logging.getLogger("tracecanary.store")
T = TypeVar("T")
OPEN_TIMEOUT_S = 15.0
"""Opening (connect, pragmas, schema, a proving write) must finish within this, or it is a fault."""


def sqlite_path(url: str) -> str:
    """``sqlite:////abs/path.db`` → ``/abs/path.db``; ``sqlite:///rel.db`` → ``rel.db``; ``sqlite://`` → memory."""
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):] or ":memory:"
    if url in ("sqlite://", "sqlite:"):
        return ":memory:"
    if "://" in url:
        raise ValueError(f"not a sqlite URL: {url!r}")
    return url


class SqliteStore(SqlStore):
    """The Store protocol on one SQLite file (WAL mode, one connection on its own thread).

    Writes go through a group commit: concurrent writers share one commit on the connection thread,
    and each write is committed (durable) before its call returns.
    """

    def __init__(self, url: str, *, open_timeout_s: float = OPEN_TIMEOUT_S) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self.open_timeout_s = open_timeout_s
        self._conn: ConnectionThread | None = None
        self._writes = GroupCommit(self._run_batch)
        self._identity: FileIdentity | None = None
        """The inode the connection opened (None in memory)."""
        self._gone: str | None = None
        """Set while the path no longer holds the opened file: writes are refused (they would be lost)."""
        self._rollups = RollupCache()
        """Sums of whole rollup buckets (``stats.py``); touched on the connection thread only."""
        self._heads = sqlite_stats.HeadCache()
        """Each probe's newest runs for the overview; touched on the connection thread only."""
        self._sidecars: dict[str, FileIdentity] = {}
        """The ``-wal`` and ``-shm`` files the connection opened beside the database."""

    @property
    def in_memory(self) -> bool:
        return self.path == ":memory:"

    def _connection(self) -> ConnectionThread:
        if self._conn is None:
            if self._gone is not None:  # closed to re-open a changed file, and that failed
                raise StoreFault(self._gone)
            raise RuntimeError("store is not open")
        return self._conn

    async def open(self) -> None:
        if self._conn is not None:
            return
        self._conn, self._identity = await self._connect()

    async def _connect(self) -> tuple[ConnectionThread, FileIdentity | None]:
        """A started connection and the inode it opened; :class:`StoreFault` when it cannot write."""
        if not self.in_memory:
            problem = access_problem(self.path)
            if problem is not None:
                raise StoreFault(problem)
        identity: list[FileIdentity] = []

        def setup(conn: sqlite3.Connection) -> None:
            setup_connection(conn, self.path)
            if not self.in_memory:
                identity.append(FileIdentity.of(self.path))
                self._sidecars = sidecars_of(self.path)

        conn = ConnectionThread(self.path)
        try:
            await conn.start(setup, timeout_s=self.open_timeout_s)
        except TimeoutError:
            raise StoreFault(f"{self.path}: not opened within {self.open_timeout_s:g}s "
                             "(hung file system, or a lock nobody releases)") from None
        except Exception as e:
            if is_fault(e):
                raise fault_of(e, self.path) from e
            raise
        return conn, identity[0] if identity else None

    async def _run_batch(self, batch: list[Any]) -> None:
        identity, path = self._identity, self.path

        def run(conn: sqlite3.Connection) -> None:
            # One stat per commit, on the connection thread: a write never lands in a deleted or
            # replaced file, even between two health checks.
            if identity is not None:
                try:
                    now: FileIdentity | None = FileIdentity.of(path)
                except FileNotFoundError:
                    now = None
                if now != identity:
                    raise StoreFault(f"database file {path} was deleted or replaced (write refused)")
            apply_batch(conn, batch)

        await self._connection().call(run)

    async def _commit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` applied in the next group commit; a storage error is a :class:`StoreFault`."""
        if self._gone is not None:
            raise StoreFault(self._gone)
        try:
            return await self._writes.write(fn)
        except Exception as e:
            if is_fault(e):
                raise fault_of(e, self.path) from e
            raise

    async def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        """Execute one statement in the next group commit; returns its row count."""
        return await self._commit(lambda conn: conn.execute(sql, args).rowcount)

    async def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of one read, run on the connection thread (after the writes queued before it)."""
        return await self._read(lambda conn: conn.execute(sql, args).fetchall())

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` run on the connection thread (reads only); a storage error is a :class:`StoreFault`."""
        try:
            return await self._connection().call(fn)
        except Exception as e:
            if is_fault(e):
                raise fault_of(e, self.path) from e
            raise

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    # --- health --------------------------------------------------------------------------------
    async def health(self) -> str | None:
        """None when the opened file is still at its path and takes a write; else why not.

        A deleted file keeps taking writes through the open connection and loses them all, so the
        inode is compared first: once the path is empty or holds another file, writes are refused
        and the fault reported; at a later check a file found there (restored, replaced, or an empty
        one created by the operator) is re-opened and the store is healthy again.
        """
        if self._conn is None and self._gone is None:
            raise RuntimeError("store is not open")
        if self.in_memory:
            return None
        try:
            identity: FileIdentity | None = FileIdentity.of(self.path)
        except FileNotFoundError:
            identity = None
        except OSError as e:
            return str(fault_of(e, self.path))
        if identity is None:
            self._gone = f"database file {self.path} was deleted (writes refused until a file is there again)"
            return self._gone
        if identity == self._identity and self._conn is not None:
            self._gone = None  # still (or again: renamed back) the file that was opened
        else:
            if self._gone is None:  # first seen: report it (writes since went to the old file)
                self._gone = (f"database file {self.path} was replaced by another file "
                              "(writes refused; it is re-opened at the next check)")
                return self._gone
            try:
                await self._reopen()
            except StoreFault as e:
                self._gone = f"database file {self.path} changed; re-opening it failed: {e}"
                return self._gone
            log.warning("store re-opened path=%s (the file was deleted or replaced)", self.path)
        problem = access_problem(self.path)
        if problem is not None:
            return problem
        try:
            await self._write(KV_PUT, (HEALTH_NS, "checked_ns", str(time.time_ns())))
        except StoreFault as e:
            return str(e)
        return None

    async def _reopen(self) -> None:
        """Close the connection to the old inode, then connect to the file now at the path.

        The old connection's ``-wal`` and ``-shm`` sit at the names the new file uses, and SQLite
        would replay the old WAL into the new file, so they go first (only if they are still the
        files the old connection opened).
        """
        old, self._conn = self._conn, None
        if old is not None:
            with anyio.move_on_after(self.open_timeout_s):
                await old.aclose()
        # SQLite leaves them when its file was moved (SQLITE_READONLY_DBMOVED): remove ours, never
        # another file's, so the old WAL is not replayed into the new database.
        await anyio.to_thread.run_sync(remove_sidecars, self.path, self._sidecars)
        self._conn, self._identity = await self._connect()
        self._gone = None

    # --- runs: the span snapshot, retention and events differ from sqlbase's shared SQL ----------
    # (and the in-memory heads of the console: every run write drops its probe's, in write order)
    async def insert_run(self, run: RunRecord) -> None:
        values = run_values(run)

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(INSERT_RUN, values)
            self._heads.drop(run.probe_id)

        await self._commit(insert)

    async def abort_running(self, reason: str) -> int:
        args = (RunStatus.ABORTED.value, reason, time.time_ns(), RunStatus.RUNNING.value)

        def abort(conn: sqlite3.Connection) -> int:
            self._heads.clear()
            return int(conn.execute(ABORT_RUNNING, args).rowcount)

        return await self._commit(abort)

    async def finish_run(self, run: RunRecord) -> None:
        spans = tuple(run.spans)
        values = run_values(run)

        def upsert(conn: sqlite3.Connection) -> None:
            # Encoded on the connection thread: a 10k-span snapshot takes 60-90 ms, too long for the loop.
            blob = encode_spans(spans) if spans else None
            if conn.execute(UPDATE_RUN, (*values[1:], blob, run.run_id)).rowcount == 0:
                conn.execute(INSERT_RUN_SPANS, (*values, blob))
            sqlite_stats.invalidate(conn, run.started_ns, self._rollups)
            self._heads.drop(run.probe_id)

        await self._commit(upsert)

    async def apply_retention(self, *, max_age_s: float, max_runs_per_probe: int) -> int:
        horizon = time.time_ns() - int(max_age_s * 1e9)

        def delete(conn: sqlite3.Connection) -> int:
            c1 = conn.execute(RETENTION_BY_AGE, (horizon,))
            starts = [r[0] for r in conn.execute(RETENTION_BY_COUNT + " RETURNING started_ns",
                                                 (max_runs_per_probe,)).fetchall()]
            if c1.rowcount or starts:  # only the rollups of the deleted runs' time go (the rest stays warm)
                self._heads.clear()
                sqlite_stats.clear_before(conn, max([horizon, *starts]) + 1, self._rollups)
            return int(c1.rowcount) + len(starts)

        return await self._commit(delete)

    # --- the console's aggregates (stats.py, sqlite_stats.py) -----------------------------------
    async def run_stats(
        self, since_ns: int, until_ns: int, *, probe_id: str | None = None, bucket_ns: int | None = None
    ) -> dict[tuple[str, int], RunStats]:
        segs = segments(since_ns, until_ns, bucket_ns)
        gaps = await self._read(lambda c: sqlite_stats.missing(c, segs))
        for part in chunks(gaps):
            await self._commit(partial(sqlite_stats.fill, gaps=part, cache=self._rollups))
        return await self._read(
            lambda c: sqlite_stats.read_stats(c, segs, since_ns, probe_id, bucket_ns, self._rollups))

    async def recent_runs(self, probe_ids: list[str], *, limit: int) -> dict[str, list[RunHead]]:
        return await self._read(lambda c: sqlite_stats.recent(c, probe_ids, limit, self._heads))

    async def latest_runs(self, probe_ids: list[str]) -> dict[str, RunRecord]:
        rows = await self._read(lambda c: sqlite_stats.newest_rows(c, probe_ids, LIGHT_COLUMNS, self._heads))
        return {r[1]: row_to_run(r) for r in rows}

    # --- events --------------------------------------------------------------------------------
    async def append_event(self, kind: str, data: dict[str, Any]) -> int:
        args = (time.time_ns(), kind, dumps(data))
        return await self._commit(
            lambda conn: int(conn.execute("INSERT INTO events (time_ns, kind, data) VALUES (?, ?, ?)", args)
                             .lastrowid or 0))
