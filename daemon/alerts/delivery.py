"""Where an alert leaves from: claim, outbox, per-channel delivery with retries, channel health.

The manager hands each notification to :meth:`Outbox.announce`, which claims its dedup key (once
across replicas and restarts), records it, and queues one delivery per channel. Workers send off the
runner's hot path; every queued item is also in the store's outbox, so a restart delivers what was
pending. Everything lives in the store's kv space:

==================  ==============================  ===========================================
kv namespace        key                             value
==================  ==============================  ===========================================
alerts.claims       dedup key                       who claimed it and when (sent at most once)
alerts.outbox       "<dedup key>|<channel>"         a pending delivery (re-queued on start)
alerts.refs         "<incident id>|<channel>"       the channel's reference (Slack ts) to thread on
alerts.channels     channel name                    delivery health (consecutive failures …)
==================  ==============================  ===========================================

Events: ``alert.notification`` (announced), ``alert.attempt`` (every delivery attempt: channel, time,
outcome, error), ``alert.dropped`` (pushed out of a full queue).
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus
from opentelemetry.trace import Tracer

from tracecanary.daemon.alerts.base import Channel, DeliveryError, Notification
from tracecanary.daemon.store.base import Store

log = logging.getLogger("tracecanary.alerts")
T = TypeVar("T")
NS_CLAIMS, NS_OUTBOX = "alerts.claims", "alerts.outbox"
NS_REFS, NS_CHANNELS = "alerts.refs", "alerts.channels"
STORE_TIMEOUT_S = 5.0
"""Deadline on the store writes of a best-effort announcement."""


@dataclass
class Delivery:
    """One notification for one channel."""

    note: Notification
    channel: str

    @property
    def key(self) -> str:
        """Outbox key: one entry per (dedup key, channel)."""
        return f"{self.note.dedup_key}|{self.channel}"


class DeliveryQueue:
    """A bounded FIFO of pending deliveries that drops its oldest item when full (and counts it).

    The runner's hook only appends (never waits for a slow channel); the workers take items.
    """

    def __init__(self, max_items: int) -> None:
        self._items: deque[Delivery] = deque()
        self._max_items = max_items
        self._cond = anyio.Condition()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: Delivery) -> Delivery | None:
        """Append; returns the item dropped to make room, if any."""
        dropped = None
        async with self._cond:
            if len(self._items) >= self._max_items:
                dropped = self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()
        return dropped

    async def get(self) -> Delivery:
        async with self._cond:
            while not self._items:
                await self._cond.wait()
            return self._items.popleft()


@dataclass(frozen=True)
class QueueStats:
    pending: int
    """Deliveries queued in memory, not yet taken by a worker."""
    dropped: int
    """Deliveries pushed out of the full queue since start."""


@dataclass(frozen=True)
class ChannelHealth:
    """A channel's delivery health, as the dashboard shows it (stored per channel in ``alerts.channels``)."""

    channel: str
    failing: bool = False
    """Set after ``channel_failure_threshold`` failed deliveries in a row, until one succeeds."""
    consecutive_failures: int = 0
    failing_since_ns: int | None = None
    last_error: str | None = None
    last_success_ns: int | None = None
    last_failure_ns: int | None = None

    @classmethod
    def from_stored(cls, channel: str, value: Mapping[str, Any] | None) -> ChannelHealth:
        known = {f.name for f in fields(cls)} - {"channel"}
        return cls(channel=channel, **{k: v for k, v in (value or {}).items() if k in known})

    def stored(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "channel"}


@dataclass(frozen=True)
class RetryPolicy:
    delays_s: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0)
    """Waits before the 2nd, 3rd … attempt (a retryable error after the last one fails the delivery)."""
    max_retry_after_s: float = 300.0
    """Cap on a remote's ``Retry-After``."""


class Outbox:
    """Claims, queues and delivers notifications; ``run()`` is the worker pool (start it with ``tg.start``)."""

    def __init__(
        self, store: Store, channels: Mapping[str, Channel], *, queue_size: int, failure_threshold: int,
        clock: Callable[[], float], retry: RetryPolicy = RetryPolicy(), dashboard_url: str | None = None,
        on_attempt: Callable[[str, str], None] | None = None, workers: int = 4, tracer: Tracer | None = None,
    ) -> None:
        self.store = store
        self.channels = channels
        self.queue = DeliveryQueue(queue_size)
        self._queue_size = queue_size
        self._failure_threshold = failure_threshold
        self._clock = clock
        self._retry = retry
        self._dashboard_url = dashboard_url
        self._on_attempt = on_attempt
        self._workers = workers
        self._tracer = tracer
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._pending: set[str] = set()
        self._claimed: set[str] = set()
        self._failing: set[str] = set()
        self.on_channel_failing: Callable[[str, str], None] | None = None
        """Called when a channel starts failing (name, detail): the manager raises a system incident."""
        self.on_channel_recovered: Callable[[str, str], None] | None = None
        """Dedup keys of best-effort announcements claimed by this process."""
        """Outbox keys queued in memory (so run() does not queue them a second time)."""
        self._channel_locks: dict[str, anyio.Lock] = {}
        self._inflight = 0
        self._settled = anyio.Condition()

    # --- announcing ------------------------------------------------------------------------------
    async def announce(self, note: Notification, channel_names: Sequence[str]) -> bool:
        """Claim the dedup key, record the notification and queue it per channel; False when claimed before."""
        value = {"owner": self._owner, "time_ns": int(self._clock() * 1e9)}
        if not await self.store.kv_put_if_absent(NS_CLAIMS, note.dedup_key, value):
            log.info("alert.duplicate dedup_key=%s", note.dedup_key)
            return False
        targets = [c for c in channel_names if c in self.channels and self.channels[c].accepts(note.event)]
        await self.store.append_event("alert.notification", {
            "dedup_key": note.dedup_key, "event": note.event, "probe_id": note.probe_id,
            "incident_id": note.incident_id, "verdict": note.verdict, "run_id": note.run_id,
            "trace_id": note.trace_id, "channels": targets, "title": note.title, "time_ns": note.time_ns})
        log.info("alert.notify probe=%s event=%s incident=%s channels=%s",
                 note.probe_id, note.event, note.incident_id, ",".join(targets))
        for channel in targets:
            await self._enqueue(Delivery(note, channel))
        return True

    async def announce_best_effort(self, note: Notification, channel_names: Sequence[str]) -> bool:
        """``announce`` for notifications about tracecanary itself: a failing store must not stop them
        (claimed in memory too; queued in memory when the outbox cannot be written)."""
        if note.dedup_key in self._claimed:
            return False
        self._claimed.add(note.dedup_key)
        try:
            with anyio.fail_after(STORE_TIMEOUT_S):
                return await self.announce(note, channel_names)
        except Exception as e:
            log.warning("alert.store_unavailable dedup_key=%s error=%s: %s; queued in memory only",
                        note.dedup_key, type(e).__name__, e)
        for channel in [c for c in channel_names if c in self.channels and self.channels[c].accepts(note.event)]:
            item = Delivery(note, channel)
            self._pending.add(item.key)
            await self.queue.put(item)
        return True

    async def _enqueue(self, item: Delivery) -> None:
        await self.store.kv_put(NS_OUTBOX, item.key, {"note": item.note.model_dump(mode="json"),
                                                      "channel": item.channel})
        self._pending.add(item.key)
        dropped = await self.queue.put(item)
        if dropped is not None:
            self._pending.discard(dropped.key)
            await self.store.kv_delete(NS_OUTBOX, dropped.key)
            await self.store.append_event("alert.dropped", {"dedup_key": dropped.note.dedup_key,
                                                            "channel": dropped.channel})
            self._count(dropped.channel, "dropped")
            log.warning("alert.dropped channel=%s dedup_key=%s queue_size=%d",
                        dropped.channel, dropped.note.dedup_key, self._queue_size)

    # --- workers ---------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Re-queue the outbox, then deliver until cancelled (pending items stay in the outbox)."""
        for key, value in sorted((await self.store.kv_list(NS_OUTBOX)).items(),
                                 key=lambda kv: int(kv[1]["note"].get("time_ns", 0))):
            try:
                item = Delivery(Notification.model_validate(value["note"]), value["channel"])
            except (KeyError, ValueError):
                await self.store.kv_delete(NS_OUTBOX, key)
                continue
            if key not in self._pending:
                self._pending.add(key)
                await self.queue.put(item)
        async with anyio.create_task_group() as tg:
            for _ in range(self._workers):
                tg.start_soon(self._worker)
            task_status.started()

    async def _worker(self) -> None:
        while True:
            item = await self.queue.get()
            self._inflight += 1
            try:
                lock = self._channel_locks.setdefault(item.channel, anyio.Lock())
                async with lock:  # per-channel order: a recovery never overtakes its firing message
                    await self._deliver(item)
            finally:
                self._inflight -= 1
                with anyio.CancelScope(shield=True):
                    async with self._settled:
                        self._settled.notify_all()

    async def wait_idle(self) -> None:
        """Until nothing is queued or being delivered (wrap in ``anyio.fail_after``); needs ``run()``."""
        async with self._settled:
            while len(self.queue) or self._inflight:
                await self._settled.wait()

    def stats(self) -> QueueStats:
        return QueueStats(pending=len(self.queue), dropped=self.queue.dropped)

    # --- one delivery ----------------------------------------------------------------------------
    async def _deliver(self, item: Delivery) -> None:
        channel = self.channels.get(item.channel)
        if channel is None:
            await self.store.kv_delete(NS_OUTBOX, item.key)
            self._pending.discard(item.key)
            return
        ref_key = f"{item.note.incident_id}|{item.channel}"
        thread = await self._try(self.store.kv_get(NS_REFS, ref_key))
        error, ref, attempt, started_s = await self._attempts(channel, item, thread)
        with anyio.CancelScope(shield=True):  # sent is sent: a shutdown must not make us send it again
            if error is None:
                await self._record(item, attempt, started_s, "sent", None)
                if ref and thread is None:
                    await self._try(self.store.kv_put(NS_REFS, ref_key, ref))
            await self._try(self.store.kv_delete(NS_OUTBOX, item.key))
            self._pending.discard(item.key)
            await self._health(item.channel, error)

    async def _attempts(
        self, channel: Channel, item: Delivery, thread: dict[str, Any] | None
    ) -> tuple[DeliveryError | None, dict[str, Any] | None, int, float]:
        """Send with retries; ``(last error or None, the channel's reference, attempts, last start)``."""
        error: DeliveryError | None = None
        delays = (0.0, *self._retry.delays_s)
        attempt, started_s = 0, self._clock()
        for attempt, delay in enumerate(delays, start=1):
            if error is not None:
                await anyio.sleep(max(delay, min(error.retry_after_s or 0.0, self._retry.max_retry_after_s)))
            started_s = self._clock()
            try:
                with self._span(item, attempt):
                    return None, await channel.send(item.note, thread), attempt, started_s
            except DeliveryError as e:
                error = e
            except Exception as e:  # a channel bug must not kill the worker: record it, do not retry
                log.exception("alert.channel_crashed channel=%s", item.channel)
                error = DeliveryError(f"{type(e).__name__}: {e}", retryable=False)
            last = attempt == len(delays) or not error.retryable
            await self._record(item, attempt, started_s, "failed" if last else "retry", str(error))
            if last:
                break
        return error, None, attempt, started_s

    def _span(self, item: Delivery, attempt: int) -> AbstractContextManager[object]:
        """A span per delivery attempt in the daemon's own telemetry (errors recorded by the SDK)."""
        if self._tracer is None:
            return nullcontext()
        return self._tracer.start_as_current_span(f"alert.deliver {item.channel}", attributes={
            "tracecanary.alert.channel": item.channel, "tracecanary.alert.event": item.note.event,
            "tracecanary.probe.id": item.note.probe_id, "tracecanary.alert.incident": item.note.incident_id,
            "tracecanary.alert.attempt": attempt})

    async def _try(self, call: Awaitable[T]) -> T | None:
        """A store call on the delivery path: a failing store is logged, and delivery goes on."""
        try:
            with anyio.fail_after(STORE_TIMEOUT_S):
                return await call
        except Exception as e:
            log.warning("alert.store_unavailable error=%s: %s", type(e).__name__, e)
            return None

    async def _record(self, item: Delivery, attempt: int, started_s: float, outcome: str,
                      error: str | None) -> None:
        await self._try(self.store.append_event("alert.attempt", {
            "channel": item.channel, "time_ns": int(started_s * 1e9), "outcome": outcome, "attempt": attempt,
            "error": error, "dedup_key": item.note.dedup_key, "event": item.note.event,
            "probe_id": item.note.probe_id, "incident_id": item.note.incident_id}))
        self._count(item.channel, outcome)
        level = logging.INFO if outcome == "sent" else logging.WARNING
        log.log(level, "alert.attempt channel=%s outcome=%s attempt=%d dedup_key=%s error=%s",
                item.channel, outcome, attempt, item.note.dedup_key, error)

    def _count(self, channel: str, outcome: str) -> None:
        if self._on_attempt is not None:
            self._on_attempt(channel, outcome)

    # --- channel health --------------------------------------------------------------------------
    async def _health(self, name: str, error: DeliveryError | None) -> None:
        now_ns = int(self._clock() * 1e9)
        h = ChannelHealth.from_stored(name, await self._try(self.store.kv_get(NS_CHANNELS, name)))
        if error is None:
            h = replace(h, consecutive_failures=0, last_success_ns=now_ns)
            if h.failing:
                await self._channel_event(name, "channel_recovered", h, "deliveries succeed again")
                h = replace(h, failing=False, failing_since_ns=None)
        else:
            h = replace(h, consecutive_failures=h.consecutive_failures + 1, last_error=str(error),
                        last_failure_ns=now_ns)
            if not h.failing and h.consecutive_failures >= self._failure_threshold:
                h = replace(h, failing=True, failing_since_ns=now_ns)
                detail = f"{h.consecutive_failures} deliveries in a row failed; last error: {error}"
                await self._channel_event(name, "channel_failing", h, detail)
        await self._try(self.store.kv_put(NS_CHANNELS, name, h.stored()))

    async def _channel_event(self, name: str, event: str, h: ChannelHealth, detail: str) -> None:
        """A failing (or recovered) channel is a system incident ``channel:<name>`` (see system.py)."""
        if event == "channel_failing":
            self._failing.add(name)
            if self.on_channel_failing is not None:
                self.on_channel_failing(name, detail)
        else:
            self._failing.discard(name)
            if self.on_channel_recovered is not None:
                self.on_channel_recovered(name, detail)

    def healthy_channels(self) -> list[str]:
        """Configured channels not currently failing."""
        return [c for c in self.channels if c not in self._failing]

    async def channel_health(self) -> list[ChannelHealth]:
        """Per configured channel: failing flag, consecutive failures, last error and times."""
        stored = await self.store.kv_list(NS_CHANNELS)
        return [ChannelHealth.from_stored(name, stored.get(name)) for name in self.channels]

    async def aclose(self) -> None:
        for channel in self.channels.values():
            await channel.aclose()
