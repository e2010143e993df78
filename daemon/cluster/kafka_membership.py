"""Kafka-mode membership: the consumer group on the spans topic is the cluster.

A member owns the spans-topic partitions the group assigns it, fires the probes whose id maps to an
owned partition (:func:`probe_partition`), and mints each run's trace id so that the Collector's
partitioner puts the trace on an owned partition (:class:`TraceIdMinter`): every span of its runs
reaches it and no other member. The same consumer reads those partitions into the trace buffer
through the cheap trace-id filter (``kafka_filter.py``).

Rebalancing: aiokafka rebalances eagerly (``on_partitions_revoked`` receives every partition), so
nothing is decided on revocation; the new :class:`Ownership` is published after
``on_partitions_assigned``. The assignor is aiokafka's ``StickyPartitionAssignor`` (KIP-54), so a
rebalance moves as few partitions as it can. That assignor keeps its state in class attributes; each
member therefore gets its own subclass (several members may share one process, as in tests).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.abc
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import KafkaError

from tracecanary.daemon.cluster.kafka_filter import TraceFilter
from tracecanary.daemon.cluster.partitioner import PartitionerName, TraceIdMinter, probe_partition
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.otlp import OtlpDecodeError
from tracecanary.errors import StartupError

log = logging.getLogger("tracecanary.cluster.kafka")
_COMMIT_TIMEOUT_S = 30.0


HEARTBEAT_MAX_MS = 1000


def heartbeat_ms(session_ms: int) -> int:
    """The group heartbeat interval: a third of the session timeout, at most 1 s (at least 100 ms).

    A member learns that the group rebalances at its next heartbeat, so after a member dies the survivors
    rejoin up to one heartbeat apart, and the assignment waits for the last of them (on tansu each join
    also lasts half the session timeout). With the 10 s default a third was 3.3 s, and a late survivor
    added up to that to the failover (kill -9 → probes firing again: 15-19 s on tansu); at 1 s they
    rejoin together (with the lease keeper's fix, 14.9-15.5 s). The cost is under one more request a
    second per member.
    """
    return max(100, min(HEARTBEAT_MAX_MS, session_ms // 3))


@dataclass(frozen=True, slots=True)
class Ownership:
    """What one member owns after an assignment: spans-topic partitions, hence probes."""

    member_id: str
    partitions: frozenset[int] = frozenset()
    num_partitions: int = 0
    epoch: int = 0
    """This member's assignment count (0 = not assigned yet); grows by one per assignment."""

    def owns_probe(self, probe_id: str) -> bool:
        """Whether this member fires ``probe_id``."""
        return bool(self.num_partitions) and probe_partition(probe_id, self.num_partitions) in self.partitions

    def probes(self, probe_ids: Iterable[str]) -> list[str]:
        """The probes of ``probe_ids`` this member fires."""
        return [p for p in probe_ids if self.owns_probe(p)]

    def lost_since(self, previous: Ownership) -> frozenset[int]:
        """Partitions ``previous`` held that this ownership does not (moved to another member)."""
        if previous.num_partitions != self.num_partitions:
            return previous.partitions
        return previous.partitions - self.partitions


@dataclass
class MembershipConfig:
    """Consumer settings of kafka mode (from ``daemon.cluster``); durations in seconds."""

    bootstrap: str
    group: str
    spans_topic: str = "otlp_spans"
    partitioner: PartitionerName = "sarama_compat"
    session_timeout_s: float = 10.0
    connect_timeout_s: float = 30.0
    initial_offset: Literal["latest", "earliest"] = "latest"
    encoding: Literal["auto", "otlp_proto", "otlp_json"] = "auto"
    max_records: int = 500
    poll_timeout_s: float = 2.0
    """How long one read waits for records (it returns as soon as some arrive; only a bound on idle wake-ups)."""
    fetcher_timeout_s: float = 2.0
    """aiokafka's ``consumer_timeout_ms``: how often a consumer's fetch task wakes with nothing to do (it also
    wakes at every fetch answer, seek and assignment; aiokafka's default of 0.2 s is 5 idle wake-ups a second
    per consumer, and each member runs three)."""
    scan_foreign: bool = True
    """Scan messages of traces not minted here for span links into minted traces."""


@dataclass
class MembershipStats:
    """Counters of one member."""

    messages: int = 0
    bad_messages: int = 0
    assignments: int = 0
    revocations: int = 0
    commits: int = 0
    moved_partitions: list[int] = field(default_factory=list)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, membership: KafkaMembership) -> None:
        self.membership = membership

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.membership._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.membership._on_assigned(assigned)


class KafkaMembership:
    """One member of the group: ownership, its change stream, trace-id minting and the span filter."""

    def __init__(self, config: MembershipConfig, buffer: TraceBuffer, *, member_id: str,
                 trace_filter: TraceFilter | None = None, minter: TraceIdMinter | None = None) -> None:
        self.config = config
        self.buffer = buffer
        self.member_id = member_id
        self.filter = trace_filter or TraceFilter(scan_foreign=config.scan_foreign)
        self.minter = minter or TraceIdMinter(config.partitioner)
        self.stats = MembershipStats()
        self._ownership = Ownership(member_id)
        self._changed = anyio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        # StickyPartitionAssignor keeps its previous assignment in class attributes: one class per member.
        self._assignor: type[StickyPartitionAssignor] = type(
            f"StickyAssignor_{member_id}", (StickyPartitionAssignor,),
            {"member_assignment": None, "generation": StickyPartitionAssignor.DEFAULT_GENERATION_ID})

    # ------------------------------------------------------------------ ownership

    @property
    def ownership(self) -> Ownership:
        """The current ownership (empty until the first assignment, and while rejoining)."""
        return self._ownership

    async def changes(self) -> AsyncIterator[Ownership]:
        """Each new ownership, newest only (a slow reader skips intermediate ones), until cancelled."""
        seen = -1
        while True:
            current = self._ownership
            if current.epoch != seen:
                seen = current.epoch
                yield current
                continue
            await self._changed.wait()

    async def wait_assigned(self, after_epoch: int = 0) -> Ownership:
        """The first ownership with an epoch above ``after_epoch``."""
        while self._ownership.epoch <= after_epoch:
            await self._changed.wait()
        return self._ownership

    async def wait_changed(self) -> None:
        """Return at the next ownership change."""
        await self._changed.wait()

    def change_event(self) -> anyio.Event:
        """The event the next ownership change sets (take it before reading :attr:`ownership`)."""
        return self._changed

    async def broker_alive(self, timeout_s: float | None = None) -> bool:
        """Whether the broker answers a metadata request now (the lease keeper's proof of contact)."""
        consumer = self._consumer
        if consumer is None:
            return False
        try:
            with anyio.fail_after(timeout_s if timeout_s is not None else self.config.session_timeout_s / 3):
                await consumer.topics()
        except (KafkaError, TimeoutError, OSError):
            return False
        return True

    def mint_trace_id(self) -> str:
        """A trace id landing on an owned partition, wanted by the filter. Raises NoOwnedPartitionError."""
        own = self._ownership
        tid = self.minter.mint(own.partitions, own.num_partitions)
        self.filter.want(tid)
        return tid

    def _publish(self, ownership: Ownership) -> None:
        self._ownership = ownership
        self._changed.set()
        self._changed = anyio.Event()

    def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        # Eager rebalance: every partition is revoked here, most come back. Decide after assignment.
        self.stats.revocations += 1
        log.info("kafka member revoked member=%s partitions=%d", self.member_id, len(revoked))

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        topic = self.config.spans_topic
        assert self._consumer is not None
        known = self._consumer.partitions_for_topic(topic) or set()
        parts = frozenset(tp.partition for tp in assigned if tp.topic == topic)
        previous = self._ownership
        new = Ownership(self.member_id, parts, len(known), previous.epoch + 1)
        lost = new.lost_since(previous)
        self.stats.assignments += 1
        self.stats.moved_partitions.extend(sorted(lost))
        log.info("kafka member assigned member=%s epoch=%d partitions=%s of %d lost=%s",
                 self.member_id, new.epoch, sorted(parts), len(known), sorted(lost))
        self._publish(new)

    # ------------------------------------------------------------------ consuming

    def _new_consumer(self) -> AIOKafkaConsumer:
        session_ms = int(self.config.session_timeout_s * 1000)
        return AIOKafkaConsumer(
            bootstrap_servers=self.config.bootstrap,
            group_id=self.config.group,
            client_id=f"tracecanary-{self.member_id}",
            auto_offset_reset=self.config.initial_offset,
            enable_auto_commit=False,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=heartbeat_ms(session_ms),
            consumer_timeout_ms=int(self.config.fetcher_timeout_s * 1000),
            partition_assignment_strategy=(self._assignor,),
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Join the group and read owned partitions into the buffer until cancelled (then leave)."""
        consumer = self._consumer = self._new_consumer()
        try:
            with anyio.fail_after(self.config.connect_timeout_s):
                await consumer.start()
        except (KafkaError, TimeoutError, OSError) as e:
            await consumer.stop()
            raise StartupError(f"kafka membership: cannot connect to {self.config.bootstrap}: {e}") from e
        consumer.subscribe([self.config.spans_topic], listener=_Listener(self))
        log.info("kafka member started member=%s group=%s topic=%s", self.member_id, self.config.group,
                 self.config.spans_topic)
        try:
            task_status.started()
            while True:
                batches = await consumer.getmany(timeout_ms=int(self.config.poll_timeout_s * 1000),
                                                 max_records=self.config.max_records)
                if batches:
                    self._ingest(batches)
                    await self._commit(consumer)
        finally:
            self._publish(Ownership(self.member_id, frozenset(), 0, self._ownership.epoch + 1))
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await consumer.stop()  # leaves the group: the others rebalance at once

    def _ingest(self, batches: dict[TopicPartition, list[Any]]) -> None:
        for records in batches.values():
            for record in records:
                self.stats.messages += 1
                try:
                    self.filter.ingest(self.buffer, record.key, record.value, self.config.encoding)
                except OtlpDecodeError as e:
                    self.stats.bad_messages += 1
                    log.warning("kafka bad span message topic=%s partition=%d offset=%d error=%r",
                                record.topic, record.partition, record.offset, str(e))

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        try:
            with anyio.fail_after(_COMMIT_TIMEOUT_S):
                await consumer.commit()
            self.stats.commits += 1
        except (KafkaError, TimeoutError) as e:  # a rebalance took the partitions: the new owner re-reads
            log.warning("kafka member commit failed member=%s error=%r", self.member_id, str(e))
