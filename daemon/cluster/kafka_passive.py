"""Passive probes in kafka mode: every member judges, the probe's owner sums the counts in PostgreSQL.

Each member judges the sampled traces of its own partitions for **every** passive probe (the trace
filter keeps them, ``kafka_filter.py``), owned or not, and every ``flush_s`` writes each probe's
window counts as one row of ``passive_counts`` (probe, member, session, the counts). The owner's run
(``collect``) writes its own current counts and claims every row of the probe not yet consumed, in one
transaction (``UPDATE … SET consumed_at … WHERE consumed_at IS NULL RETURNING``): a row is summed by
exactly one run even when two members run the probe around a rebalance (the second ``UPDATE`` waits
for the first's row locks and then finds them consumed). Rows of a member that died are summed like
any other; what it judged after its last flush (at most ``flush_s``) is lost with it. A write that
fails puts the counts back into the judge's window (the next flush or run carries them).

The worst-recent ring of the dashboard stays per member (each member's own judged traces); the
window's ``worst`` trace ids travel in the rows. Consumed rows are deleted after ``keep_consumed_s``,
unconsumed rows (a probe removed from the config) after ``keep_unconsumed_s``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import psycopg
import psycopg_pool
from psycopg.types.json import Jsonb

from tracecanary.daemon.cluster.kafka_db import Conn
from tracecanary.daemon.run.passive import PassiveJudge
from tracecanary.probes.passive import PassiveCounts

log = logging.getLogger("tracecanary.cluster.passive")

_INSERT = """
INSERT INTO passive_counts (probe_id, member_id, session_id, judged, failed, degraded, dropped, kinds, worst)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
_CLAIM = """
UPDATE passive_counts SET consumed_at = now(), consumed_by = %s
WHERE probe_id = %s AND consumed_at IS NULL
RETURNING judged, failed, degraded, dropped, kinds, worst
"""
_CLEAN = """
DELETE FROM passive_counts
WHERE consumed_at < now() - make_interval(secs => %s) OR created_at < now() - make_interval(secs => %s)
"""
_DB_ERRORS = (psycopg.Error, psycopg_pool.PoolTimeout, OSError, TimeoutError)


@dataclass
class PassiveBookStats:
    rows_written: int = 0
    rows_claimed: int = 0
    write_errors: int = 0


def _row(counts: PassiveCounts) -> tuple[int, int, int, int, Jsonb, list[str]]:
    return counts.judged, counts.failed, counts.degraded, counts.dropped, Jsonb(dict(counts.kinds)), counts.worst


def _counts(row: tuple[Any, ...]) -> PassiveCounts:
    judged, failed, degraded, dropped, kinds, worst = row
    return PassiveCounts(int(judged), int(failed), int(degraded), Counter(kinds or {}), int(dropped), list(worst or []))


class PassiveCountBook:
    """This member's passive counts in ``passive_counts``; the ``PassiveWindows`` its passive runs read."""

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool[Conn], judge: PassiveJudge, member_id: str,
                 session_id: str, *, keep_consumed_s: float = 3600.0, keep_unconsumed_s: float = 86_400.0) -> None:
        self.pool, self.judge = pool, judge
        self.member_id, self.session_id = member_id, session_id
        self.keep_consumed_s, self.keep_unconsumed_s = keep_consumed_s, keep_unconsumed_s
        self.stats = PassiveBookStats()

    def _take(self, probe_ids: Iterable[str]) -> dict[str, PassiveCounts]:
        taken = {pid: self.judge.take(pid) for pid in probe_ids}
        return {pid: c for pid, c in taken.items() if c.judged or c.dropped}

    def _give_back(self, taken: dict[str, PassiveCounts]) -> None:
        for pid, counts in taken.items():
            self.judge.give_back(pid, counts)

    async def _insert(self, conn: Conn, taken: dict[str, PassiveCounts]) -> None:
        if taken:
            async with conn.cursor() as cur:
                await cur.executemany(_INSERT, [(pid, self.member_id, self.session_id, *_row(c))
                                                for pid, c in taken.items()])

    async def flush(self) -> int:
        """Write every passive probe's current window as a row (probes with nothing judged: none);
        returns the rows written. Raises OSError (the counts go back into the windows)."""
        taken = self._take(self.judge.probe_ids)
        if not taken:
            return 0
        try:
            async with self.pool.connection() as conn, conn.transaction():
                await self._insert(conn, taken)
        except _DB_ERRORS as e:
            self._give_back(taken)
            self.stats.write_errors += 1
            raise OSError(f"passive counts not stored: {e}") from e
        self.stats.rows_written += len(taken)
        return len(taken)

    async def collect(self, probe_id: str) -> PassiveCounts:
        """The probe's window across the group: this member's counts plus every member's rows not yet
        consumed, claimed atomically. Raises OSError (this member's counts go back into its window)."""
        taken = self._take([probe_id])
        try:
            async with self.pool.connection() as conn, conn.transaction():
                await self._insert(conn, taken)
                cur = await conn.execute(_CLAIM, (self.session_id, probe_id))
                rows = await cur.fetchall()
        except _DB_ERRORS as e:
            self._give_back(taken)
            self.stats.write_errors += 1
            raise OSError(f"passive counts of {probe_id} not collected: {e}") from e
        self.stats.rows_written += len(taken)
        self.stats.rows_claimed += len(rows)
        return PassiveCounts.total(_counts(r) for r in rows)

    async def clean(self) -> int:
        """Delete consumed rows past ``keep_consumed_s`` and forgotten ones past ``keep_unconsumed_s``."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(_CLEAN, (self.keep_consumed_s, self.keep_unconsumed_s))
            return cur.rowcount

    async def run(self, *, flush_s: float, clean_every: int = 600) -> None:
        """Flush every ``flush_s`` (and clean every ``clean_every`` flushes) until cancelled; a failed
        write is logged and retried at the next flush."""
        rounds = 0
        while True:
            await anyio.sleep(flush_s)
            try:
                await self.flush()
                rounds += 1
                if rounds % clean_every == 0:
                    await self.clean()
            except _DB_ERRORS as e:
                log.warning("passive counts flush failed member=%s error=%r", self.member_id, str(e))


class MemberPassiveWindows:
    """The ``PassiveWindows`` of a kafka member: its count book once the cluster tables are open;
    before that, an error (the judge keeps counting; the next run collects it all)."""

    def __init__(self) -> None:
        self.book: PassiveCountBook | None = None

    async def collect(self, probe_id: str) -> PassiveCounts:
        if self.book is None:
            raise OSError("kafka member not started yet")
        return await self.book.collect(probe_id)
