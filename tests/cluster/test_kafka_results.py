"""Results outbox -> results_topic with real PostgreSQL and tansu: each run id at most once across a crash."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator

import psycopg_pool
import pytest
from aiokafka import AIOKafkaProducer

from tests.cluster.kafka_helpers import create_topic, topic_records, unique
from tests.daemon.support import eventually
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.cli.report import run_json
from tracecanary.daemon.cluster.kafka_db import Conn, open_cluster_db
from tracecanary.daemon.cluster.kafka_leases import LeaseBook
from tracecanary.daemon.cluster.kafka_results import ResultsOutbox
from tracecanary.daemon.cluster.partitioner import murmur2_partition
from tracecanary.daemon.store.base import RunRecord, RunStatus

RESULT_PARTITIONS = 3


@pytest.fixture
async def pool(postgres_url: str) -> AsyncIterator[psycopg_pool.AsyncConnectionPool[Conn]]:
    p = await open_cluster_db(postgres_url)
    yield p
    await p.close()


def _run(run_id: str, probe_id: str) -> RunRecord:
    return RunRecord(run_id=run_id, probe_id=probe_id, kind="http", attempt=1, first_run_id=run_id,
                     trace_id="4bf92f3577b34da6a3ce929d0e0e4736", started_ns=1, finished_ns=2,
                     status=RunStatus.FINISHED, verdict=Verdict.PASS)


async def _topic_run_ids(bootstrap: str, topic: str) -> list[tuple[str, str, int]]:
    """(run_id, key, partition) of every message on the topic."""
    return [(json.loads(r.value)["run_id"], r.key.decode(), r.partition)
            for r in await topic_records(bootstrap, topic, RESULT_PARTITIONS, timeout_s=30)]


@pytest.mark.anyio
async def test_crash_between_ack_and_record_publishes_each_run_once(
        kafka_broker, pool: psycopg_pool.AsyncConnectionPool[Conn]) -> None:  # type: ignore[no-untyped-def]
    topic = unique("results")
    await create_topic(kafka_broker.bootstrap, topic, RESULT_PARTITIONS)
    ttl_s = 2.0
    dead = LeaseBook(pool, "m-dead", ttl_s=ttl_s)
    await dead.new_epoch()
    assert await dead.sync({"p1", "p2"}) == {"p1", "p2"}
    outbox = ResultsOutbox(pool, dead, bootstrap=kafka_broker.bootstrap, results_topic=topic, batch=2)
    await outbox.start()
    try:
        runs = [_run(f"r{i}", "p1") for i in range(1, 5)] + [_run("r5", "p2")]
        assert all([await outbox.enqueue(r) for r in runs])
        assert not await outbox.enqueue(_run("r1", "p1"))  # a run id is queued once
        assert await outbox.publish_pending() == 2  # r1, r2 sent and recorded
        assert outbox.stats.idempotence_unsupported  # tansu has no InitProducerId: the fallback was taken
    finally:
        await outbox.aclose()
    # kill -9 after the broker acknowledged r3 but before the outbox recorded it: the topic holds r3.
    raw = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    await raw.start()
    try:
        await raw.send_and_wait(topic, json.dumps(run_json(runs[2])).encode(), key=b"p1")
    finally:
        await raw.stop()

    # Another member's later acknowledged result on the same partition must not hide r3 from the scan.
    live = LeaseBook(pool, "m-live", ttl_s=30)
    await live.new_epoch()
    other = next(f"q{i}" for i in range(1000) if murmur2_partition(f"q{i}".encode(), RESULT_PARTITIONS)
                 == murmur2_partition(b"p1", RESULT_PARTITIONS))
    assert await live.sync({other}) == {other}
    live_box = ResultsOutbox(pool, live, bootstrap=kafka_broker.bootstrap, results_topic=topic, idempotent=False)
    await live_box.start()
    try:
        assert await live_box.enqueue(_run("x1", other))
        assert await live_box.publish_pending() == 1

        # The dead member's leases lapse; the new owner claims p1, p2 and adopts its rows.
        await eventually(_synced(live, {other, "p1", "p2"}), 30, "the dead member's leases on p1 and p2 to lapse and move")
        # a cut-off member's last run, queued late under its stale session: published once, by the new owner
        assert await outbox.enqueue(_run("r6", "p1"))
        assert await live_box.adopt_orphans() == 3  # r4, r5, r6 (r3 is already on the topic)
        assert live_box.stats.skipped_present == 1
        assert await live_box.publish_pending() == 3
    finally:
        await live_box.aclose()

    seen = await _topic_run_ids(kafka_broker.bootstrap, topic)
    counts = Counter(r for r, _, _ in seen)
    assert counts == Counter({"r1": 1, "r2": 1, "r3": 1, "r4": 1, "r5": 1, "r6": 1, "x1": 1})
    for run_id, key, part in seen:  # key = probe id, partition = the producer's default (murmur2)
        assert part == murmur2_partition(key.encode(), RESULT_PARTITIONS)
        assert key == ("p2" if run_id == "r5" else other if run_id == "x1" else "p1")
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM results_outbox WHERE acked_at IS NULL")
        assert await cur.fetchone() == (0,)


def _synced(book: LeaseBook, wanted: set[str]):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return await book.sync(wanted) == wanted
    return check
