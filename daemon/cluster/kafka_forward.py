"""Forwarding traces a member did not mint to the member that waits for them.

A queue consumer's new trace (reached through ``linked``) or a scheduled job's own trace (reached through
``correlate``) lands on whatever partition its id hashes to. The member that reads it checks it
against the announcements (``kafka_broadcast.py``): spans linking to an announced trace, or carrying an
announced correlation value, are forwarded — the message value as it came — to the forward topic's
partition of the same number as the owner's spans partition. The forward topic has as many partitions
as the spans topic; each member reads exactly the forward partitions matching its owned spans
partitions (manual assignment, re-done at every ownership change), so a forwarded trace reaches the
owner, like its own spans. The forwarding member remembers the route of the foreign trace, so its
later messages (children without links) follow.

A correlated or linking trace that arrives before the announcement of its value or of the trace it links
to is parked (``kafka_park.py``) and released to its owner when the announcement comes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.abc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from tracecanary.assertions.spans import AttrValue
from tracecanary.daemon.cluster.kafka_broadcast import Announcements
from tracecanary.daemon.cluster.kafka_filter import TraceFilter
from tracecanary.daemon.cluster.kafka_membership import KafkaMembership, Ownership
from tracecanary.daemon.cluster.kafka_park import CorrelationPark
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.otlp import OtlpDecodeError, RawBatch, find_attribute_hits, find_link_pairs

log = logging.getLogger("tracecanary.cluster.forward")


async def ensure_topic(bootstrap: str, topic: str, partitions: int, *, timeout_s: float = 20.0) -> None:
    """Create ``topic`` with ``partitions`` partitions unless it exists."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        with anyio.fail_after(timeout_s):
            await admin.start()
            await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


class ForwardRouter:
    """Which other owners' partitions a foreign message must reach."""

    def __init__(self, announcements: Announcements, ownership: Callable[[], Ownership],
                 max_routes: int = 100_000) -> None:
        self.announcements = announcements
        self.ownership = ownership
        self.max_routes = max_routes
        self.routes: OrderedDict[bytes, int] = OrderedDict()
        """Foreign raw trace id -> the partition its messages are forwarded to."""

    def targets(self, batch: RawBatch) -> set[int]:
        """Owner partitions that need this batch (this member's too); learns routes for later messages."""
        out = {self.routes[t] for t in batch.trace_counts if t in self.routes}
        ann = self.announcements
        if batch.has_links and ann.traces:
            if any(t in ann.traces for t in batch.link_targets()):
                for src, target in find_link_pairs(batch.message, ann.traces):
                    self._route(src, ann.traces[target], out)
        if ann.values:
            for key, value, tid in find_attribute_hits(batch.message, ann.keys()):
                part = ann.values.get((key, value))
                if part is not None:
                    self._route(tid, part, out)
        return out

    def _route(self, trace: bytes, partition: int, out: set[int]) -> None:
        out.add(partition)
        self.routes[trace] = partition
        self.routes.move_to_end(trace)
        while len(self.routes) > self.max_routes:
            self.routes.popitem(last=False)


@dataclass
class ForwardStats:
    """Counters of one member's forwarding."""

    forwarded: int = 0
    received: int = 0
    bad_messages: int = 0
    reassignments: int = 0


class Forwarder:
    """Produce forwarded messages and read the forward partitions this member owns into its buffer."""

    def __init__(self, membership: KafkaMembership, router: ForwardRouter, *, topic: str,
                 op_timeout_s: float = 10.0, park: CorrelationPark | None = None) -> None:
        self.membership = membership
        self.router = router
        self.park = park
        """Where foreign messages wait for a late ``correlate`` announcement (None: not kept)."""
        self.topic = topic
        self.op_timeout_s = op_timeout_s
        self.stats = ForwardStats()
        self._producer: AIOKafkaProducer | None = None
        self._pending: list[tuple[int, bytes]] = []
        self._wake = anyio.Event()

    def offer(self, value: bytes, batch: RawBatch) -> bool:
        """The trace filter's hook for a foreign protobuf message: queue it for every other owner that
        needs it; True when this member needs it as well."""
        targets = self.router.targets(batch)
        if not targets and self.park is not None:
            self.park.consider(value, batch)
        mine = self.membership.ownership.partitions
        for part in targets - mine:
            self._pending.append((part, value))
        if self._pending:
            self._wake.set()
        return not targets.isdisjoint(mine)

    def _release(self, key: str, value: AttrValue, partition: int) -> None:
        """A value was announced: what the park holds for it goes to its owner now (kept, when that is us)."""
        if self.park is not None:
            self._send_released(self.park.release(key, value), partition, f"key={key}")

    def _release_linking(self, trace: bytes, partition: int) -> None:
        """A trace was announced: parked traces linking into it go to its owner now (kept, when that is us)."""
        if self.park is not None:
            self._send_released(self.park.release_linking(trace), partition, "linked")

    def _send_released(self, released: list[tuple[bytes, frozenset[bytes]]], partition: int, what: str) -> None:
        mine = partition in self.membership.ownership.partitions
        for message, traces in released:
            for trace in traces:
                self.router._route(trace, partition, set())  # the trace's later messages follow
            if mine:
                self.membership.filter.accept_forwarded(self.membership.buffer, message)
            else:
                self._pending.append((partition, message))
        if released:
            log.info("parked messages released %s partition=%d messages=%d", what, partition, len(released))
            self._wake.set()

    async def _flush(self) -> None:
        assert self._producer is not None
        pending, self._pending = self._pending, []
        for part, value in pending:
            with anyio.fail_after(self.op_timeout_s):
                await self._producer.send_and_wait(self.topic, value, partition=part)
            self.stats.forwarded += 1

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Forward what the filter offers and read owned forward partitions until cancelled."""
        cfg = self.membership.config
        producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap, acks="all")
        consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="latest", consumer_timeout_ms=int(cfg.fetcher_timeout_s * 1000))
        with anyio.fail_after(self.op_timeout_s * 3):
            await producer.start()
            await consumer.start()
        self._producer = producer
        park, announcements = self.park, self.router.announcements
        self.membership.filter.on_foreign = self.offer
        self.membership.filter.foreign_wanted = lambda: bool(announcements) or (park is not None and park.wanted())
        announcements.on_value = self._release
        announcements.on_trace = self._release_linking
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._follow_ownership, consumer)
                tg.start_soon(self._send_loop)
                task_status.started()
                await self._read_loop(consumer)
        finally:
            self.membership.filter.on_foreign = None
            announcements.on_value = None
            announcements.on_trace = None
            self.membership.filter.foreign_wanted = lambda: True
            self._producer = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await consumer.stop()
                await producer.stop()

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self._flush()
            except (KafkaError, TimeoutError, OSError) as e:
                log.warning("forwarding failed error=%r", str(e))

    async def _follow_ownership(self, consumer: AIOKafkaConsumer) -> None:
        async for own in self.membership.changes():
            tps = [TopicPartition(self.topic, p) for p in sorted(own.partitions)]
            consumer.assign(tps)  # a newly owned partition starts at its end: earlier runs were not ours
            for tp in tps:
                await consumer.position(tp)  # resolve "latest" now, so nothing forwarded from here is skipped
            self.stats.reassignments += 1

    async def _read_loop(self, consumer: AIOKafkaConsumer) -> None:
        buffer: TraceBuffer = self.membership.buffer
        tf: TraceFilter = self.membership.filter
        wait_ms = int(self.membership.config.poll_timeout_s * 1000)
        while True:
            if not consumer.assignment():  # no partition owned: wait for the next ownership
                with anyio.move_on_after(self.membership.config.poll_timeout_s):
                    await self.membership.wait_changed()
                continue
            for records in (await consumer.getmany(timeout_ms=wait_ms)).values():
                for rec in records:
                    try:
                        tf.accept_forwarded(buffer, rec.value)
                        self.stats.received += 1
                    except OtlpDecodeError as e:
                        self.stats.bad_messages += 1
                        log.warning("bad forwarded message partition=%d offset=%d error=%r",
                                    rec.partition, rec.offset, str(e))
