"""Per-probe leases in PostgreSQL: a member fires a probe only while its lease names it.

The consumer group decides who should own a probe; the lease makes sure two members never fire it
side by side while the group changes its mind, or while a member cut off from the broker still
believes the old assignment. A lease names the member's session (one per process) and the epoch of
the assignment it was claimed under, and lapses ``ttl_s`` after its last renewal (the session
timeout). Renewal happens only after the member proved, in the same round, that the broker still
answers: a member cut off from the broker stops firing within ``ttl_s`` (its local deadline is
measured from before the renewing statement was sent, so it lapses locally no later than in the
database) and its probes' leases lapse for the new owner at the same time.

aiokafka exposes no public group generation, so the epoch comes from a PostgreSQL sequence, drawn at
every assignment: monotonic across the cluster, which is all fencing needs.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

import anyio
import psycopg
import psycopg_pool

from tracecanary.daemon.cluster.kafka_db import Conn

log = logging.getLogger("tracecanary.cluster.leases")

_CLAIM = """
INSERT INTO cluster_leases (probe_id, member_id, session_id, epoch, expires_at)
SELECT p, %(member)s, %(session)s, %(epoch)s, now() + make_interval(secs => %(ttl)s) FROM unnest(%(probes)s::text[]) AS p
ON CONFLICT (probe_id) DO UPDATE SET member_id = EXCLUDED.member_id, session_id = EXCLUDED.session_id,
    epoch = EXCLUDED.epoch, expires_at = EXCLUDED.expires_at
WHERE cluster_leases.session_id = EXCLUDED.session_id OR cluster_leases.expires_at < now()
RETURNING probe_id
"""
_RELEASE = "DELETE FROM cluster_leases WHERE session_id = %(session)s AND NOT (probe_id = ANY(%(probes)s::text[]))"
_SESSION = """
INSERT INTO cluster_sessions (session_id, member_id, ttl_s) VALUES (%(session)s, %(member)s, %(ttl)s)
ON CONFLICT (session_id) DO UPDATE SET seen_at = now(), ttl_s = EXCLUDED.ttl_s
"""
HOLDS_SQL = ("EXISTS (SELECT 1 FROM cluster_leases WHERE probe_id = %(probe)s AND session_id = %(session)s"
             " AND expires_at > now())")
"""A condition for fenced writes: the lease of ``%(probe)s`` names ``%(session)s`` and has not lapsed."""


@dataclass
class LeaseStats:
    """Counters of one lease book."""

    rounds: int = 0
    failed_rounds: int = 0
    skipped_rounds: int = 0
    claimed: int = 0
    refused: int = 0


class LeaseBook:
    """This member's leases: what it holds, until when (local monotonic deadlines)."""

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool[Conn], member_id: str, *, ttl_s: float,
                 op_timeout_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.member_id = member_id
        self.session_id = f"{member_id}-{uuid.uuid4().hex[:12]}"
        self.ttl_s = ttl_s
        self.op_timeout_s = op_timeout_s if op_timeout_s is not None else ttl_s / 3
        self.epoch = 0
        self.stats = LeaseStats()
        self._clock = clock
        self._deadline: dict[str, float] = {}
        self._round = anyio.Event()

    def holds(self, probe_id: str) -> bool:
        """Whether this member may fire ``probe_id`` now."""
        return self._deadline.get(probe_id, 0.0) > self._clock()

    def held(self) -> set[str]:
        """The probes whose lease this member holds now."""
        now = self._clock()
        return {p for p, d in self._deadline.items() if d > now}

    async def new_epoch(self) -> int:
        """Draw the epoch of a new assignment (leases claimed from now on carry it)."""
        with anyio.fail_after(self.op_timeout_s):
            async with self.pool.connection() as conn:
                cur = await conn.execute("SELECT nextval('cluster_epoch')")
                row = await cur.fetchone()
        assert row is not None
        self.epoch = int(row[0])
        return self.epoch

    async def sync(self, wanted: Collection[str]) -> set[str]:
        """One round: heartbeat the session, release leases not wanted, renew and claim the wanted ones.

        Returns the probes held afterwards. A wanted probe another live session holds is refused until
        that session releases it or its lease lapses. Raises psycopg/pool errors and TimeoutError.
        """
        started = self._clock()
        args = {"member": self.member_id, "session": self.session_id, "epoch": self.epoch,
                "ttl": self.ttl_s, "probes": sorted(wanted)}
        with anyio.fail_after(self.op_timeout_s):
            async with self.pool.connection() as conn, conn.transaction():
                await conn.execute(_SESSION, args)
                await conn.execute(_RELEASE, args)
                cur = await conn.execute(_CLAIM, args)
                got = {str(r[0]) for r in await cur.fetchall()}
        newly = got - self.held()
        self._deadline = dict.fromkeys(got, started + self.ttl_s)
        self.stats.rounds += 1
        self.stats.claimed += len(newly)
        self.stats.refused += len(set(wanted) - got)
        self._round.set()
        self._round = anyio.Event()
        if newly:
            log.info("leases claimed member=%s epoch=%d probes=%d", self.member_id, self.epoch, len(newly))
        return got

    async def wait_round(self) -> None:
        """Return after the next completed lease round."""
        await self._round.wait()

    def drop_all(self) -> None:
        """Stop firing everything at once (the database leases lapse on their own)."""
        self._deadline.clear()

    async def release_all(self) -> None:
        """Give every lease back (a clean stop): the new owners need not wait for them to lapse."""
        self._deadline.clear()
        with anyio.fail_after(self.op_timeout_s):
            async with self.pool.connection() as conn:
                await conn.execute("DELETE FROM cluster_leases WHERE session_id = %s", (self.session_id,))


async def keep_leases(book: LeaseBook, wanted: Callable[[], Collection[str]],
                      broker_alive: Callable[[], Awaitable[bool]], *, interval_s: float | None = None,
                      retry_s: float = 0.2, changed: Callable[[], anyio.Event] | None = None,
                      on_round: Callable[[set[str]], Awaitable[None]] | None = None) -> None:
    """Run lease rounds until cancelled: every ``interval_s`` (default ttl/3), every ``retry_s`` while a
    wanted probe is refused, and at once after a new ownership: ``changed()`` is the event the next one
    sets, taken before a round reads ``wanted()``, so an ownership that arrives while a round is under way
    (``broker_alive()`` is a broker round trip) starts the next round at once instead of an interval
    later. A round renews only if ``broker_alive()`` says the member still reaches the broker; otherwise
    leases are left to lapse. ``on_round(held)`` follows every renewing round (the member reports itself)."""
    interval_s = interval_s if interval_s is not None else book.ttl_s / 3
    while True:
        change = changed() if changed is not None else None
        want = set(wanted())
        try:
            if await broker_alive():
                got = await book.sync(want)
                if on_round is not None:
                    await on_round(got)
            else:
                book.stats.skipped_rounds += 1
                got = book.held()
                log.warning("leases not renewed: broker unreachable member=%s held=%d", book.member_id, len(got))
        except (psycopg.Error, psycopg_pool.PoolTimeout, TimeoutError, OSError) as e:
            book.stats.failed_rounds += 1
            got = book.held()
            log.warning("lease round failed member=%s error=%r", book.member_id, str(e))
        delay = retry_s if want - got else interval_s
        if change is None:
            await anyio.sleep(delay)
        else:
            with anyio.move_on_after(delay):
                await change.wait()
