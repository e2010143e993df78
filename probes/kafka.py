"""The kafka probe: publish one message (key, value, headers) carrying the run's trace context.

The producer uses ``acks=all`` so the run's trigger means "durably on the topic". Producers are
expensive to start, so the daemon keeps one per bootstrap in a ``KafkaProducers`` cache placed in
``ProbeContext.resources.kafka_producers`` and closes it at shutdown; without a cache the probe
starts and stops a producer for its one message.
"""

from __future__ import annotations

import json as jsonlib
import logging
from typing import Any, Literal

import anyio
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import Field

from tracecanary.assertions.units import Duration
from tracecanary.errors import ProbeError
from tracecanary.model import StrictModel
from tracecanary.probes.base import FireResult, ProbeContext, ProbeSpec

log = logging.getLogger("tracecanary.probes.kafka")

MAX_MESSAGE_BYTES = 1 << 20


class KafkaProducers:
    """One started producer per bootstrap address, shared by runs; ``aclose`` stops them all."""

    def __init__(self, *, start_timeout_s: float = 10.0) -> None:
        self._producers: dict[str, AIOKafkaProducer[bytes, bytes]] = {}
        self._lock = anyio.Lock()
        self._start_timeout_s = start_timeout_s
        self._closed = False

    async def get(self, bootstrap: str) -> AIOKafkaProducer[bytes, bytes]:
        """The producer for ``bootstrap``, started on first use."""
        async with self._lock:
            if self._closed:
                raise ProbeError("kafka producers are closed (daemon shutting down)")
            producer = self._producers.get(bootstrap)
            if producer is None:
                producer = await start_producer(bootstrap, self._start_timeout_s)
                self._producers[bootstrap] = producer
            return producer

    async def discard(self, bootstrap: str) -> None:
        """Stop and forget a producer that failed (the next run starts a fresh one)."""
        async with self._lock:
            producer = self._producers.pop(bootstrap, None)
        if producer is not None:
            await _stop_quietly(producer)

    async def aclose(self) -> None:
        """Stop every producer; idempotent."""
        async with self._lock:
            self._closed = True
            producers, self._producers = list(self._producers.values()), {}
        with anyio.CancelScope(shield=True):
            for producer in producers:
                await _stop_quietly(producer)


async def start_producer(bootstrap: str, timeout_s: float) -> AIOKafkaProducer[bytes, bytes]:
    """A started ``acks=all`` producer; ProbeError when the broker is unreachable."""
    producer: AIOKafkaProducer[bytes, bytes] = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", request_timeout_ms=max(1000, int(timeout_s * 1000)),
        max_request_size=MAX_MESSAGE_BYTES + 65536,
    )
    try:
        with anyio.fail_after(timeout_s):
            await producer.start()
    except (TimeoutError, KafkaError, OSError) as e:
        await _stop_quietly(producer)
        raise ProbeError(f"kafka {bootstrap}: cannot connect: {type(e).__name__}: {e}") from e
    return producer


async def _stop_quietly(producer: AIOKafkaProducer[bytes, bytes]) -> None:
    try:
        with anyio.move_on_after(5, shield=True):
            await producer.stop()
    except (KafkaError, OSError) as e:  # already broken: nothing left to release
        log.debug("kafka producer stop failed error=%s", e)


def _encode(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return jsonlib.dumps(value, separators=(",", ":")).encode()


class KafkaMessage(StrictModel):
    """One message to publish; key, value and headers are templated."""

    topic: str = Field(description="Topic to publish to (templated).")
    key: str | None = Field(None, description="Message key (UTF-8).")
    value: Any = Field(None, description="Message value: a string as is, anything else as JSON.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers (trace headers are added).")
    bootstrap: str | None = Field(None, description="Broker list; default integrations.kafka.bootstrap.")
    timeout: Duration | None = Field(None, description="Publish timeout (default: the run's remaining time).")

    async def run(self, ctx: ProbeContext) -> FireResult:
        """Publish and wait for the acknowledgement of all in-sync replicas."""
        topic = str(ctx.render(self.topic))
        bootstrap = self.bootstrap or ctx.integrations.kafka.bootstrap
        value = _encode(ctx.templates.render_native(self.value, ctx.template_vars()) if not isinstance(
            self.value, str) else ctx.render(self.value))
        key = _encode(ctx.render(self.key))
        if value is not None and len(value) > MAX_MESSAGE_BYTES:
            raise ProbeError(f"kafka {topic}: value is {len(value)} bytes, limit {MAX_MESSAGE_BYTES}")
        limit_s = ctx.remaining_s() if self.timeout is None else min(self.timeout, ctx.remaining_s())
        cache = ctx.resources.kafka_producers
        attributes = {"messaging.system": "kafka", "messaging.destination.name": topic,
                      "messaging.operation.type": "send"}
        with ctx.client_span(f"{topic} publish", "producer", **attributes) as sid:
            headers = ctx.with_trace_headers(ctx.render(dict(self.headers)), sid)
            wire_headers = [(k, v.encode()) for k, v in headers.items()]
            ctx.log("kafka publish", topic=topic, bootstrap=bootstrap, bytes=len(value or b""))
            try:
                with anyio.fail_after(max(0.001, limit_s)):
                    if cache is not None:
                        producer = await cache.get(bootstrap)
                        try:
                            meta = await producer.send_and_wait(topic, value, key=key, headers=wire_headers)
                        except KafkaError:
                            await cache.discard(bootstrap)
                            raise
                    else:
                        producer = await start_producer(bootstrap, limit_s)
                        try:
                            meta = await producer.send_and_wait(topic, value, key=key, headers=wire_headers)
                        finally:
                            await _stop_quietly(producer)
            except TimeoutError as e:
                raise ProbeError(f"kafka {topic}: not acknowledged within {limit_s:.3g}s") from e
            except KafkaError as e:
                raise ProbeError(f"kafka {topic}: {type(e).__name__}: {e}") from e
        outputs = {"topic": meta.topic, "partition": meta.partition, "offset": meta.offset,
                   "timestamp_ms": meta.timestamp}
        ctx.log("kafka acknowledged", **outputs)
        return FireResult(outputs=outputs)


class KafkaProbe(ProbeSpec):
    """Publish a message to a topic and judge the trace and side effects it causes."""

    kind: Literal["kafka"] = "kafka"
    message: KafkaMessage = Field(description="The message to publish.")

    async def fire(self, ctx: ProbeContext) -> FireResult:
        return await self.message.run(ctx)
