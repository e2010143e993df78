"""Kafka span source against a real Kafka-compatible broker (tansu) with a real aiokafka producer."""

from __future__ import annotations

import json
import os

import anyio
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from tests.spans.sdk import expected, make_sdk_spans
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.kafka import KafkaSourceStats, KafkaSpanSettings, run_kafka_source
from tracecanary.daemon.spans.otlp import encode_request, spans_to_otlp_json


async def _committed_total(bootstrap: str, group: str, topic: str) -> int:
    """Sum of the group's committed offsets over the topic's partitions (= messages consumed)."""
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await probe.start()
    try:
        with anyio.fail_after(10):
            partitions = probe.partitions_for_topic(topic) or set()
            offsets = [await probe.committed(TopicPartition(topic, p)) for p in partitions]
        return sum(o or 0 for o in offsets)
    finally:
        await probe.stop()


@pytest.mark.anyio
async def test_kafka_source_reads_proto_and_json_and_commits(kafka_broker) -> None:  # type: ignore[no-untyped-def]
    topic, group = f"otlp_spans_{os.urandom(4).hex()}", f"g{os.urandom(4).hex()}"
    spans = [expected(s) for s in make_sdk_spans()]  # two traces
    proto_trace = spans[0].trace_id
    json_spans = [s for s in spans if s.trace_id != proto_trace]
    traces_data = TracesData()
    traces_data.ParseFromString(encode_request(spans).SerializeToString())  # all spans, both traces
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    await producer.start()
    try:
        with anyio.fail_after(20):
            await producer.send_and_wait(topic, traces_data.SerializeToString())
            await producer.send_and_wait(topic, b"\x0a\xff garbage")
            await producer.send_and_wait(topic, json.dumps(spans_to_otlp_json(json_spans)).encode(),
                                         key=json_spans[0].trace_id.encode())
    finally:
        await producer.stop()

    buffer = TraceBuffer()
    stats = KafkaSourceStats()
    settings = KafkaSpanSettings(bootstrap=kafka_broker.bootstrap, spans_topics=[topic], group=group,
                                 initial_offset="earliest")
    async with anyio.create_task_group() as tg:
        with buffer.watch() as w:
            for t in {s.trace_id for s in spans}:
                w.add_trace(t)
            await tg.start(lambda task_status: run_kafka_source(buffer, settings, stats=stats,
                                                                task_status=task_status))
            got = []
            with anyio.fail_after(30):
                while len(got) < len(spans) + len(json_spans):
                    got.extend(await w.wait(30))
        with anyio.fail_after(20):
            while stats.committed_messages < 3:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    by_id = {s.span_id: s for s in got}
    assert sorted(by_id.values(), key=lambda s: s.span_id) == sorted(spans, key=lambda s: s.span_id)
    assert stats.bad_messages == 1 and stats.spans == len(spans) + len(json_spans)
    assert await _committed_total(kafka_broker.bootstrap, group, topic) == 3
