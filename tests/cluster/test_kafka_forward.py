"""Linked and correlated traces and side-effect events reach the owner (real tansu, two members)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from tests.cluster.kafka_helpers import ExporterLikeProducer, create_topic, span, trace_on, unique
from tests.daemon.support import eventually
from tracecanary.daemon.cluster.kafka_broadcast import Broadcast, RelayedEventHub
from tracecanary.daemon.cluster.kafka_forward import Forwarder, ForwardRouter
from tracecanary.daemon.cluster.kafka_membership import KafkaMembership, MembershipConfig
from tracecanary.daemon.cluster.partitioner import PARTITIONERS, trace_key
from tracecanary.daemon.spans.buffer import TraceBuffer

PARTITIONS = 4


@dataclass
class Member:
    membership: KafkaMembership
    broadcast: Broadcast
    forwarder: Forwarder
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


async def _member(tg: anyio.abc.TaskGroup, config: MembershipConfig, name: str, *, broadcast_topic: str,
                  forward_topic: str) -> Member:
    membership = KafkaMembership(config, TraceBuffer(correlation_attributes=["job.id"]), member_id=name)
    events: list[tuple[str, dict[str, Any]]] = []

    async def on_event(kind: str, payload: dict[str, Any]) -> None:
        events.append((kind, payload))

    broadcast = Broadcast(config.bootstrap, broadcast_topic, name, on_event=on_event)
    router = ForwardRouter(broadcast.announcements, lambda: membership.ownership)
    forwarder = Forwarder(membership, router, topic=forward_topic)
    await tg.start(lambda task_status: membership.run(task_status=task_status))
    await tg.start(lambda task_status: broadcast.run(task_status=task_status))
    await tg.start(lambda task_status: forwarder.run(task_status=task_status))
    return Member(membership, broadcast, forwarder, events)


@pytest.mark.anyio
async def test_linked_correlated_and_events_reach_the_owner(kafka_broker) -> None:  # type: ignore[no-untyped-def]
    spans_topic, forward_topic, broadcast_topic = unique("otlp_spans"), unique("fwd"), unique("bcast")
    for topic, n in ((spans_topic, PARTITIONS), (forward_topic, PARTITIONS), (broadcast_topic, 1)):
        await create_topic(kafka_broker.bootstrap, topic, n)
    config = MembershipConfig(bootstrap=kafka_broker.bootstrap, group=unique("g"), spans_topic=spans_topic,
                              session_timeout_s=6.0)
    fn = PARTITIONERS[config.partitioner]
    async with anyio.create_task_group() as tg:
        a = await _member(tg, config, "a", broadcast_topic=broadcast_topic, forward_topic=forward_topic)
        b = await _member(tg, config, "b", broadcast_topic=broadcast_topic, forward_topic=forward_topic)
        ma, mb = a.membership, b.membership

        def settled() -> bool:
            pa, pb = ma.ownership.partitions, mb.ownership.partitions
            return bool(pa) and bool(pb) and not pa & pb and len(pa | pb) == PARTITIONS
        await eventually(settled, 60, "two members to split the partitions")
        await eventually(lambda: a.forwarder.stats.reassignments > 0 and b.forwarder.stats.reassignments > 0
                         and all(m.forwarder.stats.reassignments >= m.membership.ownership.epoch for m in (a, b)),
                         30, "forward partitions to follow ownership")

        run_trace = ma.mint_trace_id()
        home = fn(trace_key(run_trace), PARTITIONS)
        await a.broadcast.announce_trace(run_trace, home)
        await a.broadcast.announce_value("job.id", "J-1", home)
        await eventually(lambda: len(b.broadcast.announcements.traces) == 1
                         and len(b.broadcast.announcements.values) == 1, 30, "b to hear a's announcements")

        on_b = mb.ownership.partitions
        linker = trace_on(on_b, PARTITIONS, config.partitioner, 0xA000)
        job_far = trace_on(on_b, PARTITIONS, config.partitioner, 0xB000)
        job_near = trace_on(ma.ownership.partitions, PARTITIONS, config.partitioner, 0xC000)
        noise = trace_on(on_b, PARTITIONS, config.partitioner, 0xD000)
        async with ExporterLikeProducer(kafka_broker.bootstrap, config.partitioner) as producer:
            await producer.send_trace(spans_topic, [span(run_trace, "orders publish")])
            await producer.send_trace(spans_topic, [span(linker, "orders process", links=[run_trace])])
            await producer.send_trace(spans_topic, [span(linker, "db insert")])  # a child, no link: follows the route
            await producer.send_trace(spans_topic, [span(job_far, "job run", attributes={"job.id": "J-1"})])
            await producer.send_trace(spans_topic, [span(job_near, "job run", attributes={"job.id": "J-1"})])
            await producer.send_trace(spans_topic, [span(noise, "other", links=["0" * 31 + "1"])])

        await eventually(lambda: len(ma.buffer.trace(linker)) == 2 and len(ma.buffer.trace(run_trace)) == 1
                         and ma.buffer.traces_with_attribute("job.id", "J-1") == {job_far, job_near},
                         60, "linked and correlated traces to reach a")
        assert ma.buffer.linking_traces(run_trace) == {linker}
        assert b.forwarder.stats.forwarded == 3  # linker x2, job_far; job_near stayed local to a
        assert not mb.buffer.trace(linker) and not mb.buffer.trace(noise) and not ma.buffer.trace(noise)

        await b.broadcast.relay_event("slack", {"channel": "C0ALERT", "text": "ORB_BREAKOUT"})
        await eventually(lambda: ("slack", {"channel": "C0ALERT", "text": "ORB_BREAKOUT"}) in a.events, 30,
                         "the relayed Slack event to reach a")
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_relayed_event_hub_reaches_every_member_once(kafka_broker) -> None:  # type: ignore[no-untyped-def]
    topic = unique("bcast")
    await create_topic(kafka_broker.bootstrap, topic, 1)
    async with anyio.create_task_group() as tg:
        hubs: dict[str, RelayedEventHub] = {}
        for name in ("a", "b"):
            async def deliver(kind: str, event: dict[str, Any], name: str = name) -> None:
                hubs[name].deliver(event)
            bc = Broadcast(kafka_broker.bootstrap, topic, name, on_event=deliver)
            await tg.start(lambda task_status, bc=bc: bc.run(task_status=task_status))
            hubs[name] = RelayedEventHub("github", bc.relay_event, tg.start_soon)
        delivery = {"event": "issue_comment", "delivery": "d-1", "payload": {"comment": {"body": "LGTM"}}}
        with hubs["a"].subscribe(lambda e: e.get("delivery") == "d-1") as sub_a, \
                hubs["b"].subscribe(lambda e: e.get("delivery") == "d-1") as sub_b:
            hubs["b"].publish(delivery)  # GitHub reached b; a's run waits for it
            got_a, got_b = await sub_a.next_batch(30), await sub_b.next_batch(30)
        assert got_a == [delivery] and got_b == [delivery]
        assert hubs["a"].published == 1 and hubs["b"].published == 1  # once each, b's own copy included
        tg.cancel_scope.cancel()
