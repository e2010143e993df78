"""The passive judge fed by the Kafka span source (a real Kafka-compatible broker, the Collector's kafka
exporter format: one OTLP protobuf ``TracesData`` per trace, keyed by the hex trace id)."""

from __future__ import annotations

import os
import time

import anyio
import pytest
from aiokafka import AIOKafkaProducer

from tests.daemon.support import eventually
from tests.run.test_passive import Clock, Traffic, probe
from tracecanary.daemon.run.passive import PassiveJudge
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.kafka import KafkaSpanSettings, run_kafka_source
from tracecanary.daemon.spans.otlp_encode import encode_request

pytestmark = pytest.mark.anyio


class RealClock(Clock):
    def wall_ns(self) -> int:
        return time.time_ns()


async def test_traces_from_the_kafka_topic_are_judged(kafka_broker) -> None:  # type: ignore[no-untyped-def]
    topic, group = f"otlp_spans_{os.urandom(4).hex()}", f"g{os.urandom(4).hex()}"
    traffic = Traffic(RealClock(), seed=9)
    traces = [traffic.trace(broken=i == 7) for i in range(30)]
    buffer = TraceBuffer()
    judge = PassiveJudge(buffer.max_spans)
    judge.configure([probe(timeout="1s")])
    buffer.add_tap(judge)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    await producer.start()
    try:
        with anyio.fail_after(20):
            for t in traces:
                await producer.send_and_wait(topic, encode_request(t).SerializeToString(), key=t[0].trace_id.encode())
    finally:
        await producer.stop()
    settings = KafkaSpanSettings(bootstrap=kafka_broker.bootstrap, spans_topics=[topic], group=group,
                                 initial_offset="earliest")
    async with anyio.create_task_group() as tg:
        await tg.start(judge.run)
        await tg.start(lambda task_status: run_kafka_source(buffer, settings, task_status=task_status))
        # the broken trace at its deadline, 1 s after its entry span started
        await eventually(lambda: judge.snapshot("webhook").window.judged == 30,  # type: ignore[union-attr]
                         timeout_s=30, what="30 traces judged")
        tg.cancel_scope.cancel()
    counts = judge.take("webhook")
    assert (counts.failed, dict(counts.kinds), counts.worst) == (1, {"trace.missing": 1}, [traces[7][0].trace_id])
