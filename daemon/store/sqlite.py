"""SQLite results store (WAL). The default backend: one file, no server.

One plain ``sqlite3`` connection on its own thread (``connthread.py``) serves reads and writes in
order; writes go through the group commit (``groupcommit.py``).

Faults are loud (``sqlite_files.py``): opening proves a write within ``open_timeout_s`` or raises
:class:`StoreFault`; a storage error on any later call is a :class:`StoreFault` naming the file and
the cause; :meth:`SqliteStore.health` checks the path still holds the file that was opened (a deleted
file would swallow every later write without an error) and that it is writable.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.store import sqlite_stats
from tracecanary.daemon.store.base import ProbeRow, RunRecord, RunStatus, StoreFault
from tracecanary.daemon.store.connthread import ConnectionThread
from tracecanary.daemon.store.groupcommit import GroupCommit, apply_batch
from tracecanary.daemon.store.snapshot import decode_spans, encode_spans
from tracecanary.daemon.store.sqlite_files import (
    FileIdentity,
    access_problem,
    fault_of,
    is_fault,
    remove_sidecars,
    sidecars_of,
)
from tracecanary.daemon.store.sqlite_schema import (
    HEALTH_NS,
    INSERT_RUN,
    INSERT_RUN_SPANS,
    N_COLUMNS,
    PENDING_RETRIES,
    RUN_COLUMNS,
    UPDATE_RUN,
    setup_connection,
)
from tracecanary.daemon.store.stats import RollupCache, RunHead, RunStats
from tracecanary.errors import StartupError

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


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)



class SqliteStore:
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
        self._sidecars: dict[str, FileIdentity] = {}
        """The ``-wal`` and ``-shm`` files the connection opened beside the database."""
        self._rollups = RollupCache()
        """Sums of whole rollup buckets (``stats.py``); touched on the connection thread only."""
        self._heads = sqlite_stats.HeadCache()
        """Each probe's newest runs for the overview; touched on the connection thread only."""

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
            setup_connection(conn)
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
            await self._write("INSERT INTO kv (namespace, key, value) VALUES (?, 'checked_ns', ?) "
                              "ON CONFLICT(namespace, key) DO UPDATE SET value=excluded.value",
                              (HEALTH_NS, str(time.time_ns())))
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

    # --- probes --------------------------------------------------------------------------------
    async def upsert_probe(self, probe_id: str, kind: str, spec: dict[str, Any], tags: list[str]) -> None:
        await self._write(
            "INSERT INTO probes (probe_id, kind, spec, tags, updated_ns) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(probe_id) DO UPDATE SET kind=excluded.kind, spec=excluded.spec, tags=excluded.tags, "
            "updated_ns=excluded.updated_ns",
            (probe_id, kind, _dumps(spec), _dumps(tags), time.time_ns()),
        )

    async def list_probes(self) -> list[ProbeRow]:
        rows = await self._query("SELECT probe_id, kind, spec, tags, updated_ns FROM probes ORDER BY probe_id")
        return [ProbeRow(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4]) for r in rows]

    # --- runs ----------------------------------------------------------------------------------
    def _run_values(self, run: RunRecord) -> tuple[Any, ...]:
        return (
            run.run_id, run.probe_id, run.kind, run.attempt, run.first_run_id, run.trace_id, run.started_ns,
            run.finished_ns, run.status.value, run.abort_reason, run.verdict.value if run.verdict else None,
            1 if run.final else 0, _dumps([f.model_dump(mode="json") for f in run.findings]),
            _dumps(run.response) if run.response is not None else None,
            _dumps(run.trace_report) if run.trace_report is not None else None,
            _dumps(run.side_effects), _dumps(run.outputs), _dumps(run.links), run.log, run.span_count,
            run.time_to_verdict_s, run.retry_at_ns, run.retry_aborted,
        )

    async def insert_run(self, run: RunRecord) -> None:
        values = self._run_values(run)

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(INSERT_RUN, values)
            self._heads.drop(run.probe_id)

        await self._commit(insert)

    async def finish_run(self, run: RunRecord) -> None:
        spans = tuple(run.spans)
        values = self._run_values(run)

        def upsert(conn: sqlite3.Connection) -> None:
            # Encoded on the connection thread: a 10k-span snapshot takes 60-90 ms, too long for the loop.
            blob = encode_spans(spans) if spans else None
            if conn.execute(UPDATE_RUN, (*values[1:], blob, run.run_id)).rowcount == 0:
                conn.execute(INSERT_RUN_SPANS, (*values, blob))
            sqlite_stats.invalidate(conn, run.started_ns, self._rollups)
            self._heads.drop(run.probe_id)

        await self._commit(upsert)

    def _row_to_run(self, r: Any, spans_blob: bytes | None = None) -> RunRecord:
        run = RunRecord(
            run_id=r[0], probe_id=r[1], kind=r[2], attempt=r[3], first_run_id=r[4], trace_id=r[5],
            started_ns=r[6], finished_ns=r[7], status=RunStatus(r[8]), abort_reason=r[9],
            verdict=Verdict(r[10]) if r[10] else None, final=bool(r[11]),
            findings=[Finding.model_validate(f) for f in json.loads(r[12])],
            response=json.loads(r[13]) if r[13] else None,
            trace_report=json.loads(r[14]) if r[14] else None,
            side_effects=json.loads(r[15]), outputs=json.loads(r[16]), links=json.loads(r[17]), log=r[18],
            span_count=r[19], time_to_verdict_s=r[20], retry_at_ns=r[21], retry_aborted=r[22],
        )
        if spans_blob:
            run.spans = decode_spans(spans_blob)
        return run

    async def get_run(self, run_id: str, *, with_spans: bool = False) -> RunRecord | None:
        cols = RUN_COLUMNS + (", spans" if with_spans else "")
        rows = await self._query(f"SELECT {cols} FROM runs WHERE run_id=?", (run_id,))
        if not rows:
            return None
        r = rows[0]
        return self._row_to_run(r, r[N_COLUMNS] if with_spans else None)

    async def list_runs(
        self, probe_id: str | None = None, *, limit: int = 50, before_ns: int | None = None
    ) -> list[RunRecord]:
        where: list[str] = []
        args: list[Any] = []
        if probe_id is not None:
            where.append("probe_id=?")
            args.append(probe_id)
        if before_ns is not None:
            where.append("started_ns<?")
            args.append(before_ns)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {RUN_COLUMNS} FROM runs {clause} ORDER BY started_ns DESC LIMIT ?"
        rows = await self._query(sql, (*args, limit))
        return [self._row_to_run(r) for r in rows]

    async def runs_for_trace(self, trace_id: str) -> list[RunRecord]:
        sql = f"SELECT {RUN_COLUMNS} FROM runs WHERE trace_id=? OR run_id=? ORDER BY started_ns"
        rows = await self._query(sql, (trace_id, trace_id))
        return [self._row_to_run(r) for r in rows]

    async def run_stats(
        self, since_ns: int, until_ns: int, *, probe_id: str | None = None, bucket_ns: int | None = None
    ) -> dict[tuple[str, int], RunStats]:
        segs = sqlite_stats.segments(since_ns, until_ns, bucket_ns)
        gaps = await self._read(lambda c: sqlite_stats.missing(c, segs))
        if gaps:
            await self._commit(lambda c: sqlite_stats.fill(c, gaps, self._rollups))
        return await self._read(
            lambda c: sqlite_stats.read_stats(c, segs, since_ns, probe_id, bucket_ns, self._rollups))

    async def recent_runs(self, probe_ids: list[str], *, limit: int) -> dict[str, list[RunHead]]:
        return await self._read(lambda c: sqlite_stats.recent(c, probe_ids, limit, self._heads))

    async def latest_runs(self, probe_ids: list[str]) -> dict[str, RunRecord]:
        rows = await self._read(lambda c: sqlite_stats.newest_rows(c, probe_ids, sqlite_stats.LIGHT_COLUMNS, self._heads))
        return {r[1]: self._row_to_run(r) for r in rows}

    async def abort_running(self, reason: str) -> int:
        args = (RunStatus.ABORTED.value, reason, time.time_ns(), RunStatus.RUNNING.value)

        def abort(conn: sqlite3.Connection) -> int:
            self._heads.clear()
            return int(conn.execute("UPDATE runs SET status=?, abort_reason=?, finished_ns=COALESCE(finished_ns, ?), "
                                    "verdict=NULL WHERE status=?", args).rowcount)

        return await self._commit(abort)

    async def pending_retries(self) -> list[RunRecord]:
        out = []
        for r in await self._query(PENDING_RETRIES):
            run = self._row_to_run(r)
            run.retry_aborted = run.retry_aborted or r[N_COLUMNS]
            out.append(run)
        return out

    async def apply_retention(self, *, max_age_s: float, max_runs_per_probe: int) -> int:
        horizon = time.time_ns() - int(max_age_s * 1e9)

        def delete(conn: sqlite3.Connection) -> int:
            c1 = conn.execute("DELETE FROM runs WHERE started_ns < ? AND status != ?", (horizon, "running"))
            starts = [r[0] for r in conn.execute(
                "DELETE FROM runs WHERE run_id IN (SELECT run_id FROM (SELECT run_id, ROW_NUMBER() OVER "
                "(PARTITION BY probe_id ORDER BY started_ns DESC) AS rn FROM runs) WHERE rn > ?) RETURNING started_ns",
                (max_runs_per_probe,),
            ).fetchall()]
            if c1.rowcount or starts:  # only the rollups of the deleted runs' time go (the rest stays warm)
                self._heads.clear()
                sqlite_stats.clear_before(conn, max([horizon, *starts]) + 1, self._rollups)
            return int(c1.rowcount) + len(starts)

        return await self._commit(delete)

    # --- events --------------------------------------------------------------------------------
    async def append_event(self, kind: str, data: dict[str, Any]) -> int:
        args = (time.time_ns(), kind, _dumps(data))
        return await self._commit(
            lambda conn: int(conn.execute("INSERT INTO events (time_ns, kind, data) VALUES (?, ?, ?)", args)
                             .lastrowid or 0))

    async def list_events(self, kind: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        if kind is None:
            sql, args = "SELECT id, time_ns, kind, data FROM events ORDER BY id DESC LIMIT ?", (limit,)
        else:
            sql = "SELECT id, time_ns, kind, data FROM events WHERE kind=? ORDER BY id DESC LIMIT ?"
            args = (kind, limit)  # type: ignore[assignment]
        rows = await self._query(sql, args)
        return [{"id": r[0], "time_ns": r[1], "kind": r[2], "data": json.loads(r[3])} for r in rows]

    # --- key-value -----------------------------------------------------------------------------
    async def kv_get(self, namespace: str, key: str) -> Any | None:
        rows = await self._query("SELECT value FROM kv WHERE namespace=? AND key=?", (namespace, key))
        return json.loads(rows[0][0]) if rows else None

    async def kv_put(self, namespace: str, key: str, value: Any) -> None:
        await self._write(
            "INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT(namespace, key) DO UPDATE SET value=excluded.value",
            (namespace, key, _dumps(value)),
        )

    async def kv_put_if_absent(self, namespace: str, key: str, value: Any) -> bool:
        inserted = await self._write(
            "INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?) ON CONFLICT(namespace, key) DO NOTHING",
            (namespace, key, _dumps(value)),
        )
        return inserted == 1

    async def kv_delete(self, namespace: str, key: str) -> None:
        await self._write("DELETE FROM kv WHERE namespace=? AND key=?", (namespace, key))

    async def kv_list(self, namespace: str) -> dict[str, Any]:
        rows = await self._query("SELECT key, value FROM kv WHERE namespace=?", (namespace,))
        return {r[0]: json.loads(r[1]) for r in rows}


def open_store(url: str, *, open_timeout_s: float = OPEN_TIMEOUT_S) -> SqliteStore:
    """The store for a URL (``sqlite:///…``; ``postgresql://`` arrives with scale-out).

    An unknown scheme is a :class:`StartupError` (exit 2) naming the schemes there are.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else "sqlite"
    if scheme in ("postgres", "postgresql"):
        raise StartupError(f"store {url!r}: the Postgres backend is not built yet; use sqlite:///PATH")
    if scheme != "sqlite":
        raise StartupError(f"store {url!r}: unknown URL scheme {scheme!r}; use sqlite:///PATH "
                           "(sqlite:////abs/path.db: four slashes for an absolute path)")
    return SqliteStore(url, open_timeout_s=open_timeout_s)
