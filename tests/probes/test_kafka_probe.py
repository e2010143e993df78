"""The kafka probe and watcher against a real tansu broker with real aiokafka clients."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.probes.helpers import make_ctx
from tracecanary.assertions.side_effects import KafkaEffect, judge_kafka
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.watchers.base import Services, WatchContext
from tracecanary.daemon.watchers.kafka import watch_kafka
from tracecanary.demo.broker import TansuBroker
from tracecanary.errors import ProbeError
from tracecanary.integrations import Integrations
from tracecanary.probes.base import ProbeContext, ProbeResources
from tracecanary.probes.kafka import KafkaProbe, KafkaProducers
from tracecanary.probes.steps import StepsProbe
from tracecanary.probes.templating import render_spec


def _topic() -> str:
    return f"tc-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _ctx(session: aiohttp.ClientSession, broker: TansuBroker, **kw: Any) -> ProbeContext:
    integrations = Integrations.model_validate({"kafka": {"bootstrap": broker.bootstrap}})
    return make_ctx(session, integrations=integrations, **kw)


async def _read_one(bootstrap: str, topic: str, partition: int, offset: int) -> Any:
    consumer: AIOKafkaConsumer[bytes, bytes] = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        with anyio.fail_after(10):
            return await consumer.getone()
    finally:
        await consumer.stop()


@pytest.mark.anyio
async def test_publish_carries_trace_context_and_records_offset(
    kafka_broker: TansuBroker, session: aiohttp.ClientSession
) -> None:
    topic = _topic()
    ctx = _ctx(session, kafka_broker)
    probe = KafkaProbe.model_validate({"id": "k", "kind": "kafka", "message": {
        "topic": topic, "key": "{{ run_id }}", "value": {"order": "{{ probe_id }}", "qty": 2},
        "headers": {"x-source": "tracecanary"}}})
    with anyio.fail_after(20):
        result = await probe.fire(ctx)
    assert result.outputs["topic"] == topic and result.outputs["offset"] >= 0
    record = await _read_one(kafka_broker.bootstrap, topic, result.outputs["partition"], result.outputs["offset"])
    headers = {k: v.decode() for k, v in record.headers}
    assert record.key == ctx.run_id.encode()
    assert record.value == b'{"order":"probe-under-test","qty":2}'
    assert headers["x-source"] == "tracecanary"
    assert headers["traceparent"].startswith(f"00-{ctx.trace.trace_id}-")
    assert headers["tracestate"] == f"tracecanary={ctx.run_id}"
    assert f"tracecanary.run_id={ctx.run_id}" in headers["baggage"]


@pytest.mark.anyio
async def test_producer_cache_reuses_one_producer_and_closes(
    kafka_broker: TansuBroker, session: aiohttp.ClientSession
) -> None:
    cache = KafkaProducers()
    topic = _topic()
    probe = KafkaProbe.model_validate({"id": "k", "kind": "kafka", "message": {"topic": topic, "value": "x"}})
    with anyio.fail_after(20):
        first = await probe.fire(_ctx(session, kafka_broker, resources=ProbeResources(kafka_producers=cache)))
        producer = await cache.get(kafka_broker.bootstrap)
        second = await probe.fire(_ctx(session, kafka_broker, resources=ProbeResources(kafka_producers=cache)))
        assert await cache.get(kafka_broker.bootstrap) is producer
    assert (second.outputs["partition"], second.outputs["offset"]) != (
        first.outputs["partition"], first.outputs["offset"])
    await cache.aclose()
    await cache.aclose()
    with pytest.raises(ProbeError, match="closed"):
        await cache.get(kafka_broker.bootstrap)


@pytest.mark.anyio
async def test_unreachable_broker_is_a_probe_error(session: aiohttp.ClientSession) -> None:
    integrations = Integrations.model_validate({"kafka": {"bootstrap": "127.0.0.1:1"}})
    probe = KafkaProbe.model_validate({"id": "k", "kind": "kafka", "message": {"topic": "t", "value": "x"}})
    with anyio.fail_after(10), pytest.raises(ProbeError, match="kafka"):
        await probe.fire(make_ctx(session, integrations=integrations, deadline_s=2.0))


async def _produce(bootstrap: str, topic: str, value: bytes, headers: dict[str, str]) -> int:
    producer: AIOKafkaProducer[bytes, bytes] = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, headers=[(k, v.encode()) for k, v in headers.items()])
        return int(meta.timestamp)
    finally:
        await producer.stop()


def _effect(topic: str, **kw: Any) -> KafkaEffect:
    return KafkaEffect.model_validate({"topic": topic, "header": {"traceparent": {"contains": "{{ trace_id }}"}},
                                       **kw})


@pytest.mark.anyio
async def test_watcher_sees_message_after_trigger_even_when_started_late(
    kafka_broker: TansuBroker, session: aiohttp.ClientSession
) -> None:
    topic = _topic()
    ctx = _ctx(session, kafka_broker)
    wctx = WatchContext(probe=ctx, services=Services(), poll_interval_s=0.05)
    with anyio.fail_after(20):
        await _produce(kafka_broker.bootstrap, topic, b"reply", {"traceparent": ctx.trace.traceparent()})
        assert await watch_kafka(render_spec(_effect(topic, within="5s"), wctx.probe.render), wctx) == []


@pytest.mark.anyio
async def test_watcher_running_at_trigger_sees_the_message(
    kafka_broker: TansuBroker, session: aiohttp.ClientSession
) -> None:
    topic = _topic()
    ctx = _ctx(session, kafka_broker)
    wctx = WatchContext(probe=ctx, services=Services(), poll_interval_s=0.05)
    result: list[Any] = []

    async def watch() -> None:
        eff = render_spec(_effect(topic, within="8s", value={"contains": "done"}), wctx.probe.render)
        result.append(await watch_kafka(eff, wctx))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await _produce(kafka_broker.bootstrap, topic, b"other", {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
            await _produce(kafka_broker.bootstrap, topic, b"job done", {"traceparent": ctx.trace.traceparent()})
    assert result == [[]]


@pytest.mark.anyio
async def test_messages_before_the_trigger_do_not_count(
    kafka_broker: TansuBroker, session: aiohttp.ClientSession
) -> None:
    topic = _topic()
    ctx = _ctx(session, kafka_broker)
    with anyio.fail_after(20):
        old_ms = await _produce(kafka_broker.bootstrap, topic, b"old", {"traceparent": ctx.trace.traceparent()})
        ctx.trigger_ns = (old_ms + 1) * 1_000_000
        wctx = WatchContext(probe=ctx, services=Services(), poll_interval_s=0.05)
        [finding] = await watch_kafka(render_spec(_effect(topic, within="500ms"), wctx.probe.render), wctx)
    assert finding.type == "side_effect" and "no message within 0.5s" in finding.message
    ctx.trigger_ns = time.time_ns()  # a fresh window
    with anyio.fail_after(20):
        eff = render_spec(_effect(topic, within="500ms", absent=True), wctx.probe.render)
        assert await watch_kafka(eff, wctx) == []


def test_judge_kafka_explains_a_miss_and_absent() -> None:
    effect = KafkaEffect.model_validate({"topic": "t", "key": "k1", "value": {"contains": "ok"}, "within": "5s"})
    seen = [{"partition": 0, "offset": 7, "key": "k1", "value": "failed", "headers": {}}]
    [miss] = judge_kafka(effect, seen, path="expect.side_effects[0].kafka")
    assert "1 message(s) within 5s, none matched; last: value: expected to contain 'ok'" in miss.message
    assert miss.path == "expect.side_effects[0].kafka" and miss.observed[0]["offset"] == 7
    assert judge_kafka(effect, [*seen, {"offset": 8, "key": "k1", "value": "ok!", "headers": {}}]) == []
    forbidden = KafkaEffect.model_validate({"topic": "t", "value": {"contains": "ok"}, "absent": True})
    [hit] = judge_kafka(forbidden, [{"offset": 3, "key": None, "value": "ok", "headers": {}}])
    assert "forbidden message" in hit.message


@pytest.mark.anyio
async def test_kafka_step_in_a_steps_probe_records_outputs(
    kafka_broker: TansuBroker, session: aiohttp.ClientSession
) -> None:
    topic = _topic()
    ctx = _ctx(session, kafka_broker)
    probe = StepsProbe.model_validate({"id": "s", "kind": "steps", "steps": [
        {"name": "publish", "kafka": {"topic": topic, "key": "{{ run_id }}", "value": {"n": 1}}},
        {"name": "again", "kafka": {"topic": topic, "value": "after offset {{ steps.publish.outputs.offset }}"}},
    ]})
    with anyio.fail_after(20):
        result = await probe.fire(ctx)
    assert result.findings == [] and result.response is None
    first, second = ctx.steps["publish"]["outputs"], ctx.steps["again"]["outputs"]
    assert first["topic"] == second["topic"] == topic
    record = await _read_one(kafka_broker.bootstrap, topic, second["partition"], second["offset"])
    assert record.value == f"after offset {first['offset']}".encode()
    assert {k: v.decode() for k, v in record.headers}["traceparent"].startswith(f"00-{ctx.trace.trace_id}-")


@pytest.mark.anyio
async def test_watcher_reports_an_unreachable_broker_as_error(session: aiohttp.ClientSession) -> None:
    integrations = Integrations.model_validate({"kafka": {"bootstrap": "127.0.0.1:1"}})
    ctx = make_ctx(session, integrations=integrations, deadline_s=0.5)
    with anyio.fail_after(10):
        eff = render_spec(_effect("t", within="200ms"), ctx.render)
        [finding] = await watch_kafka(eff, WatchContext(probe=ctx, services=Services()))
    assert finding.severity == Verdict.ERROR and "cannot connect" in finding.message
