"""A bounded FIFO of pending deliveries that drops its oldest item when full (and counts it).

The runner's hook only appends (never waits for a slow channel); the manager's workers take items.
Every queued item is also in the store's outbox, so a restart delivers what was pending.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import anyio

from tracecanary.daemon.alerts.base import Notification


@dataclass
class Delivery:
    note: Notification
    channel: str

    @property
    def key(self) -> str:
        """Outbox key: one entry per (dedup key, channel)."""
        return f"{self.note.dedup_key}|{self.channel}"


class DeliveryQueue:
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
