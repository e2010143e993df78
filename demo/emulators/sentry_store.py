"""What the Sentry emulator has ingested: events, transactions and cron check-ins (bounded, in memory).

The API shapes it is served in are in ``sentry_views``; what Sentry derives from an error event
(title, culprit, metadata, search message) is in ``sentry_events``.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tracecanary.demo.emulators import sentry_events

Json = dict[str, Any]


@dataclass
class Ingested:
    """One stored event (``error`` or ``transaction``) with the project it came in through."""

    kind: str
    project_id: str
    project_slug: str
    payload: Json
    visible_at: float
    """time.monotonic() from which queries see it (the emulator's ingest delay)."""
    issue_id: int = 0

    @property
    def event_id(self) -> str:
        return str(self.payload.get("event_id") or "")

    @property
    def trace_ctx(self) -> Json:
        ctx = (self.payload.get("contexts") or {}).get("trace") or {}
        return ctx if isinstance(ctx, dict) else {}

    @property
    def trace_id(self) -> str:
        return str(self.trace_ctx.get("trace_id") or "")


@dataclass
class CheckIn:
    """One cron check-in as Sentry stores it (``duration`` in seconds)."""

    check_in_id: str
    monitor_slug: str
    status: str
    duration_s: float | None
    environment: str | None
    received_at: float
    source: str
    """``envelope`` or ``http``."""


@dataclass
class Monitor:
    """A cron monitor, upserted by check-ins carrying ``monitor_config``."""

    slug: str
    project_id: str
    config: Json = field(default_factory=dict)
    check_ins: list[CheckIn] = field(default_factory=list)


class SentryStore:
    """Bounded in-memory store of events, transactions and cron check-ins."""

    def __init__(self, *, max_events: int = 50_000, ingest_delay_s: float = 0.0) -> None:
        self.events: deque[Ingested] = deque(maxlen=max_events)
        self.monitors: dict[str, Monitor] = {}
        self.ingest_delay_s = ingest_delay_s
        self._issue_ids: dict[str, int] = {}

    # --- ingestion ------------------------------------------------------------------------------
    def add_event(self, kind: str, project_id: str, project_slug: str, payload: Json) -> Ingested:
        payload.setdefault("event_id", uuid.uuid4().hex)
        issue_id = 0
        if kind == "error":
            issue_id = self._issue_ids.setdefault(sentry_events.title(payload), len(self._issue_ids) + 1)
        item = Ingested(kind, project_id, project_slug, payload, time.monotonic() + self.ingest_delay_s, issue_id)
        self.events.append(item)
        return item

    def add_check_in(self, project_id: str, body: Json, source: str) -> CheckIn:
        slug = str(body.get("monitor_slug") or "")
        monitor = self.monitors.setdefault(slug, Monitor(slug=slug, project_id=project_id))
        if isinstance(body.get("monitor_config"), dict):
            monitor.config = dict(body["monitor_config"])
        check_in_id = str(body.get("check_in_id") or uuid.uuid4().hex)
        duration = body.get("duration")
        existing = next((c for c in monitor.check_ins if c.check_in_id == check_in_id), None)
        if existing is not None:
            # A finishing check-in updates the in_progress one it names (Sentry's semantics).
            existing.status = str(body.get("status") or existing.status)
            existing.duration_s = float(duration) if duration is not None else existing.duration_s
            return existing
        check_in = CheckIn(
            check_in_id=check_in_id,
            monitor_slug=slug,
            status=str(body.get("status") or ""),
            duration_s=float(duration) if duration is not None else None,
            environment=body.get("environment"),
            received_at=time.time(),
            source=source,
        )
        monitor.check_ins.append(check_in)
        return check_in

    # --- queries --------------------------------------------------------------------------------
    def visible(self, kind: str | None = None, trace_id: str | None = None) -> list[Ingested]:
        now = time.monotonic()
        return [
            e
            for e in self.events
            if e.visible_at <= now
            and (kind is None or e.kind == kind)
            and (trace_id is None or e.trace_id == trace_id)
        ]

    def find_event(self, event_id: str) -> Ingested | None:
        return next((e for e in self.visible() if e.event_id == event_id), None)

    @property
    def transactions(self) -> list[Ingested]:
        return [e for e in self.events if e.kind == "transaction"]

    @property
    def errors(self) -> list[Ingested]:
        return [e for e in self.events if e.kind == "error"]

    @property
    def check_ins(self) -> list[CheckIn]:
        return [c for m in self.monitors.values() for c in m.check_ins]


def epoch_s(value: Any) -> float:
    """A timestamp as an SDK sends it (epoch seconds, or an RFC 3339 string) in epoch seconds; else 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0.0
    try:
        return float(value)
    except ValueError:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
