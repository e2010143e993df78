"""Helpers for kafka-mode tests: topics with N partitions, spans as the Collector exporter sends them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tracecanary.assertions.spans import AttrValue, Span, SpanKind, SpanLink
from tracecanary.daemon.cluster.partitioner import PARTITIONERS
from tracecanary.daemon.spans.otlp import encode_request


def unique(prefix: str) -> str:
    return f"{prefix}_{os.urandom(4).hex()}"


async def topic_records(bootstrap: str, topic: str, partitions: int,
                        timeout_s: float = 60.0) -> list[ConsumerRecord[bytes, bytes]]:
    """Every message on the topic's partitions, read from the beginning up to the end offsets seen at the start."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        with anyio.fail_after(timeout_s):
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                while await consumer.position(tp) < ends[tp]:
                    for records in (await consumer.getmany(tp, timeout_ms=200)).values():
                        out += records
    finally:
        await consumer.stop()
    return out


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with anyio.fail_after(20):
            await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


def span(trace_id: str, name: str, *, links: Sequence[str | tuple[str, str]] = (), service: str = "svc",
         attributes: Mapping[str, AttrValue] | None = None, span_id: str | None = None,
         parent_span_id: str | None = None) -> Span:
    """A span; ``links`` are trace ids (any span id) or (trace id, span id) pairs."""
    pairs = [(ln, "00f067aa0ba902b7") if isinstance(ln, str) else ln for ln in links]
    return Span(trace_id=trace_id, span_id=span_id or os.urandom(8).hex(), parent_span_id=parent_span_id,
                name=name, kind=SpanKind.SERVER, start_ns=1_000, end_ns=2_000, service=service,
                attributes=dict(attributes or {}),
                links=tuple(SpanLink(trace_id=t, span_id=sid) for t, sid in pairs))


class ExporterLikeProducer:
    """An aiokafka producer that keys each trace by its lowercase hex id, partitioned as configured.

    ``murmur2`` uses aiokafka's own DefaultPartitioner (a real producer's hash); ``sarama_compat``
    plugs our FNV-1a function in (no Go producer here; the function is checked against vectors).
    """

    def __init__(self, bootstrap: str, partitioner: str) -> None:
        kwargs = {}
        if partitioner == "sarama_compat":
            fn = PARTITIONERS["sarama_compat"]
            kwargs["partitioner"] = lambda key, all_p, _avail: all_p[fn(key, len(all_p))]
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **kwargs)

    async def __aenter__(self) -> ExporterLikeProducer:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def send_trace(self, topic: str, spans: Sequence[Span]) -> int:
        """Send one trace as one message; returns the partition it landed on."""
        key = spans[0].trace_id.lower().encode("ascii")
        with anyio.fail_after(20):
            meta = await self.producer.send_and_wait(topic, encode_request(list(spans)).SerializeToString(),
                                                     key=key)
        return int(meta.partition)


def trace_on(partitions: frozenset[int] | set[int], n: int, partitioner: str, start: int) -> str:
    """A (foreign) trace id whose exporter key lands on one of ``partitions``."""
    fn = PARTITIONERS[partitioner]
    return next(t for t in (f"{start + i:032x}" for i in range(100_000))
                if fn(t.encode("ascii"), n) in partitions)
