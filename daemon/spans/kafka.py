"""Kafka span source: OTLP spans from topics written by the OpenTelemetry Collector kafka exporter.

Message values are ``otlp_proto`` (serialized ``TracesData``, the same wire format as
``ExportTraceServiceRequest``) or ``otlp_json``; a message may hold any number of spans and traces.
With ``partition_traces_by_id`` the key is the lowercase hex trace id (not needed: spans carry their
ids). Offsets are committed only after a fetched batch's spans are in the buffer; an undecodable
message is logged, counted and skipped (committed) so it cannot wedge the partition.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.abc
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ConfigDict, Field

from tracecanary.assertions.units import Duration
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.otlp import OtlpDecodeError, decode_json, parse_request, scan_protobuf
from tracecanary.errors import StartupError

log = logging.getLogger("tracecanary.spans.kafka")
_COMMIT_TIMEOUT_S = 30.0


class KafkaSpanSettings(BaseModel):
    """Kafka topics the daemon reads spans from (``daemon.kafka``)."""

    model_config = ConfigDict(extra="forbid")

    bootstrap: str = Field("127.0.0.1:9092", description="Comma-separated host:port bootstrap servers.")
    spans_topics: list[str] = Field(
        default_factory=lambda: ["otlp_spans"], min_length=1, description="Topics holding OTLP spans."
    )
    group: str = Field("tracecanary", description="Consumer group; daemons sharing it split the partitions.")
    initial_offset: Literal["latest", "earliest"] = Field(
        "latest", description="Where a group without committed offsets starts reading."
    )
    encoding: Literal["auto", "otlp_proto", "otlp_json"] = Field(
        "auto", description="Message encoding; auto tells JSON from protobuf by the first byte."
    )
    max_records: int = Field(500, gt=0, description="Most messages fetched (and committed) per round.")
    connect_timeout: Duration = Field(30.0, gt=0, description="Time limit for the first connection to the brokers.")


@dataclass
class KafkaSourceStats:
    """Counters of one running source."""

    messages: int = 0
    spans: int = 0
    bad_messages: int = 0
    commits: int = 0
    committed_messages: int = 0


def is_json_value(value: bytes) -> bool:
    """Whether an ``auto``-encoded message is OTLP/JSON: it starts with ``{`` or ``[``, perhaps after
    whitespace. A protobuf request starts with the tag byte 0x0a (a newline) and then its first field's
    length, which reads as ``{`` or ``[`` at 123 or 91 bytes: a value starting with whitespace is JSON only
    when it is not a valid protobuf request."""
    if value[:1] in (b"{", b"["):
        return True
    if value.lstrip()[:1] not in (b"{", b"["):
        return False
    try:
        parse_request(value)
    except OtlpDecodeError:
        return True
    return False


def ingest_message(buffer: TraceBuffer, value: bytes | None, encoding: str) -> int:
    """Decode one message value into the buffer; returns spans added. Raises OtlpDecodeError."""
    if not value:
        return 0
    if encoding == "otlp_json" or (encoding == "auto" and is_json_value(value)):
        return buffer.add_spans(decode_json(value).spans)
    return buffer.add_batch(scan_protobuf(value))


def _ingest_records(buffer: TraceBuffer, records: list[Any], settings: KafkaSpanSettings,
                    stats: KafkaSourceStats) -> None:
    for record in records:
        stats.messages += 1
        try:
            stats.spans += ingest_message(buffer, record.value, settings.encoding)
        except OtlpDecodeError as e:
            stats.bad_messages += 1
            log.warning("kafka bad span message topic=%s partition=%d offset=%d error=%r",
                        record.topic, record.partition, record.offset, str(e))


async def run_kafka_source(
    buffer: TraceBuffer,
    settings: KafkaSpanSettings | BaseModel,
    *,
    stats: KafkaSourceStats | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Consume span topics into the buffer until cancelled (commits after buffering).

    ``settings`` may also be another model with a subset of the fields (the rest take defaults).
    """
    if not isinstance(settings, KafkaSpanSettings):
        settings = KafkaSpanSettings.model_validate(settings.model_dump())
    stats = stats if stats is not None else KafkaSourceStats()
    consumer = AIOKafkaConsumer(
        *settings.spans_topics,
        bootstrap_servers=settings.bootstrap,
        group_id=settings.group,
        auto_offset_reset=settings.initial_offset,
        enable_auto_commit=False,
    )
    try:
        with anyio.fail_after(settings.connect_timeout):
            await consumer.start()
    except (KafkaError, TimeoutError, OSError) as e:
        await consumer.stop()
        raise StartupError(f"kafka span source: cannot connect to {settings.bootstrap}: {e}") from e
    log.info("kafka span source started topics=%s group=%s", ",".join(settings.spans_topics), settings.group)
    try:
        task_status.started()
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=settings.max_records)
            if not batches:
                continue
            for records in batches.values():
                _ingest_records(buffer, records, settings, stats)
            try:
                with anyio.fail_after(_COMMIT_TIMEOUT_S):
                    await consumer.commit()
                stats.commits += 1
                stats.committed_messages += sum(len(r) for r in batches.values())
            except (KafkaError, TimeoutError) as e:  # e.g. a rebalance took the partitions: re-read
                log.warning("kafka span source commit failed error=%r", str(e))
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await consumer.stop()
