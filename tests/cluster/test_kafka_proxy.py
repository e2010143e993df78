"""The test proxy carries every connection of a Kafka client (the broker's address is rewritten to its own),
and a cut stops that client alone."""

from __future__ import annotations

import anyio
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tests.cluster.kafka_helpers import create_topic, topic_records, unique
from tests.cluster.kafka_proxy import kafka_proxy


@pytest.mark.anyio
async def test_a_cut_proxy_stops_its_client_alone(kafka_broker) -> None:  # type: ignore[no-untyped-def]
    topic = unique("proxied")
    await create_topic(kafka_broker.bootstrap, topic, 1)
    async with kafka_proxy(kafka_broker.bootstrap) as proxy:
        producer = AIOKafkaProducer(bootstrap_servers=proxy.bootstrap, request_timeout_ms=3000)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"before")
            assert proxy.rewritten >= 1 and proxy.connections >= 2  # bootstrap, then the advertised (proxied) node
            proxy.cut()
            with pytest.raises((TimeoutError, KafkaError)), anyio.fail_after(10):
                await producer.send_and_wait(topic, b"during")
        finally:
            with anyio.move_on_after(5):
                await producer.stop()
    direct = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    await direct.start()
    try:
        await direct.send_and_wait(topic, b"beside")  # the others still reach the broker
    finally:
        await direct.stop()
    assert [r.value for r in await topic_records(kafka_broker.bootstrap, topic, 1)] == [b"before", b"beside"]
