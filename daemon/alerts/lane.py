"""One alert channel's delivery lane: its own queue, its own worker, its own backoff and health.

A lane delivers its queue in order (a recovery never overtakes its firing message) and holds the head
item through retryable failures (5xx, 429, timeouts, refused connections) with backoff — the server's
``Retry-After`` honoured — until it is delivered or expires. It never waits for another channel: a
channel answering 503 forever delays only its own queue. A permanent failure (any other 4xx, a bad
token) drops that item at once.

Health: a permanent failure marks the channel failing at once; retryable failures mark it failing
once they have lasted ``failing_after_s`` (checked on a timer, not only at the next attempt, so a long
``Retry-After`` cannot hide it); one success clears it. The owner (``delivery.Outbox``) turns those
transitions into the system incident ``channel:<name>``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol

import anyio
from opentelemetry.trace import Tracer

from tracecanary.daemon.alerts.base import Channel, DeliveryError, Notification

log = logging.getLogger("tracecanary.alerts")
NEVER_EXPIRE = frozenset({"recovered", "channel_recovered", "system_recovered"})
"""Events never expired nor pushed out of a full queue: a recovery is never lost."""


@dataclass
class Delivery:
    """One notification for one channel."""

    note: Notification
    channel: str
    queued_ns: int = 0
    """When it was written to the outbox (wall clock): the start of its expiry."""

    @property
    def key(self) -> str:
        """Outbox key: one entry per (dedup key, channel) — the idempotency key plus the channel."""
        return f"{self.note.dedup_key}|{self.channel}"


@dataclass(frozen=True)
class DeliveryTiming:
    """Every duration of delivery (settings ``alerts.retry_delays`` … ; injectable for tests)."""

    delays_s: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0)
    """Waits before the 2nd, 3rd … attempt; the last one repeats until delivered or expired."""
    max_retry_after_s: float = 300.0
    """Cap on a remote's ``Retry-After``."""
    failing_after_s: float = 60.0
    """Retryable failures for this long mark the channel failing."""
    expiry_s: float = 86400.0
    """An undelivered notification is dropped (``expired``) this long after it was queued; recoveries never."""

    def delay_s(self, attempt: int, error: DeliveryError) -> float:
        """The wait after failed attempt ``attempt`` (1-based)."""
        base = self.delays_s[min(attempt, len(self.delays_s)) - 1] if self.delays_s else 0.0
        return max(base, min(error.retry_after_s or 0.0, self.max_retry_after_s))


@dataclass(frozen=True)
class ChannelHealth:
    """A channel's delivery health, as the dashboard shows it (stored per channel in ``alerts.channels``)."""

    channel: str
    failing: bool = False
    """Set on a permanent failure, or when retryable failures have lasted ``channel_failing_after``;
    cleared by one success."""
    consecutive_failures: int = 0
    failing_since_ns: int | None = None
    last_error: str | None = None
    last_success_ns: int | None = None
    last_failure_ns: int | None = None
    pending: int = 0
    """Deliveries waiting in this channel's lane (in memory; not stored)."""

    @classmethod
    def from_stored(cls, channel: str, value: Mapping[str, Any] | None) -> ChannelHealth:
        known = {f.name for f in fields(cls)} - {"channel", "pending"}
        return cls(channel=channel, **{k: v for k, v in (value or {}).items() if k in known})

    def stored(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("channel", "pending")}


class LaneHost(Protocol):
    """What a lane asks of its outbox (the store side of a delivery, all best-effort)."""

    async def thread_for(self, item: Delivery) -> dict[str, Any] | None:
        """The channel's reference of the incident's first message (Slack ts), to thread under."""

    async def finished(self, item: Delivery, outcome: str, ref: dict[str, Any] | None,
                       thread: dict[str, Any] | None) -> None:
        """The item left the lane (sent, failed, expired, dropped): out of the outbox."""

    async def record(self, item: Delivery, attempt: int, started_s: float, outcome: str, error: str | None) -> None:
        """One attempt (or a drop/expiry), as event, metric and log line."""

    async def health_changed(self, health: ChannelHealth, became: str | None, detail: str) -> None:
        """Persist health; ``became`` is ``failing``/``recovered`` on a transition."""

    def settled(self) -> None:
        """Something changed that ``wait_idle`` waits for."""


@dataclass
class Lane:
    """A channel's queue and worker; ``run()`` delivers until cancelled (items stay in the outbox)."""

    name: str
    channel: Channel
    host: LaneHost
    timing: DeliveryTiming
    max_items: int
    clock: Callable[[], float]
    tracer: Tracer | None = None
    health: ChannelHealth = field(init=False)
    items: deque[Delivery] = field(init=False, default_factory=deque)
    current: Delivery | None = field(init=False, default=None)
    holding: bool = field(init=False, default=False)
    """The head item waits for a retry (the channel is down or rate limited)."""
    dropped: int = field(init=False, default=0)
    _wake: anyio.Event = field(init=False, default_factory=anyio.Event)
    _retry_now: anyio.Event = field(init=False, default_factory=anyio.Event)
    _failing_from: float | None = field(init=False, default=None)
    """Monotonic time of the first failure of the current streak."""

    def __post_init__(self) -> None:
        self.health = ChannelHealth(self.name)

    @property
    def pending(self) -> int:
        return len(self.items) + (self.current is not None)

    @property
    def idle(self) -> bool:
        return not self.items and self.current is None

    def put(self, item: Delivery) -> Delivery | None:
        """Append; returns the item pushed out when full (the oldest that is not a recovery)."""
        dropped = None
        if len(self.items) >= self.max_items:
            victim = next((d for d in self.items if d.note.event not in NEVER_EXPIRE), None)
            if victim is not None:
                self.items.remove(victim)
                self.dropped += 1
                dropped = victim
        self.items.append(item)
        self._wake.set()
        return dropped

    def replace_channel(self, channel: Channel) -> None:
        """A reloaded config: the next attempt uses ``channel``; a held item is retried now."""
        self.channel = channel
        self._retry_now.set()

    async def run(self) -> None:
        while True:
            while not self.items:
                self._wake = anyio.Event()
                await self._wake.wait()
            self.current = self.items.popleft()
            try:
                await self._deliver(self.current)
            finally:
                self.current, self.holding = None, False
                self.host.settled()

    # --- one item --------------------------------------------------------------------------------
    async def _deliver(self, item: Delivery) -> None:
        thread = await self.host.thread_for(item)
        attempt = 0
        while True:
            if self._expired(item):
                await self._finish(item, attempt, self.clock(), "expired", None, None, thread)
                return
            attempt += 1
            started_s, started_mono = self.clock(), anyio.current_time()
            error, ref = await self._send(item, thread, attempt)
            if error is None:
                await self._finish(item, attempt, started_s, "sent", None, ref, thread)
                await self._success()
                return
            if not error.retryable:
                await self._finish(item, attempt, started_s, "failed", str(error), None, thread)
                await self._failure(error, started_mono, permanent=True)
                return
            await self.host.record(item, attempt, started_s, "retry", str(error))
            await self._failure(error, started_mono, permanent=False)
            await self._hold(self.timing.delay_s(attempt, error))

    async def _send(self, item: Delivery, thread: dict[str, Any] | None,
                    attempt: int) -> tuple[DeliveryError | None, dict[str, Any] | None]:
        try:
            with self._span(item, attempt):
                return None, await self.channel.send(item.note, thread)
        except DeliveryError as e:
            return e, None
        except Exception as e:  # a channel bug must not kill the lane: record it, do not retry
            log.exception("alert.channel_crashed channel=%s", self.name)
            return DeliveryError(f"{type(e).__name__}: {e}", retryable=False), None

    async def _finish(self, item: Delivery, attempt: int, started_s: float, outcome: str, error: str | None,
                      ref: dict[str, Any] | None, thread: dict[str, Any] | None) -> None:
        with anyio.CancelScope(shield=True):  # sent is sent: a shutdown must not make us send it again
            await self.host.record(item, attempt, started_s, outcome, error)
            await self.host.finished(item, outcome, ref, thread)

    def _expired(self, item: Delivery) -> bool:
        return (item.note.event not in NEVER_EXPIRE and item.queued_ns > 0
                and self.clock() * 1e9 - item.queued_ns > self.timing.expiry_s * 1e9)

    async def _hold(self, delay_s: float) -> None:
        """Wait before the next attempt; wake early to mark the channel failing on time, or when the
        channel was replaced by a reload."""
        self.holding = True
        self.host.settled()
        self._retry_now = anyio.Event()
        deadline = anyio.current_time() + delay_s
        try:
            while (remaining := deadline - anyio.current_time()) > 0:
                until_failing = self._until_failing_s()
                step = remaining if until_failing is None else min(remaining, until_failing)
                with anyio.move_on_after(step):
                    await self._retry_now.wait()
                    return
                if until_failing is not None and until_failing <= step:
                    await self._mark_failing(self.health.last_error or "", "retries failing")
        finally:
            self.holding = False

    # --- health ----------------------------------------------------------------------------------
    def _until_failing_s(self) -> float | None:
        if self.health.failing or self._failing_from is None:
            return None
        return max(0.0, self._failing_from + self.timing.failing_after_s - anyio.current_time())

    async def _success(self) -> None:
        was_failing = self.health.failing
        self._failing_from = None
        self.health = replace(self.health, consecutive_failures=0, last_success_ns=int(self.clock() * 1e9),
                              failing=False, failing_since_ns=None)
        await self.host.health_changed(self.health, "recovered" if was_failing else None, "deliveries succeed again")

    async def _failure(self, error: DeliveryError, started_mono: float, *, permanent: bool) -> None:
        if self._failing_from is None:  # from the start of the first failed attempt (a timeout takes a while)
            self._failing_from = started_mono
        self.health = replace(self.health, consecutive_failures=self.health.consecutive_failures + 1,
                              last_error=str(error), last_failure_ns=int(self.clock() * 1e9))
        if permanent:
            await self._mark_failing(str(error), "a permanent error")
        elif self._until_failing_s() == 0.0:
            await self._mark_failing(str(error), "retries failing")
        else:
            await self.host.health_changed(self.health, None, "")

    async def _mark_failing(self, error: str, why: str) -> None:
        if self.health.failing:
            await self.host.health_changed(self.health, None, "")
            return
        self.health = replace(self.health, failing=True, failing_since_ns=int(self.clock() * 1e9))
        if why == "a permanent error":
            detail = f"delivery failed with a permanent error: {error}"
        else:
            detail = (f"deliveries failing for {self.timing.failing_after_s:g}s "
                      f"({self.health.consecutive_failures} attempts); last error: {error}")
        await self.host.health_changed(self.health, "failing", detail)

    def _span(self, item: Delivery, attempt: int) -> AbstractContextManager[object]:
        """A span per delivery attempt in the daemon's own telemetry (errors recorded by the SDK)."""
        if self.tracer is None:
            return nullcontext()
        return self.tracer.start_as_current_span(f"alert.deliver {self.name}", attributes={
            "tracecanary.alert.channel": self.name, "tracecanary.alert.event": item.note.event,
            "tracecanary.probe.id": item.note.probe_id, "tracecanary.alert.incident": item.note.incident_id,
            "tracecanary.alert.attempt": attempt})
