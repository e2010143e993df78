"""PostgreSQL results store: ``postgresql://user:password@host:port/db`` (also ``postgres://``).

psycopg 3 with a small connection pool (``psycopg_pool``), autocommit: each statement is its own
transaction unless a method needs more. The schema is versioned (``migrations.py``) and brought up to
date at open; a database newer than this binary is a startup error.

Connection loss: a call whose connection or server fails (refused, reset, admin shutdown, no answer
within ``op_timeout_s``) is retried after each delay of ``retry_delays_s``, with the pool's idle
connections checked in between; if every attempt fails it is a :class:`StoreFault` naming the server
and the cause, which the guard (``guard.py``) counts, reports on ``/readyz`` and retries for kept runs.
A write whose connection broke after the server committed it may apply twice on retry: every write
here is an upsert or keyed insert except ``append_event``, whose rows are an append-only log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import anyio
import psycopg
import psycopg_pool

from tracecanary.daemon.store import postgres_stats
from tracecanary.daemon.store.base import FinishExtra, RunRecord, StoreFault
from tracecanary.daemon.store.postgres_schema import (
    FAULTS,
    RETRYABLE,
    UPSERT_RUN,
    display_url,
    migrate,
    one_line,
    pg_sql,
)
from tracecanary.daemon.store.rows import (
    HEALTH_NS,
    KV_PUT,
    RETENTION_BY_AGE,
    RETENTION_BY_COUNT,
    dumps,
    row_to_run,
    run_values,
)
from tracecanary.daemon.store.snapshot import encode_spans
from tracecanary.daemon.store.sqlbase import SqlStore
from tracecanary.daemon.store.stats import RunHead, RunStats, chunks, segments

log = logging.getLogger("tracecanary.store")
# The pool's reconnect warnings are multi-line and repeat, while the store reports each fault in one line
# (and the guard raises it on /readyz, the metrics and the alert): only the pool's errors are kept.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
T = TypeVar("T")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]

OPEN_TIMEOUT_S = 15.0
OP_TIMEOUT_S = 10.0
RETRY_DELAYS_S = (0.1, 0.5, 2.0)
POOL_SIZE = 10
RECONNECT_TIMEOUT_S = 60.0
"""How long the pool keeps re-opening one connection in the background; after it, connections are opened
again on demand (an outage of any length ends with the server back)."""
INLINE_SPANS = 200
"""Snapshots of more spans are encoded on a worker thread (10k spans take 60-90 ms)."""


class PostgresStore(SqlStore):
    """The Store protocol on a PostgreSQL database."""

    def __init__(self, url: str, *, open_timeout_s: float = OPEN_TIMEOUT_S, op_timeout_s: float = OP_TIMEOUT_S,
                 retry_delays_s: Sequence[float] = RETRY_DELAYS_S, pool_size: int = POOL_SIZE,
                 reconnect_timeout_s: float = RECONNECT_TIMEOUT_S) -> None:
        self.url = url
        self.where = display_url(url)
        self.open_timeout_s = open_timeout_s
        self.op_timeout_s = op_timeout_s
        self.retry_delays_s = tuple(retry_delays_s)
        self.pool_size = pool_size
        self.reconnect_timeout_s = reconnect_timeout_s
        self._pool: psycopg_pool.AsyncConnectionPool[Conn] | None = None
        self._down = False
        """The last call ended in a connection fault: the next one probes the server before waiting on the pool."""
        self.finish_extras: list[FinishExtra] = []
        """Statements written in the same statement as each finished run (``base.FinishExtra``)."""
        self._rollups = postgres_stats.VersionedCache()
        """Sums of whole rollup buckets, kept while the database's rollup version holds."""

    # --- connections -----------------------------------------------------------------------------
    def _new_pool(self) -> psycopg_pool.AsyncConnectionPool[Conn]:
        return psycopg_pool.AsyncConnectionPool(
            self.url, min_size=min(2, self.pool_size), max_size=self.pool_size, open=False,
            timeout=self.op_timeout_s, reconnect_timeout=self.reconnect_timeout_s, name="tracecanary-store",
            kwargs={"autocommit": True, "connect_timeout": max(1, round(self.op_timeout_s)),
                    "application_name": "tracecanary"},
        )

    async def open(self) -> None:
        """Reach the server (with the call's backoff), open the pool, migrate, prove a write; a
        :class:`StoreFault` naming the cause (the caller names the store), bounded by ``open_timeout_s``."""
        if self._pool is not None:
            return
        pool = self._new_pool()
        try:
            with anyio.fail_after(self.open_timeout_s):
                await self._reach(time.monotonic() + self.open_timeout_s)
                await pool.open(wait=True, timeout=self.open_timeout_s)
                async with pool.connection() as conn:
                    applied = await migrate(conn, self.where)
                    await conn.execute(pg_sql(KV_PUT), (HEALTH_NS, "opened_ns", str(time.time_ns())))
        except BaseException as e:
            with anyio.CancelScope(shield=True):
                await pool.close(timeout=1.0)
            if isinstance(e, TimeoutError | psycopg_pool.PoolTimeout):
                raise StoreFault(f"not opened within {self.open_timeout_s:g}s (server not answering)") from e
            if isinstance(e, FAULTS):
                raise StoreFault(one_line(e)) from e
            raise
        if applied:
            log.info("store schema migrated store=%s versions=%s", self.where, ",".join(map(str, applied)))
        self._pool = pool

    async def _reach(self, deadline_s: float) -> None:
        """A first connection, retried after each of ``retry_delays_s`` that ends before ``deadline_s``
        (monotonic); the last cause as a StoreFault."""
        cause = await self._unreachable()
        attempts = 1
        for delay_s in self.retry_delays_s:
            if cause is None or time.monotonic() + delay_s >= deadline_s:
                break
            log.debug("store not reachable, retrying store=%s in_s=%g error=%s", self.where, delay_s, one_line(cause))
            await anyio.sleep(delay_s)
            cause = await self._unreachable()
            attempts += 1
        if cause is not None:
            raise StoreFault(f"{one_line(cause)} ({attempts} attempt{'s' if attempts > 1 else ''})") from cause

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close(timeout=5.0)

    def _fault_of(self, e: BaseException, tries: str) -> StoreFault:
        """The one-line fault after the last attempt: the server, what happened, ``tries``."""
        if isinstance(e, TimeoutError | psycopg_pool.PoolTimeout):
            return StoreFault(f"{self.where}: no answer within {self.op_timeout_s:g}s (server hung or unreachable; "
                              f"{tries})")
        return StoreFault(f"{self.where}: connection lost: {one_line(e)} ({tries})")

    async def _unreachable(self) -> BaseException | None:
        """Why a new connection to the server fails (refused, timed out, rejected), or None when it works:
        the pool only says it waited, this names the cause."""
        try:
            with anyio.fail_after(self.op_timeout_s):
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=max(1, round(self.op_timeout_s)))
                await conn.close()
        except (psycopg.Error, TimeoutError) as e:
            return e
        return None

    async def _call(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """``fn`` on a pooled connection, bounded by ``op_timeout_s``. After a connection fault the server
        is probed with a new connection after each of ``retry_delays_s`` and ``fn`` retried once it answers;
        then a :class:`StoreFault`. While the store is down (the last call failed so), a call probes first
        and fails at once: callers are not held up by backoff during an outage."""
        if self._pool is None:
            raise RuntimeError("store is not open")
        pool, started = self._pool, time.monotonic()
        last: BaseException | None = await self._unreachable() if self._down else None
        delays = (*self.retry_delays_s, None) if last is None else (None,)
        for attempt, delay_s in enumerate(delays, start=1):
            if last is None:
                try:
                    with anyio.fail_after(self.op_timeout_s):
                        async with pool.connection() as conn:
                            result = await fn(conn)
                    self._down = False
                    return result
                except RETRYABLE as e:
                    last = e
                except psycopg.errors.ReadOnlySqlTransaction as e:
                    raise StoreFault(f"{self.where}: the server is read-only (a standby?): {one_line(e)}") from e
            if delay_s is None:
                break
            log.warning("store connection fault, retrying store=%s attempt=%d in_s=%g error=%s",
                        self.where, attempt, delay_s, one_line(last))
            await anyio.sleep(delay_s)
            last = await self._unreachable()
            if last is None:
                with anyio.move_on_after(self.op_timeout_s):
                    await pool.check()  # drop the idle connections that died with the one that failed
        self._down = True
        assert last is not None
        tries = f"{attempt} attempt{'s' if attempt > 1 else ''} over {time.monotonic() - started:.1f}s"
        raise self._fault_of(last, tries) from last

    async def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        async def run(conn: Conn) -> int:
            return (await conn.execute(pg_sql(sql), args)).rowcount
        return await self._call(run)

    async def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        async def run(conn: Conn) -> list[Any]:
            return await (await conn.execute(pg_sql(sql), args)).fetchall()
        return await self._call(run)

    async def health(self) -> str | None:
        """None when the server answers a round trip and takes a write; else why not, in one line."""
        try:
            await self._query("SELECT 1")
            await self._write(KV_PUT, (HEALTH_NS, "checked_ns", str(time.time_ns())))
        except StoreFault as e:
            return str(e)
        return None

    # --- what differs from sqlbase's shared SQL ------------------------------------------------------
    async def finish_run(self, run: RunRecord) -> None:
        spans = tuple(run.spans)
        if len(spans) > INLINE_SPANS:
            blob: bytes | None = await anyio.to_thread.run_sync(encode_spans, spans)
        else:
            blob = encode_spans(spans) if spans else None
        values = (*run_values(run), blob)
        sql, args = UPSERT_RUN, values
        extras = [st for extra in self.finish_extras if (st := extra(run)) is not None]
        if extras:  # one statement: the run's upsert and the extras as data-modifying CTEs (atomic, one round trip)
            *ctes, (last_sql, last_args) = extras
            sql = "WITH finished_run AS (" + UPSERT_RUN + " RETURNING 1)" + "".join(
                f", finish_extra_{i} AS ({cte_sql})" for i, (cte_sql, _) in enumerate(ctes)) + " " + last_sql
            args = (*values, *(a for _, cte_args in ctes for a in cte_args), *last_args)

        async def run_(conn: Conn) -> None:
            if not postgres_stats.late(run.started_ns, time.time_ns()):
                await conn.execute(sql, args)
                return
            async with conn.transaction():  # into a complete hour: its rollups go with the write
                await conn.execute(sql, args)
                await postgres_stats.invalidate(conn, run.started_ns)
        await self._call(run_)

    async def apply_retention(self, *, max_age_s: float, max_runs_per_probe: int) -> int:
        horizon = time.time_ns() - int(max_age_s * 1e9)

        async def delete(conn: Conn) -> int:
            async with conn.transaction():
                c1 = await conn.execute(pg_sql(RETENTION_BY_AGE), (horizon,))
                c2 = await conn.execute(pg_sql(RETENTION_BY_COUNT + " RETURNING started_ns"), (max_runs_per_probe,))
                starts = [int(r[0]) for r in await c2.fetchall()]
                if c1.rowcount or starts:  # the rollups of the deleted runs' time go (the rest stays)
                    until = max([horizon, *starts]) + 1
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (postgres_stats.ROLLUP_LOCK_KEY,))
                    await conn.execute("DELETE FROM run_rollup_filled WHERE bucket_ns < %s", (until,))
                    await conn.execute("DELETE FROM run_rollup WHERE bucket_ns < %s", (until,))
                    await conn.execute(postgres_stats.BUMP)
            return c1.rowcount + len(starts)
        return await self._call(delete)

    # --- the console's aggregates (stats.py, postgres_stats.py) -------------------------------------
    async def run_stats(
        self, since_ns: int, until_ns: int, *, probe_id: str | None = None, bucket_ns: int | None = None
    ) -> dict[tuple[str, int], RunStats]:
        segs = segments(since_ns, until_ns, bucket_ns)

        for part in chunks(await self._call(lambda conn: postgres_stats.gaps(conn, segs))):
            await self._call(partial(postgres_stats.fill, part=part))  # each within the call's deadline
        return await self._call(lambda conn: postgres_stats.read(conn, segs, since_ns, probe_id, bucket_ns,
                                                                 self._rollups))

    async def recent_runs(self, probe_ids: list[str], *, limit: int) -> dict[str, list[RunHead]]:
        return await self._call(lambda conn: postgres_stats.recent(conn, probe_ids, limit))

    async def latest_runs(self, probe_ids: list[str]) -> dict[str, RunRecord]:
        rows = await self._call(lambda conn: postgres_stats.newest(conn, probe_ids))
        return {r[1]: row_to_run(r) for r in rows}

    async def append_event(self, kind: str, data: dict[str, Any]) -> int:
        async def insert(conn: Conn) -> int:
            cur = await conn.execute("INSERT INTO events (time_ns, kind, data) VALUES (%s, %s, %s) RETURNING id",
                                     (time.time_ns(), kind, dumps(data)))
            row = await cur.fetchone()
            return int(row[0]) if row else 0
        return await self._call(insert)
