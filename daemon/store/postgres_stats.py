"""The PostgreSQL store's aggregate reads: the portable SQL of ``stats.py`` on a pooled connection.

Replicas share the database: every change to filled rollups (a fill, a late write into a complete
bucket, retention) bumps ``run_rollup_version`` in its transaction, and a replica keeps its sums of
whole buckets (``RollupCache``) only while the version it read them under holds — one small read per
aggregate instead of summing ~200k day rows for 30 days. Fills take an exclusive transaction-level
advisory lock and late writes a shared one (:func:`invalidate`), so a fill never marks a bucket filled
without a run committed into it meanwhile.
"""

from __future__ import annotations

from typing import Any

import psycopg

from tracecanary.daemon.store.postgres_schema import pg_sql
from tracecanary.daemon.store.rows import LIGHT_COLUMNS
from tracecanary.daemon.store.stats import (
    CLEAR_RANGE,
    GRAIN_NS,
    HEAD_COLUMNS,
    HOUR_NS,
    INVALIDATE,
    MISSING,
    RollupCache,
    RunHead,
    RunStats,
    Segment,
    collect,
    fill_sql,
    head,
    invalidate_args,
    merge_into,
    missing_ranges,
    raw_select,
    rollup_select,
)

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
ROLLUP_LOCK_KEY = 0x7472616365_02
"""Advisory key of rollup fills (exclusive) and late run writes into complete buckets (shared)."""
FILL = pg_sql(fill_sql())
RECENT = (f"SELECT r.* FROM unnest(%s::text[]) AS p(id) CROSS JOIN LATERAL (SELECT {HEAD_COLUMNS} FROM runs "
          "WHERE probe_id = p.id ORDER BY started_ns DESC LIMIT %s) AS r")
BUMP = ("INSERT INTO run_rollup_version (one, version) VALUES (1, 1) ON CONFLICT (one) "
        "DO UPDATE SET version = run_rollup_version.version + 1")
VERSION = "SELECT version FROM run_rollup_version WHERE one = 1"
NEWEST = (f"SELECT r.* FROM unnest(%s::text[]) AS p(id) CROSS JOIN LATERAL (SELECT {LIGHT_COLUMNS} FROM runs "
          "WHERE probe_id = p.id ORDER BY started_ns DESC LIMIT 1) AS r")


async def gaps(conn: Conn, segs: list[Segment]) -> list[tuple[int, int, int]]:
    """Rollup buckets the segments need that are not filled: (grain, lo, hi) runs."""
    out = []
    for seg in segs:
        if seg.grain is None:
            continue
        g = GRAIN_NS[seg.grain]
        rows = await (await conn.execute(pg_sql(MISSING), (g, seg.lo_ns, seg.hi_ns))).fetchall()
        out += [(g, lo, hi) for lo, hi in missing_ranges(g, seg.lo_ns, seg.hi_ns, {int(r[0]) for r in rows})]
    return out


async def fill(conn: Conn, part: list[tuple[int, int, int]]) -> None:
    """Fill these buckets once across replicas (what is still missing is re-read under the lock)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ROLLUP_LOCK_KEY,))
        segs = [Segment("hour" if g == HOUR_NS else "day", lo, hi) for g, lo, hi in part]
        for g, lo, hi in await gaps(conn, segs):
            await conn.execute(pg_sql(CLEAR_RANGE), (g, lo, hi))
            await conn.execute(FILL, (g, g, g, lo, hi))
            async with conn.cursor() as cur:
                await cur.executemany("INSERT INTO run_rollup_filled (grain_ns, bucket_ns) VALUES (%s, %s) "
                                      "ON CONFLICT DO NOTHING", [(g, b) for b in range(lo, hi, g)])
        await conn.execute(BUMP)


class VersionedCache:
    """Sums of whole buckets, valid while ``run_rollup_version`` is the one they were read under."""

    def __init__(self) -> None:
        self.sums = RollupCache()
        self.version: int | None = None

    async def check(self, conn: Conn) -> None:
        row = await (await conn.execute(VERSION)).fetchone()
        version = int(row[0]) if row else 0
        if version != self.version:
            self.sums.clear()
            self.version = version


async def read(conn: Conn, segs: list[Segment], since_ns: int, probe_id: str | None,
               bucket_ns: int | None, cache: VersionedCache) -> dict[tuple[str, int], RunStats]:
    out: dict[tuple[str, int], RunStats] = {}
    by_probe, bucket = probe_id is not None, bucket_ns is not None
    first: tuple[Any, ...] = (since_ns, bucket_ns) if bucket else ()
    last: tuple[Any, ...] = (probe_id,) if by_probe else ()
    await cache.check(conn)
    for seg in segs:
        if seg.grain is None:
            sql, args = raw_select(by_probe, bucket), (*first, seg.lo_ns, seg.hi_ns, *last)
            collect(await (await conn.execute(pg_sql(sql), args)).fetchall(), out)
            continue
        key = (seg.grain, seg.lo_ns, seg.hi_ns, probe_id, *first)
        part = cache.sums.get(key)
        if part is None:
            part = {}
            sql, args = rollup_select(by_probe, bucket), (*first, GRAIN_NS[seg.grain], seg.lo_ns, seg.hi_ns, *last)
            collect(await (await conn.execute(pg_sql(sql), args)).fetchall(), part)
            cache.sums.put(key, part)
        merge_into(out, part)
    return out


async def recent(conn: Conn, probe_ids: list[str], limit: int) -> dict[str, list[RunHead]]:
    out: dict[str, list[RunHead]] = {pid: [] for pid in probe_ids}
    for r in await (await conn.execute(RECENT, (probe_ids, limit))).fetchall():
        out[r[1]].append(head(r))
    return out


async def newest(conn: Conn, probe_ids: list[str]) -> list[Any]:
    return await (await conn.execute(NEWEST, (probe_ids,))).fetchall()


def late(started_ns: int, now_ns: int) -> bool:
    """A run of a complete hour (its rollups may exist): its write must invalidate them."""
    return started_ns < now_ns // HOUR_NS * HOUR_NS


async def invalidate(conn: Conn, started_ns: int) -> None:
    """In the caller's transaction, under the shared lock: the run's hour and day are re-read later."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (ROLLUP_LOCK_KEY,))
    if (await conn.execute(pg_sql(INVALIDATE), invalidate_args(started_ns))).rowcount:
        await conn.execute(BUMP)
