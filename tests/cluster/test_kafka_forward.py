"""Linked and correlated traces and side-effect events reach the owner (real tansu, two members)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from tests.cluster.kafka_helpers import ExporterLikeProducer, create_topic, span, trace_on, unique
from tests.daemon.support import eventually
from tracecanary.daemon.cluster.kafka_broadcast import Broadcast, RelayedEventHub
from tracecanary.daemon.cluster.kafka_filter import TraceFilter
from tracecanary.daemon.cluster.kafka_forward import Forwarder, ForwardRouter
from tracecanary.daemon.cluster.kafka_membership import KafkaMembership, MembershipConfig
from tracecanary.daemon.cluster.kafka_park import CorrelationPark, ProbeCorrelateKeys
from tracecanary.daemon.cluster.partitioner import PARTITIONERS, trace_key
from tracecanary.daemon.spans.buffer import TraceBuffer
from tracecanary.daemon.spans.kafka import is_json_value
from tracecanary.daemon.spans.otlp import encode_request, scan_protobuf
from tracecanary.probes.base import ProbeSpec
from tracecanary.probes.http import HttpProbe

PARTITIONS = 4


@dataclass
class Member:
    membership: KafkaMembership
    broadcast: Broadcast
    forwarder: Forwarder
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


async def _member(tg: anyio.abc.TaskGroup, config: MembershipConfig, name: str, *, broadcast_topic: str,
                  forward_topic: str, park: CorrelationPark | None = None) -> Member:
    membership = KafkaMembership(config, TraceBuffer(correlation_attributes=["job.id"]), member_id=name)
    events: list[tuple[str, dict[str, Any]]] = []

    async def on_event(kind: str, payload: dict[str, Any]) -> None:
        events.append((kind, payload))

    broadcast = Broadcast(config.bootstrap, broadcast_topic, name, on_event=on_event)
    router = ForwardRouter(broadcast.announcements, lambda: membership.ownership)
    forwarder = Forwarder(membership, router, topic=forward_topic, park=park)
    await tg.start(lambda task_status: membership.run(task_status=task_status))
    await tg.start(lambda task_status: broadcast.run(task_status=task_status))
    await tg.start(lambda task_status: forwarder.run(task_status=task_status))
    return Member(membership, broadcast, forwarder, events)


async def _two_members(tg: anyio.abc.TaskGroup, bootstrap: str, *,
                       parks: tuple[CorrelationPark | None, CorrelationPark | None] = (None, None),
                       ) -> tuple[MembershipConfig, Member, Member, str]:
    """Members a and b on fresh topics, once they split the partitions and read their forward partitions;
    the config, both, and the spans topic."""
    spans_topic, forward_topic, broadcast_topic = unique("otlp_spans"), unique("fwd"), unique("bcast")
    for topic, n in ((spans_topic, PARTITIONS), (forward_topic, PARTITIONS), (broadcast_topic, 1)):
        await create_topic(bootstrap, topic, n)
    config = MembershipConfig(bootstrap=bootstrap, group=unique("g"), spans_topic=spans_topic, session_timeout_s=6.0)
    a = await _member(tg, config, "a", broadcast_topic=broadcast_topic, forward_topic=forward_topic, park=parks[0])
    b = await _member(tg, config, "b", broadcast_topic=broadcast_topic, forward_topic=forward_topic, park=parks[1])
    ma, mb = a.membership, b.membership

    def settled() -> bool:
        pa, pb = ma.ownership.partitions, mb.ownership.partitions
        return bool(pa) and bool(pb) and not pa & pb and len(pa | pb) == PARTITIONS
    await eventually(settled, 60, "two members to split the partitions")
    await eventually(lambda: a.forwarder.stats.reassignments > 0 and b.forwarder.stats.reassignments > 0
                     and all(m.forwarder.stats.reassignments >= m.membership.ownership.epoch for m in (a, b)),
                     30, "forward partitions to follow ownership")
    return config, a, b, spans_topic


@pytest.mark.anyio
async def test_linked_correlated_and_events_reach_the_owner(kafka_broker) -> None:  # type: ignore[no-untyped-def]
    async with anyio.create_task_group() as tg:
        config, a, b, spans_topic = await _two_members(tg, kafka_broker.bootstrap)
        fn = PARTITIONERS[config.partitioner]
        ma, mb = a.membership, b.membership

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


@pytest.mark.anyio
async def test_a_correlated_trace_before_its_announcement_still_reaches_the_owner(  # type: ignore[no-untyped-def]
        kafka_broker) -> None:
    """The race: the job's spans reach b (and a) before a's announcement of job.id=J-9 does. Both park them;
    the announcement releases them: b forwards its one to a, a keeps its own; noise carrying another value
    stays parked and expires."""
    parks = (CorrelationPark(lambda: {"job.id"}), CorrelationPark(lambda: {"job.id"}))
    async with anyio.create_task_group() as tg:
        config, a, b, spans_topic = await _two_members(tg, kafka_broker.bootstrap, parks=parks)
        ma, mb = a.membership, b.membership
        job_far = trace_on(mb.ownership.partitions, PARTITIONS, config.partitioner, 0xB100)
        job_near = trace_on(ma.ownership.partitions, PARTITIONS, config.partitioner, 0xC100)
        other = trace_on(mb.ownership.partitions, PARTITIONS, config.partitioner, 0xD100)
        async with ExporterLikeProducer(kafka_broker.bootstrap, config.partitioner) as producer:
            await producer.send_trace(spans_topic, [span(job_far, "job run", attributes={"job.id": "J-9"})])
            await producer.send_trace(spans_topic, [span(job_far, "job step")])  # a child: parked with its trace
            await producer.send_trace(spans_topic, [span(job_near, "job run", attributes={"job.id": "J-9"})])
            await producer.send_trace(spans_topic, [span(other, "job run", attributes={"job.id": "J-0"})])
        await eventually(lambda: parks[1].stats.parked == 3 and parks[0].stats.parked == 1, 60,
                         "the members to park the early spans")
        assert not ma.buffer.trace(job_far) and not ma.buffer.trace(job_near)  # nobody announced J-9 yet

        run_trace = ma.mint_trace_id()
        await a.broadcast.announce_value("job.id", "J-9", PARTITIONERS[config.partitioner](
            trace_key(run_trace), PARTITIONS))
        await eventually(lambda: len(ma.buffer.trace(job_far)) == 2 and len(ma.buffer.trace(job_near)) == 1, 60,
                         "the parked traces to reach a once J-9 is announced")
        assert ma.buffer.traces_with_attribute("job.id", "J-9") == {job_far, job_near}
        assert (parks[1].stats.released, parks[0].stats.released) == (2, 1)
        assert b.forwarder.stats.forwarded == 2 and len(parks[1]) == 1  # J-0 waits for its window
        assert not mb.buffer.trace(job_far) and not mb.buffer.trace(other) and not ma.buffer.trace(other)
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_linking_trace_before_the_run_announced_its_trace_still_reaches_the_owner(  # type: ignore[no-untyped-def]
        kafka_broker) -> None:
    """``linked``'s race: a consumer's trace linking to a's run reaches b before a's announcement of the run's
    trace does. b parks it (and its child) while a linked probe is loaded; the announcement releases both to
    a; a message linking into a trace nobody announces stays parked."""
    parks = (CorrelationPark(frozenset, linked=lambda: True), CorrelationPark(frozenset, linked=lambda: True))
    async with anyio.create_task_group() as tg:
        config, a, b, spans_topic = await _two_members(tg, kafka_broker.bootstrap, parks=parks)
        ma, mb = a.membership, b.membership
        run_trace = ma.mint_trace_id()  # a's run: its announcement is late
        linker = trace_on(mb.ownership.partitions, PARTITIONS, config.partitioner, 0xA200)
        other = trace_on(mb.ownership.partitions, PARTITIONS, config.partitioner, 0xD200)
        async with ExporterLikeProducer(kafka_broker.bootstrap, config.partitioner) as producer:
            await producer.send_trace(spans_topic, [span(linker, "orders process", links=[run_trace])])
            await producer.send_trace(spans_topic, [span(linker, "db insert")])  # a child: parked with its trace
            await producer.send_trace(spans_topic, [span(other, "other", links=["0" * 31 + "1"])])
        await eventually(lambda: parks[1].stats.parked == 3, 60, "b to park the early spans")
        assert not ma.buffer.trace(linker)

        await a.broadcast.announce_trace(run_trace, PARTITIONERS[config.partitioner](trace_key(run_trace), PARTITIONS))
        await eventually(lambda: len(ma.buffer.trace(linker)) == 2, 60,
                         "the parked linking trace to reach a once the run's trace is announced")
        assert ma.buffer.linking_traces(run_trace) == {linker}
        assert parks[1].stats.released == 2 and b.forwarder.stats.forwarded == 2 and len(parks[1]) == 1
        assert not mb.buffer.trace(linker) and not ma.buffer.trace(other)
        tg.cancel_scope.cancel()


def test_linking_messages_are_parked_only_while_a_probe_expects_linked_traces() -> None:
    target = "ab" * 16
    body = encode_request([span("cd" * 16, "consume", links=[target])]).SerializeToString()
    expects = [False]
    park = CorrelationPark(frozenset, linked=lambda: expects[0])
    assert not park.wanted() and not park.consider(body, scan_protobuf(body))
    expects[0] = True
    assert park.wanted() and park.consider(body, scan_protobuf(body))
    assert park.release_linking(bytes.fromhex("ef" * 16)) == []
    [(got, traces)] = park.release_linking(bytes.fromhex(target))
    assert got == body and traces == {bytes.fromhex("cd" * 16)} and len(park) == 0

    def probe(tree: list[dict[str, object]]) -> ProbeSpec:
        return HttpProbe.model_validate({"id": "p", "kind": "http", "request": {"url": "http://127.0.0.1:9/"},
                                         "expect": {"trace": {"tree": tree}}})
    plain = [probe([{"span": "GET /"}])]
    loaded: list[ProbeSpec] = plain
    keys = ProbeCorrelateKeys(lambda: loaded)
    assert not keys.expects_linked()
    loaded = [*plain, probe([{"span": "GET /", "children": [{"span": "publish", "linked": [{"span": "consume"}]}]}])]
    assert keys.expects_linked() and keys() == frozenset()  # a reload is seen


def test_the_park_is_bounded_and_counts_what_it_drops() -> None:
    now = [0.0]
    park = CorrelationPark(lambda: {"job.id"}, window_s=5.0, max_messages=2, clock=lambda: now[0])
    messages = [encode_request([span(f"{i:032x}", "job", attributes={"job.id": f"J-{i}"})]).SerializeToString()
                for i in range(1, 4)]
    for body in messages:
        assert park.consider(body, scan_protobuf(body))
    noise = encode_request([span("e" * 32, "x")]).SerializeToString()
    assert not park.consider(noise, scan_protobuf(noise))
    assert (len(park), park.stats.parked, park.stats.overflowed) == (2, 3, 1)  # J-1 pushed out
    assert park.release("job.id", "J-1") == []
    [(body, traces)] = park.release("job.id", "J-2")
    assert body == messages[1] and traces == {bytes.fromhex(f"{2:032x}")}
    now[0] = 6.0
    park.expire()
    assert (len(park), park.stats.expired, park.stats.released) == (0, 1, 1)


def test_a_protobuf_message_whose_length_byte_reads_as_a_brace_is_not_json() -> None:
    """Tag 0x0a then length 123 ('{') or 91 ('['): ``auto`` used to take it for OTLP/JSON and drop it."""
    seen = set()
    for i in range(4000):
        body = encode_request([span(f"{i + 1:032x}", "j" * (i % 80))]).SerializeToString()
        if body[:2] in (b"\n{", b"\n["):
            seen.add(body[1:2])
            assert not is_json_value(body)
            assert TraceFilter().ingest(TraceBuffer(), None, body, "auto") == "skipped"  # decoded, not bad
    assert seen == {b"{", b"["}
    assert is_json_value(b'\n  {"resourceSpans": []}') and is_json_value(b"[]")
