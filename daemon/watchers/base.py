"""The watcher contract: observe a side effect (I/O) and return findings judged by assertions/.

A watcher is ``async def watch(effect, ctx) -> list[Finding]`` registered in ``watchers/registry.py``
under the side-effect key (``slack``, ``github``, ``kafka``, ``http``, ``sentry``). It must return by
``min(ctx.trigger + effect.within, ctx.deadline)``; an ``absent: true`` effect is judged when its
window closes. Event-driven sources (Slack Socket Mode, GitHub webhooks) publish into an ``EventHub``
held in ``Services``; watchers subscribe to it and fall back to polling when no hub is running.

Transient failures of the service watched (HTTP 5xx, a dropped or refused connection, a timeout) are
retried after a ``Backoff`` (``WatchContext.backoff``, injectable), never a final answer on their own;
``Attempts`` keeps the last error so a failure that lasts until the window closes is reported with it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.probes.base import ProbeContext

Event = dict[str, Any]
MAX_OBSERVED = 20
Predicate = Callable[[Event], bool]


class EventHub:
    """Fan-out of external events (webhook deliveries, Socket Mode envelopes) to waiting watchers.

    Keeps the last ``history`` events for ``history_s`` so a watcher that subscribes a moment after
    the event arrived still sees it.
    """

    def __init__(self, history: int = 10_000, history_s: float = 600.0) -> None:
        self._recent: deque[tuple[float, Event]] = deque(maxlen=history)
        self._history_s = history_s
        self._waiters: set[_Subscription] = set()
        self.published = 0

    def publish(self, event: Event) -> None:
        now = time.monotonic()
        self._recent.append((now, event))
        self.published += 1
        for sub in list(self._waiters):
            sub.offer(event)

    def recent(self) -> Iterator[Event]:
        horizon = time.monotonic() - self._history_s
        for t, ev in self._recent:
            if t >= horizon:
                yield ev

    @contextmanager
    def subscribe(self, predicate: Predicate, replay: bool = True) -> Iterator[_Subscription]:
        sub = _Subscription(predicate)
        if replay:
            for ev in self.recent():
                sub.offer(ev)
        self._waiters.add(sub)
        try:
            yield sub
        finally:
            self._waiters.discard(sub)


class _Subscription:
    def __init__(self, predicate: Predicate) -> None:
        self._predicate = predicate
        self.events: list[Event] = []
        self._event = anyio.Event()

    def offer(self, event: Event) -> None:
        if self._predicate(event):
            self.events.append(event)
            self._event.set()

    async def next_batch(self, timeout_s: float) -> list[Event]:
        """Events matched since the last call; waits up to ``timeout_s`` for at least one."""
        if not self.events:
            with anyio.move_on_after(max(0.0, timeout_s)):
                await self._event.wait()
        batch, self.events = self.events, []
        self._event = anyio.Event()
        return batch


@dataclass(frozen=True)
class Backoff:
    """Delays before retrying a transient failure: ``initial_s`` × ``factor`` ** (n - 1), at most ``max_s``."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0

    def delay_s(self, failures: int) -> float:
        """The wait after the ``failures``-th consecutive failure (1, 2, …)."""
        return float(min(self.max_s, self.initial_s * self.factor ** max(0, failures - 1)))


LAST_LOOK_RESERVE_S = 1.0
"""How long before the run's deadline a window that reaches it closes (see ``WatchContext.window_end_s``)."""


class Attempts:
    """Transient failures of one watch: the backoff before the next attempt and the last error seen."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.attempts = self.failures = self.consecutive = 0
        self.last_error: str | None = None

    def ok(self) -> None:
        self.attempts += 1
        self.consecutive = 0

    def failed(self, error: str) -> float:
        """Record a transient failure; returns how long to wait before the next attempt."""
        self.attempts += 1
        self.failures += 1
        self.consecutive += 1
        self.last_error = error
        return self.backoff.delay_s(self.consecutive)

    @property
    def failing(self) -> bool:
        """The last attempt failed (what the service holds now is unknown)."""
        return self.consecutive > 0

    def finding(self, path: str, what: str) -> Finding:
        """An error finding for a failure that lasted until the window closed, quoting the last error."""
        return Finding(
            type="side_effect", severity=Verdict.ERROR, path=path, observed=self.last_error,
            message=f"{what} failed until the window closed ({self.consecutive} failed attempt(s) in a row, "
                    f"{self.failures} of {self.attempts} in all); last error: {self.last_error}",
        )


@dataclass
class Services:
    """Long-lived components watchers may use; absent ones are None (watchers then poll)."""

    github_events: EventHub | None = None
    slack_events: EventHub | None = None
    hook_address: str | None = None
    """host:port this process serves ``/hooks/github`` on; None when it serves no HTTP (GitHub cannot reach it)."""
    public_url: str | None = None
    """``daemon.public_url``: an address in front of this process (a proxy, a tunnel) that GitHub can reach."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class WatchContext:
    """What a watcher gets: the run's ProbeContext, fire outputs and the shared services."""

    probe: ProbeContext
    services: Services
    outputs: dict[str, Any] = field(default_factory=dict)
    poll_interval_s: float = 2.0
    """Default poll interval for polling fallbacks (tests inject small values)."""
    backoff: Backoff = field(default_factory=Backoff)
    """Waits between retries of transient failures (5xx, connection errors) during a watch."""
    observed: list[Any] = field(default_factory=list)
    """What the watch saw (messages, events, comments), kept with the run: the run page shows what
    arrived on a pass too. Set through :meth:`saw`."""

    def saw(self, items: Any) -> None:
        """Record what was seen (the latest ``MAX_OBSERVED`` items; a mapping counts as one)."""
        batch = [items] if isinstance(items, dict) else list(items)
        self.observed = batch[-MAX_OBSERVED:]

    def window_end_s(self, within_s: float) -> float:
        """anyio-monotonic time at which a side effect's ``within`` window closes: before the run's deadline
        by :data:`LAST_LOOK_RESERVE_S` (at most a tenth of the time left), so the last look at the service,
        taken when the window closes, has time to be answered instead of being cut by the deadline (which
        would leave the effect undecided, an ``error``)."""
        now = anyio.current_time()
        elapsed_s = (time.time_ns() - self.probe.trigger_ns) / 1e9
        reserve_s = min(LAST_LOOK_RESERVE_S, 0.1 * max(0.0, self.probe.deadline_s - now))
        return min(self.probe.deadline_s - reserve_s, now + max(0.0, within_s - elapsed_s))


Watcher = Callable[[Any, WatchContext], Awaitable[list[Finding]]]
