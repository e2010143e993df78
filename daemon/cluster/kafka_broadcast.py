"""The broadcast topic every member reads: who waits for which trace or correlation value, and relayed events.

Traces a member did not mint reach it only if whoever receives them knows it waits for them. So each
member announces, for every run in flight, its trace id and its ``correlate`` values with the partition
that owns them; every member keeps the union (:class:`Announcements`) and forwards matching spans to
that partition (``kafka_forward.py``). The same topic relays side-effect events: Slack spreads Socket
Mode events over all open connections and a load balancer sends a GitHub delivery to any member, so a
member republishes what it received and every member hands it to its local watchers.

Every member reads every partition from the end at start (no consumer group, no commits): only what
is announced while it runs matters. Messages are small JSON objects; the key is the announcing member.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from tracecanary.assertions.spans import AttrValue
from tracecanary.daemon.watchers.base import Event, EventHub
from tracecanary.errors import StartupError

log = logging.getLogger("tracecanary.cluster.broadcast")
EventHandler = Callable[[str, dict[str, Any]], Awaitable[None]]
"""``(kind, payload)`` of a relayed side-effect event (``slack``, ``github``, …)."""


class Announcements:
    """What every member waits for: trace ids and correlation values, each with its owner partition."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self.traces: OrderedDict[bytes, int] = OrderedDict()
        """Raw 16-byte trace id -> owner partition."""
        self.values: OrderedDict[tuple[str, AttrValue], int] = OrderedDict()
        """(attribute key, value) -> owner partition."""
        self.seen_keys: set[str] = set()
        """Every correlation key announced since this member started (what ``kafka_park.py`` parks for)."""
        self.on_value: Callable[[str, AttrValue, int], None] | None = None
        """Hears each value announced (``key, value, partition``): the forwarder releases parked messages."""
        self.on_trace: Callable[[bytes, int], None] | None = None
        """Hears each trace announced (raw trace id, partition): the forwarder releases the traces linking to it."""

    def __bool__(self) -> bool:
        return bool(self.traces or self.values)

    def keys(self) -> set[str]:
        """The correlation attribute keys announced."""
        return {k for k, _ in self.values}

    def apply(self, msg: dict[str, Any]) -> None:
        """Apply one broadcast message (unknown types are ignored: newer members may add some)."""
        kind, add = msg.get("type"), msg.get("op") == "add"
        if kind == "trace":
            trace = bytes.fromhex(str(msg["trace_id"]))
            self._put(self.traces, trace, msg, add)
            if add and self.on_trace is not None:
                self.on_trace(trace, int(msg["partition"]))
        elif kind == "value":
            key, value = str(msg["key"]), _value(msg["value"])
            self._put(self.values, (key, value), msg, add)
            if add:
                if len(self.seen_keys) < 1000:  # keys are a config's handful; values are per run
                    self.seen_keys.add(key)
                if self.on_value is not None:
                    self.on_value(key, value, int(msg["partition"]))

    def _put(self, table: OrderedDict[Any, int], key: Any, msg: dict[str, Any], add: bool) -> None:
        if not add:
            table.pop(key, None)
            return
        table[key] = int(msg["partition"])
        table.move_to_end(key)
        while len(table) > self.max_entries:
            table.popitem(last=False)


def _value(v: Any) -> AttrValue:
    return tuple(v) if isinstance(v, list) else v  # type: ignore[no-any-return]


@dataclass
class BroadcastStats:
    """Counters of one member's broadcast link."""

    sent: int = 0
    received: int = 0
    events_relayed: int = 0
    bad_messages: int = 0


class Broadcast:
    """Send to and read from the broadcast topic."""

    def __init__(self, bootstrap: str, topic: str, member_id: str, *, on_event: EventHandler | None = None,
                 announcements: Announcements | None = None, op_timeout_s: float = 10.0,
                 idle_wait_s: float = 2.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.member_id = member_id
        self.on_event = on_event
        self.announcements = announcements if announcements is not None else Announcements()
        self.op_timeout_s = op_timeout_s
        self.idle_wait_s = idle_wait_s
        """Bound on the reader's idle wake-ups (a read returns as soon as a message arrives)."""
        self.stats = BroadcastStats()
        self._producer: AIOKafkaProducer | None = None

    async def _send(self, msg: dict[str, Any]) -> None:
        assert self._producer is not None, "run() first"
        msg["member"] = self.member_id
        with anyio.fail_after(self.op_timeout_s):
            await self._producer.send_and_wait(self.topic, json.dumps(msg, separators=(",", ":")).encode(),
                                               key=self.member_id.encode())
        self.stats.sent += 1

    async def announce_trace(self, trace_id_hex: str, partition: int, *, add: bool = True) -> None:
        """Say that ``partition``'s owner waits for spans of (or linking to) this trace; ``add=False`` retracts."""
        await self._send({"type": "trace", "op": "add" if add else "del", "trace_id": trace_id_hex.lower(),
                          "partition": partition})

    async def announce_value(self, key: str, value: AttrValue, partition: int, *, add: bool = True) -> None:
        """Say that ``partition``'s owner waits for traces whose spans carry ``key=value``."""
        await self._send({"type": "value", "op": "add" if add else "del", "key": key, "value": value,
                          "partition": partition})

    async def relay_event(self, kind: str, payload: dict[str, Any]) -> None:
        """Republish a side-effect event this member received, for every member's watchers."""
        await self._send({"type": "event", "kind": kind, "payload": payload})

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read the topic from its end until cancelled; ready once positioned."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    consumer_timeout_ms=int(self.idle_wait_s * 1000))
        try:
            with anyio.fail_after(self.op_timeout_s * 3):
                await producer.start()
                await consumer.start()
                parts = await producer.partitions_for(self.topic)
                tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
                consumer.assign(tps)
                await consumer.seek_to_end(*tps)
                for tp in tps:
                    await consumer.position(tp)  # resolve "end" now: what is sent from here on is read
        except (KafkaError, TimeoutError, OSError) as e:
            with anyio.CancelScope(shield=True):
                await consumer.stop()
                await producer.stop()
            raise StartupError(f"kafka broadcast topic {self.topic!r}: {e}") from e
        self._producer = producer
        try:
            task_status.started()
            while True:
                for records in (await consumer.getmany(timeout_ms=int(self.idle_wait_s * 1000))).values():
                    for rec in records:
                        await self._receive(rec.value)
        finally:
            self._producer = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await consumer.stop()
                await producer.stop()

    async def _receive(self, value: bytes | None) -> None:
        try:
            msg = json.loads(value or b"")
            if not isinstance(msg, dict):
                raise ValueError("not an object")
            self.stats.received += 1
            if msg.get("type") == "event":
                if self.on_event is not None:
                    self.stats.events_relayed += 1
                    await self.on_event(str(msg["kind"]), dict(msg["payload"]))
            else:
                self.announcements.apply(msg)
        except (ValueError, KeyError, TypeError) as e:
            self.stats.bad_messages += 1
            log.warning("bad broadcast message error=%r", str(e))



class RelayedEventHub(EventHub):
    """An EventHub whose events reach every member: :meth:`publish` (a webhook delivery or Socket Mode
    envelope this member received) goes to the broadcast topic, and :meth:`deliver` (called for every
    relayed event, this member's own included) hands it to the local watchers. If the relay fails the
    event is delivered here at least (and the failure logged): the owner may be this member."""

    def __init__(self, kind: str, relay: Callable[[str, Event], Awaitable[None]], spawn: Callable[..., None],
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind = kind
        self._relay = relay
        self._spawn = spawn
        self.relay_failures = 0

    def publish(self, event: Event) -> None:
        self._spawn(self._send, event)

    async def _send(self, event: Event) -> None:
        try:
            await self._relay(self.kind, event)
        except (KafkaError, TimeoutError, OSError, TypeError, ValueError) as e:
            self.relay_failures += 1
            log.warning("event relay failed kind=%s error=%r; delivered here only", self.kind, str(e))
            self.deliver(event)

    def deliver(self, event: Event) -> None:
        """An event relayed by any member: offer it to this member's watchers."""
        super().publish(event)
