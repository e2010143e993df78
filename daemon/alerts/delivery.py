"""Where an alert leaves from: claim, durable outbox, one delivery lane per channel, channel health.

The manager hands each notification to :meth:`Outbox.announce`, which claims its dedup key (the
idempotency key: incident id + transition; once across replicas and restarts), writes one outbox
entry per target channel *before* anything is sent, and queues each in that channel's
:class:`~tracecanary.daemon.alerts.lane.Lane`. Lanes deliver independently (a dead channel holds
only its own queue) and take an entry out of the outbox once it was sent, failed permanently or
expired; a restart re-queues what is left, so every notification is retried until delivered or
expired, and a recovery is never lost. Everything lives in the store's kv space:

==================  ==============================  ===========================================
kv namespace        key                             value
==================  ==============================  ===========================================
alerts.claims       dedup key                       who claimed it, when; ``queuing`` + the note
                                                    and targets until its outbox entries exist
alerts.outbox       "<dedup key>|<channel>"         a pending delivery (re-queued on start)
alerts.refs         "<incident id>|<channel>"       the channel's reference (Slack ts) to thread on
alerts.channels     channel name                    delivery health (failing, last error …)
==================  ==============================  ===========================================

The store is best-effort on this path: when it fails, claims and deliveries are kept in memory (and
logged), so an alert about the broken store still goes out.

Events: ``alert.notification`` (announced), ``alert.attempt`` (every delivery attempt: channel, time,
outcome ``sent|retry|failed|expired|dropped``, error), ``alert.dropped`` (pushed out of a full lane,
or its channel was removed by a reload).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus
from opentelemetry.trace import Tracer

from tracecanary.daemon.alerts.base import Channel, Notification
from tracecanary.daemon.alerts.lane import ChannelHealth, Delivery, DeliveryTiming, Lane
from tracecanary.daemon.store.base import Store

__all__ = ["ChannelHealth", "Delivery", "DeliveryTiming", "Outbox", "QueueStats"]

log = logging.getLogger("tracecanary.alerts")
T = TypeVar("T")
NS_CLAIMS, NS_OUTBOX = "alerts.claims", "alerts.outbox"
NS_REFS, NS_CHANNELS = "alerts.refs", "alerts.channels"
STORE_TIMEOUT_S = 5.0
"""Deadline on each store call of the delivery path: a hung store must not hold alerts back."""
CLAIM_RETENTION_S = 30 * 86400.0
"""Claims older than this are pruned on start (a dedup key is only re-derived around a crash)."""


@dataclass(frozen=True)
class QueueStats:
    pending: int
    """Deliveries waiting in the lanes (all channels), the one being attempted included."""
    dropped: int
    """Deliveries pushed out of a full lane since start."""


class Outbox:
    """Claims, records and queues notifications; ``run()`` runs one lane per channel (``tg.start`` it)."""

    def __init__(
        self, store: Store, channels: Mapping[str, Channel], *, queue_size: int, clock: Callable[[], float],
        timing: DeliveryTiming = DeliveryTiming(), on_attempt: Callable[[str, str], None] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.store = store
        self._queue_size = queue_size
        self._clock = clock
        self._timing = timing
        self._on_attempt = on_attempt
        self._tracer = tracer
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._claimed: set[str] = set()
        """Dedup keys claimed while the store could not take the claim."""
        self._queued: set[str] = set()
        """Outbox keys in a lane (so the start-up pass does not queue them a second time)."""
        self._changed = anyio.Event()
        self._tg: TaskGroup | None = None
        self._scopes: dict[str, anyio.CancelScope] = {}
        self.lanes: dict[str, Lane] = {}
        self.on_channel_failing: Callable[[str, str], None] | None = None
        """Called when a channel starts failing (name, detail): the manager raises a system incident."""
        self.on_channel_recovered: Callable[[str, str], None] | None = None
        for name, channel in channels.items():
            self.lanes[name] = self._lane(name, channel)

    def _lane(self, name: str, channel: Channel) -> Lane:
        return Lane(name, channel, self, self._timing, self._queue_size, self._clock, self._tracer)

    @property
    def channels(self) -> dict[str, Channel]:
        return {name: lane.channel for name, lane in self.lanes.items()}

    # --- announcing ------------------------------------------------------------------------------
    async def announce(self, note: Notification, channel_names: Sequence[str]) -> bool:
        """Claim the dedup key, write the outbox entries, queue one delivery per channel; False when
        the key was claimed before. A failing store does not stop it (kept in memory, logged)."""
        if note.dedup_key in self._claimed:
            return False
        targets = [c for c in channel_names if c in self.lanes and self.lanes[c].channel.accepts(note.event)]
        now_ns = int(self._clock() * 1e9)
        claim = {"owner": self._owner, "time_ns": now_ns, "state": "queuing",
                 "note": note.model_dump(mode="json"), "channels": targets}
        fresh = await self._try(self.store.kv_put_if_absent(NS_CLAIMS, note.dedup_key, claim), "claim")
        if fresh is False:
            log.info("alert.duplicate dedup_key=%s", note.dedup_key)
            return False
        if fresh is None:  # the store could not say: claim it in memory (once per process)
            self._claimed.add(note.dedup_key)
        items = [Delivery(note, channel, now_ns) for channel in targets]
        for item in items:  # written before it can be sent
            await self._try(self.store.kv_put(NS_OUTBOX, item.key, _entry(item)), "outbox")
        await self._try(self.store.kv_put(NS_CLAIMS, note.dedup_key, {"owner": self._owner, "time_ns": now_ns}),
                        "claim")
        await self._try(self.store.append_event("alert.notification", {
            "dedup_key": note.dedup_key, "event": note.event, "probe_id": note.probe_id,
            "incident_id": note.incident_id, "verdict": note.verdict, "run_id": note.run_id,
            "trace_id": note.trace_id, "channels": targets, "title": note.title, "time_ns": note.time_ns}), "event")
        log.info("alert.notify probe=%s event=%s incident=%s channels=%s",
                 note.probe_id, note.event, note.incident_id, ",".join(targets))
        for item in items:
            await self._queue(item)
        return True

    async def _queue(self, item: Delivery) -> None:
        lane = self.lanes.get(item.channel)
        if lane is None or item.key in self._queued:
            return
        self._queued.add(item.key)
        dropped = lane.put(item)
        if dropped is not None:
            await self._try(self.store.append_event("alert.dropped", {
                "dedup_key": dropped.note.dedup_key, "channel": dropped.channel, "reason": "queue full"}), "event")
            await self.record(dropped, 0, self._clock(), "dropped", f"queue full ({self._queue_size} pending)")
            await self.finished(dropped, "dropped", None, None)
        self.settled()

    # --- lanes -----------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Re-queue the outbox (and half-announced claims), then deliver until cancelled (pending
        items stay in the outbox)."""
        await self._load_health()
        await self._requeue()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for name in list(self.lanes):
                self._start_lane(name)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None

    def _start_lane(self, name: str) -> None:
        assert self._tg is not None
        scope = anyio.CancelScope()
        self._scopes[name] = scope
        lane = self.lanes[name]

        async def run_lane() -> None:
            with scope:
                await lane.run()

        self._tg.start_soon(run_lane)

    async def set_channels(self, channels: Mapping[str, Channel]) -> None:
        """A reloaded config: new lanes start, replaced channels take over their lane's queue, removed
        channels' pending deliveries are dropped (recorded). Old channel objects are closed."""
        for name in [n for n in self.lanes if n not in channels]:
            removed = self.lanes.pop(name)
            if (scope := self._scopes.pop(name, None)) is not None:
                scope.cancel()
            for item in [*([removed.current] if removed.current else []), *removed.items]:
                await self._try(self.store.append_event("alert.dropped", {
                    "dedup_key": item.note.dedup_key, "channel": name, "reason": "channel removed"}), "event")
                await self.finished(item, "dropped", None, None)
            await removed.channel.aclose()
            log.warning("alert.channel_removed channel=%s dropped=%d", name, removed.pending)
            if removed.health.failing and self.on_channel_recovered is not None:  # its incident cannot clear now
                self.on_channel_recovered(name, "the channel was removed from the configuration")
        for name, channel in channels.items():
            lane = self.lanes.get(name)
            if lane is None:
                self.lanes[name] = self._lane(name, channel)
                if self._tg is not None:
                    self._start_lane(name)
            elif lane.channel is not channel:
                old = lane.channel
                lane.replace_channel(channel)
                await old.aclose()
        self.settled()

    def set_timing(self, timing: DeliveryTiming, queue_size: int) -> None:
        """Reloaded durations and lane size (a held item keeps its current wait)."""
        self._timing, self._queue_size = timing, queue_size
        for lane in self.lanes.values():
            lane.timing, lane.max_items = timing, queue_size

    def healthy_channels(self) -> list[str]:
        """Configured channels not currently failing."""
        return [name for name, lane in self.lanes.items() if not lane.health.failing]

    async def wait_idle(self, *, held_ok: bool = False) -> None:
        """Until no lane has anything to deliver (wrap in ``anyio.fail_after``); needs ``run()``.
        ``held_ok``: a lane whose head waits for a retry counts as idle (a shutdown does not wait
        for a dead channel: its items stay in the outbox)."""
        while not all(lane.idle or (held_ok and lane.holding) for lane in self.lanes.values()):
            await self._changed.wait()

    def settled(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def stats(self) -> QueueStats:
        return QueueStats(pending=sum(lane.pending for lane in self.lanes.values()),
                          dropped=sum(lane.dropped for lane in self.lanes.values()))

    async def channel_health(self) -> list[ChannelHealth]:
        """Per configured channel: failing flag, consecutive failures, last error and times, pending.
        Read from the store (a standby replica serves the active one's view); from memory when it fails."""
        stored = await self._try(self.store.kv_list(NS_CHANNELS), "health")
        return [replace(ChannelHealth.from_stored(name, stored.get(name)) if stored is not None else lane.health,
                        pending=lane.pending) for name, lane in self.lanes.items()]

    async def aclose(self) -> None:
        for lane in self.lanes.values():
            await lane.channel.aclose()

    # --- LaneHost: the store side of a delivery --------------------------------------------------
    async def thread_for(self, item: Delivery) -> dict[str, Any] | None:
        ref = await self._try(self.store.kv_get(NS_REFS, f"{item.note.incident_id}|{item.channel}"), "refs")
        return ref if isinstance(ref, dict) else None

    async def finished(self, item: Delivery, outcome: str, ref: dict[str, Any] | None,
                       thread: dict[str, Any] | None) -> None:
        if outcome == "sent" and ref and thread is None:
            await self._try(self.store.kv_put(NS_REFS, f"{item.note.incident_id}|{item.channel}", ref), "refs")
        await self._try(self.store.kv_delete(NS_OUTBOX, item.key), "outbox")
        self._queued.discard(item.key)

    async def record(self, item: Delivery, attempt: int, started_s: float, outcome: str, error: str | None) -> None:
        await self._try(self.store.append_event("alert.attempt", {
            "channel": item.channel, "time_ns": int(started_s * 1e9), "outcome": outcome, "attempt": attempt,
            "error": error, "dedup_key": item.note.dedup_key, "event": item.note.event,
            "probe_id": item.note.probe_id, "incident_id": item.note.incident_id}), "event")
        if self._on_attempt is not None:
            self._on_attempt(item.channel, outcome)
        level = logging.INFO if outcome == "sent" else logging.WARNING
        log.log(level, "alert.attempt channel=%s outcome=%s attempt=%d dedup_key=%s error=%s",
                item.channel, outcome, attempt, item.note.dedup_key, error)

    async def health_changed(self, health: ChannelHealth, became: str | None, detail: str) -> None:
        await self._try(self.store.kv_put(NS_CHANNELS, health.channel, health.stored()), "health")
        if became == "failing":
            log.error("alert.channel_failing channel=%s detail=%s", health.channel, detail)
            if self.on_channel_failing is not None:
                self.on_channel_failing(health.channel, detail)
        elif became == "recovered":
            log.warning("alert.channel_recovered channel=%s", health.channel)
            if self.on_channel_recovered is not None:
                self.on_channel_recovered(health.channel, detail)

    # --- start-up --------------------------------------------------------------------------------
    async def _load_health(self) -> None:
        stored = await self._try(self.store.kv_list(NS_CHANNELS), "health") or {}
        for name, lane in self.lanes.items():
            lane.health = ChannelHealth.from_stored(name, stored.get(name))
            if lane.health.failing:  # still failing until a delivery succeeds: confirm its incident
                await self.health_changed(lane.health, "failing", f"failing before the restart; "
                                          f"last error: {lane.health.last_error}")

    async def _requeue(self) -> None:
        now_s = self._clock()
        for key, value in (await self._try(self.store.kv_list(NS_CLAIMS), "claims") or {}).items():
            if isinstance(value, dict) and value.get("state") == "queuing":  # crashed mid-announce
                await self._finish_claim(key, value)
            elif isinstance(value, dict) and now_s - int(value.get("time_ns", 0)) / 1e9 > CLAIM_RETENTION_S:
                await self._try(self.store.kv_delete(NS_CLAIMS, key), "claims")
        entries = await self._try(self.store.kv_list(NS_OUTBOX), "outbox") or {}
        items: list[Delivery] = []
        for key, value in entries.items():
            try:
                items.append(Delivery(Notification.model_validate(value["note"]), str(value["channel"]),
                                      int(value.get("queued_ns") or value["note"].get("time_ns") or 0)))
            except (KeyError, TypeError, ValueError):
                log.warning("alert.outbox_unreadable key=%s", key)
                await self._try(self.store.kv_delete(NS_OUTBOX, key), "outbox")
        for item in sorted(items, key=lambda d: (d.queued_ns, d.note.time_ns)):
            if item.channel in self.lanes:
                await self._queue(item)
            else:
                await self._try(self.store.append_event("alert.dropped", {
                    "dedup_key": item.note.dedup_key, "channel": item.channel, "reason": "channel removed"}),
                    "event")
                await self.finished(item, "dropped", None, None)
        if items:
            log.info("alert.outbox_requeued deliveries=%d", len(items))

    async def _finish_claim(self, key: str, value: dict[str, Any]) -> None:
        """Write the outbox entries of a claim whose announcement a crash interrupted (nothing of it was
        sent: deliveries start only after the claim is marked queued)."""
        try:
            note = Notification.model_validate(value["note"])
        except (KeyError, ValueError):
            return
        for channel in value.get("channels", []):
            item = Delivery(note, str(channel), int(value.get("time_ns", 0)))
            await self._try(self.store.kv_put(NS_OUTBOX, item.key, _entry(item)), "outbox")
        await self._try(self.store.kv_put(NS_CLAIMS, key, {"owner": value.get("owner"),
                                                           "time_ns": value.get("time_ns")}), "claim")

    async def _try(self, call: Awaitable[T], what: str) -> T | None:
        """A store call of the delivery path: a failing store is logged, and delivery goes on."""
        try:
            with anyio.fail_after(STORE_TIMEOUT_S):
                return await call
        except Exception as e:
            log.warning("alert.store_unavailable what=%s error=%s: %s", what, type(e).__name__, e)
            return None


def _entry(item: Delivery) -> dict[str, Any]:
    return {"note": item.note.model_dump(mode="json"), "channel": item.channel, "queued_ns": item.queued_ns}
