"""Every final run on ``results_topic``, each run id at most once — even across kill -9.

A final run becomes a row of the ``results_outbox`` table (keyed by run id, so queued once). It is not
fenced by the probe's lease: the lease fences *firing*; a run that was fired under the lease and ends
just after the probe moved (or a cut-off member's last runs) happened and is published — by its own
session, or, if that session died, by the probe's new owner. A publisher sends its session's rows in
batches (key = probe id, value = the run object of the ``check --json`` report; every message of a batch
is handed to the producer before the first acknowledgement is awaited, so a batch costs one produce
request per partition) and records the partitions and offsets the broker acknowledged in one statement
before it sends the next batch.
An idempotent producer only covers retries within one producer session; a process killed between the
broker's acknowledgement and that record leaves a row that looks unsent although the topic holds it.

Rows of a dead session (no heartbeat for its own ``ttl_s``) are adopted by whoever holds the probe's lease.
Before re-sending them the adopter reads the probe's partition of ``results_topic`` from the last
acknowledged offset that must precede them, and skips run ids already there. Which offset is that: a
session sends one batch at a time and records a batch's acknowledgements before it sends the next (a
producer keeps one partition's messages in the order sent), and a row's message was sent after the row
was created, so it comes after the session's own last acknowledged message in that partition and after
every message any session had acknowledged before the row existed. The larger of those two offsets bounds the scan from below.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import psycopg
import psycopg_pool
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, UnknownError, UnsupportedVersionError

from tracecanary.daemon.cli.report import run_json
from tracecanary.daemon.cluster.kafka_db import Conn
from tracecanary.daemon.cluster.kafka_leases import HOLDS_SQL, LeaseBook
from tracecanary.daemon.cluster.partitioner import murmur2_partition
from tracecanary.daemon.store.base import FinishStatement, RunRecord

log = logging.getLogger("tracecanary.cluster.results")

_QUEUE = """
INSERT INTO results_outbox (run_id, probe_id, session_id, epoch, payload) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (run_id) DO NOTHING"""
_ENQUEUE = _QUEUE + " RETURNING run_id"
_PENDING = """
SELECT run_id, probe_id, payload FROM results_outbox WHERE session_id = %s AND acked_at IS NULL
ORDER BY created_at, run_id LIMIT %s
"""
_ACK = """
UPDATE results_outbox o SET acked_at = now(), result_partition = a.part, result_offset = a.off
FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS a(run_id, part, off) WHERE o.run_id = a.run_id
"""
_ORPHANS = f"""
SELECT o.run_id, o.probe_id, o.session_id, o.created_at FROM results_outbox o
JOIN cluster_sessions s ON s.session_id = o.session_id
WHERE o.acked_at IS NULL AND o.session_id <> %(session)s
  AND s.seen_at < now() - make_interval(secs => s.ttl_s)
  AND {HOLDS_SQL.replace("%(probe)s", "o.probe_id")}
ORDER BY o.created_at
"""
_FLOOR = """
SELECT max(result_offset) FROM results_outbox WHERE acked_at IS NOT NULL AND result_partition = %(partition)s
  AND (acked_at < %(created)s OR session_id = %(dead)s)
"""
_ADOPT = "UPDATE results_outbox SET session_id = %s WHERE run_id = ANY(%s) AND acked_at IS NULL AND session_id = %s"


@dataclass
class OutboxStats:
    """Counters of one publisher."""

    enqueued: int = 0
    duplicates: int = 0
    published: int = 0
    adopted: int = 0
    skipped_present: int = 0
    scanned_messages: int = 0
    idempotence_unsupported: bool = False


class ResultsOutbox:
    """The outbox of this session and its publisher onto ``results_topic``."""

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool[Conn], leases: LeaseBook, *, bootstrap: str,
                 results_topic: str, op_timeout_s: float = 10.0, batch: int = 200, idempotent: bool = True) -> None:
        self.pool = pool
        self.leases = leases
        self.bootstrap = bootstrap
        self.results_topic = results_topic
        self.op_timeout_s = op_timeout_s
        self.batch = batch
        self.idempotent = idempotent
        """Idempotent producer (covers retries within one producer session); tansu lacks InitProducerId."""
        self.stats = OutboxStats()
        self._producer: AIOKafkaProducer | None = None
        self._wake = anyio.Event()

    def _row(self, run: RunRecord) -> tuple[Any, ...]:
        return (run.run_id, run.probe_id, self.leases.session_id, self.leases.epoch,
                json.dumps(run_json(run), separators=(",", ":")))

    def statement(self, run: RunRecord) -> FinishStatement:
        """A final run's row as a statement the results store writes in the run's own statement
        (``store.base.FinishExtra``); then :meth:`queued_with_run`."""
        return _QUEUE, self._row(run)

    def queued_with_run(self) -> None:
        """A final run's row was written with the run (:meth:`statement`): publish it with the next batch."""
        self.stats.enqueued += 1
        self._wake.set()

    async def enqueue(self, run: RunRecord) -> bool:
        """Record a final run for publishing; False when that run id is queued already."""
        with anyio.fail_after(self.op_timeout_s):
            async with self.pool.connection() as conn:
                cur = await conn.execute(_ENQUEUE, self._row(run))
                added = await cur.fetchone() is not None
        if added:
            self.stats.enqueued += 1
            self._wake.set()
        else:
            self.stats.duplicates += 1
        return added

    async def start(self) -> None:
        """Connect the producer (acks=all; idempotent unless the broker refuses: then without, logged)."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                    enable_idempotence=self.idempotent)
        try:
            with anyio.fail_after(self.op_timeout_s * 3):
                await producer.start()
        except (UnknownError, UnsupportedVersionError) as e:
            with anyio.CancelScope(shield=True):
                await producer.stop()
            if not self.idempotent:
                raise
            # tansu, for one, answers InitProducerId with an error: go on without idempotence.
            self.stats.idempotence_unsupported = True
            log.warning("results producer: the broker refuses idempotent producers (%r); sending without "
                        "(a send retried within one session may then repeat a run on the topic)", str(e))
            self.idempotent = False
            await self.start()
            return
        self._producer = producer

    async def flush(self) -> None:
        """Send what this session has queued now (a clean stop; failures are logged, the rows stay queued)."""
        try:
            while self._producer is not None and await self.publish_pending() == self.batch:
                pass
        except (KafkaError, psycopg.Error, psycopg_pool.PoolTimeout, TimeoutError, OSError) as e:
            log.warning("results not flushed at stop (they stay queued) error=%r", str(e))

    async def aclose(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await producer.stop()

    async def publish_pending(self) -> int:
        """Send one batch of this session's queued rows, then record every acknowledgement in one statement.

        Rows whose send failed stay queued (the first such error is raised after the others are recorded).
        """
        assert self._producer is not None, "start() first"
        async with self.pool.connection() as conn:
            cur = await conn.execute(_PENDING, (self.leases.session_id, self.batch))
            rows = await cur.fetchall()
        acks: list[tuple[str, int, int]] = []
        error: KafkaError | None = None
        try:
            with anyio.fail_after(self.op_timeout_s):
                sent: list[tuple[str, asyncio.Future[Any]]] = []
                for run_id, probe_id, payload in rows:
                    try:
                        sent.append((str(run_id), await self._producer.send(
                            self.results_topic, str(payload).encode(), key=str(probe_id).encode())))
                    except KafkaError as e:  # what was handed over already is still awaited and recorded
                        error = e
                        break
                for run_id, delivery in sent:
                    try:
                        meta = await delivery
                    except KafkaError as e:
                        error = error or e
                        continue
                    acks.append((run_id, meta.partition, meta.offset))
        finally:  # what the broker acknowledged is recorded even when the batch is cut short
            if acks:
                with anyio.CancelScope(shield=True), anyio.fail_after(self.op_timeout_s):
                    await self._record_acks(acks)
        self.stats.published += len(acks)
        if error is not None:
            raise error
        return len(rows)

    async def _record_acks(self, acks: list[tuple[str, int, int]]) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_ACK, ([r for r, _, _ in acks], [p for _, p, _ in acks], [o for _, _, o in acks]))

    async def adopt_orphans(self) -> int:
        """Take over dead sessions' rows of probes this session leases; skip those already on the topic."""
        args = {"session": self.leases.session_id}
        async with self.pool.connection() as conn:
            cur = await conn.execute(_ORPHANS, args)
            orphans = await cur.fetchall()
        if not orphans:
            return 0
        assert self._producer is not None, "start() first"
        n = len(await self._producer.partitions_for(self.results_topic))
        groups: dict[tuple[int, str], list[tuple[str, Any]]] = {}
        for run_id, probe_id, session_id, created in orphans:
            part = murmur2_partition(str(probe_id).encode(), n)  # the producer's default partitioner
            groups.setdefault((part, str(session_id)), []).append((str(run_id), created))
        adopted = 0
        for (part, dead), rows in groups.items():
            adopted += await self._adopt_group(part, dead, rows)
        return adopted

    async def _adopt_group(self, part: int, dead: str, rows: list[tuple[str, Any]]) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_FLOOR, {"partition": part, "created": min(c for _, c in rows), "dead": dead})
            floor = (await cur.fetchone() or (None,))[0]
        present = await self._run_ids_on_topic(part, None if floor is None else int(floor))
        run_ids = [r for r, _ in rows]
        already = [r for r in run_ids if r in present]
        async with self.pool.connection() as conn, conn.transaction():
            if already:
                await conn.execute(_ACK, (already, [part] * len(already), [present[r] for r in already]))
            await conn.execute(_ADOPT, (self.leases.session_id, [r for r in run_ids if r not in present], dead))
        self.stats.skipped_present += len(already)
        self.stats.adopted += len(run_ids) - len(already)
        log.info("results adopted dead_session=%s partition=%d from_offset=%s resend=%d already_there=%d",
                 dead, part, floor, len(run_ids) - len(already), len(already))
        self._wake.set()
        return len(run_ids) - len(already)

    async def _run_ids_on_topic(self, part: int, floor: int | None) -> dict[str, int]:
        """Run ids in ``results_topic`` partition ``part`` from ``floor`` (or the start) to its end."""
        tp = TopicPartition(self.results_topic, part)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        found: dict[str, int] = {}
        await consumer.start()
        try:
            consumer.assign([tp])
            with anyio.fail_after(self.op_timeout_s * 3):
                end = (await consumer.end_offsets([tp]))[tp]
                if floor is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, floor)
                while await consumer.position(tp) < end:
                    for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                        for rec in records:
                            self.stats.scanned_messages += 1
                            found[str(json.loads(rec.value)["run_id"])] = int(rec.offset)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await consumer.stop()
        return found

    async def run(self, *, poll_s: float = 1.0, adopt_every_s: float = 2.0, gather_s: float = 0.05,
                  on_error: Callable[[BaseException], Awaitable[None]] | None = None) -> None:
        """Publish until cancelled, woken by :meth:`enqueue` (then ``gather_s`` later, so runs finishing
        together share one query); look for dead sessions' rows every ``adopt_every_s``."""
        next_adopt_s = 0.0
        while True:
            self._wake = anyio.Event()
            try:
                if anyio.current_time() >= next_adopt_s:
                    next_adopt_s = anyio.current_time() + adopt_every_s
                    await self.adopt_orphans()
                while await self.publish_pending() == self.batch:
                    pass
            except (KafkaError, psycopg.Error, psycopg_pool.PoolTimeout, TimeoutError, OSError) as e:
                # reported and retried; the rows stay queued
                log.warning("results publishing failed error=%r", str(e))
                if on_error is not None:
                    await on_error(e)
            with anyio.move_on_after(poll_s):
                await self._wake.wait()
            await anyio.sleep(gather_s)
