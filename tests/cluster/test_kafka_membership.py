"""Membership over a real Kafka-compatible broker (tansu): ownership, minting, the trace filter, rebalance."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack

import anyio
import pytest

from tests.cluster.kafka_helpers import ExporterLikeProducer, create_topic, span, unique
from tests.daemon.support import eventually
from tracecanary.daemon.cluster.kafka_membership import KafkaMembership, MembershipConfig
from tracecanary.daemon.cluster.partitioner import PARTITIONERS, trace_key
from tracecanary.daemon.spans.buffer import TraceBuffer

PARTITIONS = 6
PROBES = [f"probe-{i}" for i in range(30)]


def _settled(members: Sequence[KafkaMembership], n: int = PARTITIONS) -> bool:
    owned = [m.ownership.partitions for m in members]
    return (all(m.ownership.num_partitions == n for m in members)
            and sum(len(p) for p in owned) == n and frozenset().union(*owned) == frozenset(range(n)))


async def _start(tg: anyio.abc.TaskGroup, config: MembershipConfig, name: str) -> tuple[KafkaMembership, anyio.CancelScope]:
    member = KafkaMembership(config, TraceBuffer(), member_id=name)
    scope = anyio.CancelScope()

    async def run(task_status: anyio.abc.TaskStatus[None]) -> None:
        with scope:
            await member.run(task_status=task_status)

    await tg.start(run)
    return member, scope


@pytest.mark.anyio
@pytest.mark.parametrize("partitioner", ["sarama_compat", "murmur2"])
async def test_three_members_split_probes_and_receive_their_traces(kafka_broker, partitioner: str) -> None:  # type: ignore[no-untyped-def]
    topic = unique("otlp_spans")
    await create_topic(kafka_broker.bootstrap, topic, PARTITIONS)
    config = MembershipConfig(bootstrap=kafka_broker.bootstrap, group=unique("g"), spans_topic=topic,
                              partitioner=partitioner, session_timeout_s=6.0)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        members = [(await _start(tg, config, f"m{i}"))[0] for i in range(3)]
        await eventually(lambda: _settled(members), 60, "three members to split 6 partitions")
        # Every probe has exactly one owner.
        owners = {p: [m.member_id for m in members if m.ownership.owns_probe(p)] for p in PROBES}
        assert all(len(o) == 1 for o in owners.values()), owners
        assert sorted(p for m in members for p in m.ownership.probes(PROBES)) == sorted(PROBES)

        minted = {m.member_id: [m.mint_trace_id() for _ in range(4)] for m in members}
        partition_of = PARTITIONERS[partitioner]
        async with ExporterLikeProducer(kafka_broker.bootstrap, partitioner) as producer:
            for m in members:
                for tid in minted[m.member_id]:
                    landed = await producer.send_trace(topic, [span(tid, "GET /probe")])
                    assert landed == partition_of(trace_key(tid), PARTITIONS)
                    assert landed in m.ownership.partitions
            # The monitored system's own traffic: skipped by the filter, whatever partition it lands on.
            for i in range(30):
                await producer.send_trace(topic, [span(f"{i + 1:032x}", "background")])
            # A foreign trace linking to m0's run (a queue consumer's new trace) on a partition m0 owns.
            m0 = members[0]
            linker = next(t for t in (f"{0xabc000 + i:032x}" for i in range(10_000))
                          if partition_of(trace_key(t), PARTITIONS) in m0.ownership.partitions)
            await producer.send_trace(topic, [span(linker, "orders process", links=[minted["m0"][0]])])

        def arrived() -> bool:
            return all(len(m.buffer.trace(t)) == 1 for m in members for t in minted[m.member_id]) \
                and len(m0.buffer.trace(linker)) == 1
        await eventually(arrived, 60, "every member's minted traces")
        for m in members:
            others = [t for o in members if o is not m for t in minted[o.member_id]]
            assert all(not m.buffer.trace(t) for t in others)  # no member buffers another's traces
            assert all(not m.buffer.trace(f"{i + 1:032x}") for i in range(30))
        assert sum(m.filter.stats.skipped for m in members) == 30
        assert m0.filter.stats.linked == 1
        assert m0.buffer.linking_traces(minted["m0"][0]) == {linker}
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_leaving_member_partitions_move_and_survivors_keep_theirs(kafka_broker) -> None:  # type: ignore[no-untyped-def]
    topic = unique("otlp_spans")
    await create_topic(kafka_broker.bootstrap, topic, PARTITIONS)
    config = MembershipConfig(bootstrap=kafka_broker.bootstrap, group=unique("g"), spans_topic=topic,
                              session_timeout_s=6.0)
    async with anyio.create_task_group() as tg, AsyncExitStack():
        started = [await _start(tg, config, f"m{i}") for i in range(3)]
        members = [m for m, _ in started]
        await eventually(lambda: _settled(members), 60, "three members to split 6 partitions")
        before = {m.member_id: m.ownership for m in members}
        seen: list[frozenset[int]] = []

        async def follow() -> None:
            async for own in members[0].changes():
                seen.append(own.partitions)

        tg.start_soon(follow)
        started[2][1].cancel()  # m2 leaves the group (a clean stop: the group rebalances at once)
        survivors = members[:2]
        await eventually(lambda: _settled(survivors), 60, "two survivors to take all 6 partitions")
        for m in survivors:  # the sticky assignor moves only the leaver's partitions
            assert before[m.member_id].partitions <= m.ownership.partitions
            assert not m.ownership.lost_since(before[m.member_id])
        gained = frozenset().union(*(m.ownership.partitions - before[m.member_id].partitions for m in survivors))
        assert gained == before["m2"].partitions
        assert members[2].ownership.partitions == frozenset()
        moved = [p for p in PROBES if before["m2"].owns_probe(p)]
        assert all(any(m.ownership.owns_probe(p) for m in survivors) for p in moved)
        await eventually(lambda: bool(seen) and seen[-1] == members[0].ownership.partitions, 30,
                         "the change stream to deliver the new ownership")
        tg.cancel_scope.cancel()


def test_filter_skips_foreign_messages_by_key_unless_someone_waits_for_foreign_traces() -> None:
    from tracecanary.daemon.cluster.kafka_filter import TraceFilter
    from tracecanary.daemon.spans.otlp import encode_request

    mine, foreign = "ab" * 16, "cd" * 16
    tf, buffer = TraceFilter(), TraceBuffer()
    tf.want(mine)
    value = encode_request([span(foreign, "linking", links=[mine])]).SerializeToString()
    tf.foreign_wanted = lambda: False
    assert tf.ingest(buffer, foreign.encode(), value, "auto") == "skipped"
    assert tf.stats.scanned == 0  # decided by the key alone
    tf.foreign_wanted = lambda: True
    assert tf.ingest(buffer, foreign.encode(), value, "auto") == "linked"
    assert tf.stats.scanned == 1 and buffer.linking_traces(mine) == {foreign}
    own = encode_request([span(mine, "GET /probe")]).SerializeToString()
    assert tf.ingest(buffer, mine.encode(), own, "auto") == "owned" and len(buffer.trace(mine)) == 1
    assert tf.ingest(buffer, None, own, "auto") == "owned"  # keyless: scanned for wanted trace ids
    tf.forget(mine)
    assert mine not in tf and tf.ingest(buffer, mine.encode(), own, "auto") == "skipped"
