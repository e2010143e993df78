"""IntakeClock: when each service last sent a span to the intake — the evidence behind ``unknown``.

A missing span is ``unknown`` rather than ``fail`` only when the services the expectation names sent
no span at all since the trigger (``assertions/telemetry.py``). The trace buffer feeds this clock on
ingest, once per batch: for a raw protobuf batch it reads the ``service.name`` of each resource (a
batch holds one or a few), never a span; for decoded spans it takes the service of each trace group.
Times are the buffer's clock (``time.monotonic`` unless injected).

Bounded: beyond ``max_services`` names the least recently seen are forgotten, and the clock remembers
the latest time it forgot, so :meth:`IntakeClock.seen_since` never claims a silence it cannot prove.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracecanary.assertions.spans import Span
    from tracecanary.daemon.spans.otlp import RawBatch

log = logging.getLogger("tracecanary.spans.intake")
SERVICE_NAME = "service.name"


def resource_service(resource_spans: Any) -> str:
    """``service.name`` of one protobuf ``ResourceSpans`` ("" without one), read without decoding spans."""
    for kv in resource_spans.resource.attributes:
        if kv.key == SERVICE_NAME:
            value: str = kv.value.string_value
            return value
    return ""


class IntakeClock:
    """Per service name, the buffer-clock time its latest span arrived."""

    __slots__ = ("_clock", "_forgotten_s", "_last", "forgotten", "max_services")

    def __init__(self, clock: Callable[[], float], max_services: int = 4096) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._forgotten_s = -math.inf
        self.max_services = max_services
        self.forgotten = 0
        """Service names dropped to stay under ``max_services`` (counted, and logged once per sweep)."""

    # --- feeding (the buffer's ingest path: keep it cheap) ---------------------------------------
    def saw_batch(self, batch: RawBatch, now_s: float) -> None:
        """A scanned protobuf batch arrived: note each resource's service (no span is read)."""
        last = self._last
        for rs in batch.message.resource_spans:
            last[resource_service(rs)] = now_s
        if len(last) > self.max_services:
            self._forget()

    def saw_spans(self, groups: Iterable[list[Span]], now_s: float) -> None:
        """Decoded spans arrived (JSON, Kafka JSON, the probe's own spans, rejected-id fallbacks)."""
        last = self._last
        for service in {s.service for group in groups for s in group}:
            last[service] = now_s
        if len(last) > self.max_services:
            self._forget()

    def _forget(self) -> None:
        """Drop the least recently seen tenth (amortized: a sweep per many new names)."""
        by_age = sorted(self._last.items(), key=lambda kv: kv[1])
        drop = by_age[: max(1, len(by_age) - self.max_services + self.max_services // 10)]
        for service, _ in drop:
            del self._last[service]
        self._forgotten_s = max(self._forgotten_s, drop[-1][1])
        self.forgotten += len(drop)
        log.warning("intake clock over max_services=%d: forgot %d least recently seen service names",
                    self.max_services, len(drop))

    # --- reading -----------------------------------------------------------------------------------
    def now(self) -> float:
        """The clock the times are on."""
        return self._clock()

    def seen_since(self, since_s: float) -> dict[str, float] | None:
        """Services whose latest span arrived at or after ``since_s`` → that time.

        None when the clock cannot tell: it forgot a name last seen at or after ``since_s``.
        """
        if self._forgotten_s >= since_s:
            return None
        return {s: t for s, t in self._last.items() if t >= since_s}

    def last_seen(self) -> dict[str, float]:
        """Every remembered service → the time its latest span arrived."""
        return dict(self._last)
