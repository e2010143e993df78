"""The SQLite store's aggregate reads (``stats.py`` has the portable SQL and what counts), run on its
connection thread: rollups filled lazily for complete hours and days, invalidated by run writes."""

from __future__ import annotations

import sqlite3
from typing import Any

from tracecanary.daemon.store.stats import (
    CLEAR_RANGE,
    GRAIN_NS,
    HEAD_COLUMNS,
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

RUNS = "runs INDEXED BY runs_by_start"
"""Without the hint SQLite's planner takes the status index and reads every finished run."""
FILL = fill_sql(runs=RUNS)
HEAD = f"SELECT {HEAD_COLUMNS} FROM runs WHERE probe_id = ? ORDER BY started_ns DESC LIMIT ?"


def invalidate(conn: sqlite3.Connection, started_ns: int, cache: RollupCache) -> None:
    """A run of this start was written: its hour and day are re-read at the next aggregate."""
    if conn.execute(INVALIDATE, invalidate_args(started_ns)).rowcount:
        cache.clear()


def clear_before(conn: sqlite3.Connection, until_ns: int, cache: RollupCache) -> None:
    """Runs started before ``until_ns`` were deleted (retention): the buckets that may hold them are
    re-read when next needed; later ones stay."""
    conn.execute("DELETE FROM run_rollup_filled WHERE bucket_ns < ?", (until_ns,))
    conn.execute("DELETE FROM run_rollup WHERE bucket_ns < ?", (until_ns,))
    cache.clear()


def missing(conn: sqlite3.Connection, segs: list[Segment]) -> list[tuple[int, int, int]]:
    """Rollup buckets the segments need that are not filled: (grain, lo, hi) runs."""
    out = []
    for seg in segs:
        if seg.grain is None:
            continue
        g = GRAIN_NS[seg.grain]
        filled = {r[0] for r in conn.execute(MISSING, (g, seg.lo_ns, seg.hi_ns))}
        out += [(g, lo, hi) for lo, hi in missing_ranges(g, seg.lo_ns, seg.hi_ns, filled)]
    return out


def fill(conn: sqlite3.Connection, gaps: list[tuple[int, int, int]], cache: RollupCache) -> None:
    """Compute the rollups of the missing buckets from the runs (in the caller's transaction)."""
    cache.clear()
    for g, lo, hi in gaps:
        conn.execute(CLEAR_RANGE, (g, lo, hi))
        conn.execute(FILL, (g, g, g, lo, hi))
        conn.executemany("INSERT OR REPLACE INTO run_rollup_filled (grain_ns, bucket_ns) VALUES (?, ?)",
                         [(g, b) for b in range(lo, hi, g)])


def read_stats(conn: sqlite3.Connection, segs: list[Segment], since_ns: int, probe_id: str | None,
               bucket_ns: int | None, cache: RollupCache) -> dict[tuple[str, int], RunStats]:
    """Sum the rollups (cached per segment) and the raw edges of the segments (after :func:`fill`)."""
    out: dict[tuple[str, int], RunStats] = {}
    by_probe, bucket = probe_id is not None, bucket_ns is not None
    head: tuple[Any, ...] = (since_ns, bucket_ns) if bucket else ()
    tail: tuple[Any, ...] = (probe_id,) if by_probe else ()
    for seg in segs:
        if seg.grain is None:
            collect(conn.execute(raw_select(by_probe, bucket, runs=RUNS),
                                 (*head, seg.lo_ns, seg.hi_ns, *tail)).fetchall(), out)
            continue
        key = (seg.grain, seg.lo_ns, seg.hi_ns, probe_id, *head)
        part = cache.get(key)
        if part is None:
            part = {}
            collect(conn.execute(rollup_select(by_probe, bucket),
                                 (*head, GRAIN_NS[seg.grain], seg.lo_ns, seg.hi_ns, *tail)).fetchall(), part)
            cache.put(key, part)
        merge_into(out, part)
    return out



class HeadCache:
    """Each probe's newest runs (the strip) and newest run row, as last read. A write of a probe's run
    drops its entries on the connection thread, in the order of the writes, so a read never returns an
    entry older than a write this store made; abort and retention drop them all. The overview asks for
    every probe every few seconds: 1000 indexed queries become dictionary look-ups. (Runs another
    process writes to the same file show once this store writes a run of that probe.)"""

    def __init__(self) -> None:
        self.heads: dict[str, tuple[int, list[RunHead]]] = {}
        self.newest: dict[str, tuple[Any, ...] | None] = {}

    def drop(self, probe_id: str) -> None:
        self.heads.pop(probe_id, None)
        self.newest.pop(probe_id, None)

    def clear(self) -> None:
        self.heads.clear()
        self.newest.clear()


def recent(conn: sqlite3.Connection, probe_ids: list[str], limit: int, cache: HeadCache) -> dict[str, list[RunHead]]:
    out = {}
    for pid in probe_ids:
        hit = cache.heads.get(pid)
        if hit is None or hit[0] < limit:
            hit = (limit, [head(r) for r in conn.execute(HEAD, (pid, limit))])
            cache.heads[pid] = hit
        out[pid] = hit[1][:limit]
    return out


def newest_rows(conn: sqlite3.Connection, probe_ids: list[str], columns: str, cache: HeadCache) -> list[Any]:
    """Each probe's newest run row (``columns``, the same on every call), payload columns left out."""
    sql = f"SELECT {columns} FROM runs WHERE probe_id = ? ORDER BY started_ns DESC LIMIT 1"
    out = []
    for pid in probe_ids:
        if pid not in cache.newest:
            cache.newest[pid] = conn.execute(sql, (pid,)).fetchone()
        row = cache.newest[pid]
        if row is not None:
            out.append(row)
    return out


