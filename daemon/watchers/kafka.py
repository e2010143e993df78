"""Kafka side effects: watch a topic for a message (key/value/header matchers) within the window.

Only messages produced at or after the run's trigger count, whenever the watcher starts: each
partition is positioned at the first offset whose timestamp is ≥ the trigger (``ListOffsets`` by
time), falling back to the end offset read *before* that lookup (brokers that cannot answer by
time, or no such message yet). Judgement is ``assertions.side_effects.judge_kafka``.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tracecanary.assertions.side_effects import KafkaEffect, judge_kafka, kafka_mismatch
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.watchers.base import WatchContext

log = logging.getLogger("tracecanary.watchers.kafka")

MAX_KEPT = 1000
"""Messages kept for the explanation of a miss (the newest)."""
MIN_CONNECT_S = 2.0
MIN_READ_S = 0.5


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode(errors="replace")


def record_dict(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    """A consumed record as the plain data ``judge_kafka`` takes."""
    return {
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "timestamp_ms": record.timestamp, "key": _text(record.key), "value": _text(record.value),
        "headers": {k: v.decode(errors="replace") for k, v in record.headers},
    }


class _Partitions:
    """The partition ids of a topic, current when asked.

    The consumer's own metadata is current as of its start but is not refreshed on demand
    (``partitions_for_topic`` stays None for a topic created later), so a topic it does not know is
    looked up with an admin client's ``describe_topics()``: every topic, as the consumer's own
    request does, because naming the topic would auto-create it on brokers configured so. The admin
    client opens on the first such miss and stays open until the watch ends.
    """

    def __init__(self, consumer: AIOKafkaConsumer[bytes, bytes], bootstrap: str) -> None:
        self._consumer = consumer
        self._bootstrap = bootstrap
        self._admin: AIOKafkaAdminClient | None = None

    async def of(self, topic: str) -> set[int]:
        """The topic's partition ids; empty while the topic does not exist (or has no leader yet)."""
        known = self._consumer.partitions_for_topic(topic)
        if known:
            return set(known)
        if self._admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
            try:
                await admin.start()
            except BaseException:
                await _stop(admin)
                raise
            self._admin = admin
        for described in await self._admin.describe_topics():
            if described["topic"] == topic and described["error_code"] == 0:
                return {p["partition"] for p in described["partitions"]}
        return set()

    async def aclose(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await _stop(admin)


async def _position(
    consumer: AIOKafkaConsumer[bytes, bytes], partitions: _Partitions, topic: str, since_ms: int
) -> dict[TopicPartition, int] | None:
    """Assign every partition of ``topic`` and seek back to ``since_ms``; returns the end offsets
    read first (records at or past them arrived after we started), or None if the topic is unknown."""
    ids = await partitions.of(topic)
    if not ids:
        return None
    tps = [TopicPartition(topic, p) for p in sorted(ids)]
    consumer.assign(tps)
    ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    by_time = await consumer.offsets_for_times({tp: since_ms for tp in tps})
    for tp in tps:
        found = by_time.get(tp)
        # Some brokers answer "not found" as (0, -1) rather than None: trust only real timestamps.
        offset = found.offset if found is not None and found.timestamp >= 0 else ends[tp]
        consumer.seek(tp, min(offset, ends[tp]))
    return ends


def _after_trigger(record: ConsumerRecord[bytes, bytes], ends: dict[TopicPartition, int], since_ms: int) -> bool:
    """Records past the end snapshot arrived after we started; older ones count by their timestamp."""
    end = ends.get(TopicPartition(record.topic, record.partition), 0)
    return bool(record.offset >= end or record.timestamp >= since_ms)


async def watch_kafka(effect: KafkaEffect, wctx: WatchContext, *, path: str = "side_effects.kafka") -> list[Finding]:
    """Consume ``effect.topic`` until a matching message arrives or the window closes, then judge.

    ``effect`` arrives rendered (the runner renders every side effect once per run).
    """
    rendered = effect
    topic = rendered.topic
    end_s = wctx.window_end_s(rendered.within)
    since_ms = wctx.probe.trigger_ns // 1_000_000
    bootstrap = wctx.probe.integrations.kafka.bootstrap
    seen: deque[dict[str, Any]] = deque(maxlen=MAX_KEPT)
    consumer: AIOKafkaConsumer[bytes, bytes] = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, fetch_max_wait_ms=100,
    )
    # A watcher may start after its window closed (slow fire): messages are found by timestamp,
    # so still connect and read once, within the run's deadline.
    connect_s = min(max(end_s - anyio.current_time(), MIN_CONNECT_S), wctx.probe.remaining_s())
    try:
        with anyio.fail_after(max(0.001, connect_s)):
            await consumer.start()
    except (TimeoutError, KafkaError, OSError) as e:
        await _stop(consumer)
        return [_error(rendered, path, f"cannot connect to {bootstrap}: {type(e).__name__}: {e}")]
    partitions = _Partitions(consumer, bootstrap)
    try:
        with anyio.move_on_after(max(MIN_READ_S, end_s - anyio.current_time())):
            ends: dict[TopicPartition, int] | None = None
            while True:
                if ends is None:
                    ends = await _position(consumer, partitions, topic, since_ms)
                    if ends is None:
                        await anyio.sleep(wctx.poll_interval_s)  # topic not created yet: look again
                        continue
                batch = await consumer.getmany(timeout_ms=200, max_records=500)
                found = False
                for records in batch.values():
                    for record in records:
                        if not _after_trigger(record, ends, since_ms):
                            continue
                        message = record_dict(record)
                        seen.append(message)
                        found = found or kafka_mismatch(rendered, message) is None
                if found and not rendered.absent:
                    break
    except KafkaError as e:
        return [_error(rendered, path, f"consuming {topic}: {type(e).__name__}: {e}")]
    finally:
        await partitions.aclose()
        await _stop(consumer)
    wctx.probe.log("kafka watch done", topic=topic, seen=len(seen))
    wctx.saw(seen)
    return judge_kafka(rendered, list(seen), path=path)


def _error(effect: KafkaEffect, path: str, message: str) -> Finding:
    return Finding(type="side_effect", severity=Verdict.ERROR, path=path, message=f"kafka {effect.topic}: {message}",
                   expected={"topic": effect.topic}, observed=None, details={"kind": "kafka"})


async def _stop(client: AIOKafkaConsumer[bytes, bytes] | AIOKafkaAdminClient) -> None:
    """Stop the consumer (or close the admin client): bounded, shielded, a failure only logged."""
    with anyio.move_on_after(5, shield=True):
        try:
            if isinstance(client, AIOKafkaAdminClient):
                await client.close()
            else:
                await client.stop()
        except (KafkaError, OSError) as e:
            log.debug("kafka client stop failed client=%s error=%s", type(client).__name__, e)
