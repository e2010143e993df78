"""Silences and maintenance windows: which probes, and when (one-off or recurring, DST-correct).

A recurring window is a cron expression evaluated on the wall clock of ``timezone`` plus an absolute
``duration``: ``cron: "0 9 * * *", timezone: America/New_York, duration: 1h`` covers 09:00–10:00 New
York time on both sides of a DST change (14:00 UTC in winter, 13:00 UTC in summer). A start that falls
in a spring-forward gap is read with the pre-transition offset (02:30 → 03:30 daylight time).

Configured silences (``alerts.silences``) are listed as ``config-<n>``; silences added through the API
live in the store's kv space (namespace ``alerts.silences``, key = silence id).
"""

from __future__ import annotations

import fnmatch
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tracecanary.assertions.units import CronExpression, Duration, Timezone
from tracecanary.daemon.store.base import Store

log = logging.getLogger("tracecanary.alerts")
NS_SILENCES = "alerts.silences"


class SilenceSettings(BaseModel):
    """A silence: matching probes' transitions are recorded but not sent while it is active.

    A probe matches when it matches ``probes`` (any glob; omitted = every probe) and carries one of
    ``tags`` (omitted = any tags). At least one of the two must be given.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    probes: list[str] = Field(default_factory=list, description="Probe id globs, e.g. 'orders-*'.")
    tags: list[str] = Field(default_factory=list, description="Probe tags; a probe with any of them matches.")
    comment: str = Field("", description="Why (shown on the dashboard and API).")
    start: datetime | None = Field(None, description="One-off window start (ISO 8601; naive = timezone).")
    end: datetime | None = Field(None, description="One-off window end (ISO 8601; naive = timezone).")
    cron: CronExpression | None = Field(None, description="Recurring window start, cron on the wall clock of timezone.")
    duration: Duration | None = Field(None, description="Length of each recurring window, e.g. 2h.")
    timezone: Timezone = Field("UTC", description="IANA timezone for cron and for naive start/end.")

    @model_validator(mode="after")
    def _shape(self) -> SilenceSettings:
        if not self.probes and not self.tags:
            raise ValueError("a silence needs probes or tags (probes: ['*'] silences every probe)")
        one_off = self.start is not None or self.end is not None
        recurring = self.cron is not None or self.duration is not None
        if one_off == recurring:
            raise ValueError("set either start/end (one-off) or cron/duration (recurring)")
        if recurring and (self.cron is None or not self.duration):
            raise ValueError("a recurring silence needs both cron and a positive duration")
        if one_off:
            start, end = self.window_bounds()
            if start is not None and end is not None and end <= start:
                raise ValueError("end must be after start")
        return self

    @property
    def kind(self) -> Literal["one-off", "recurring"]:
        return "recurring" if self.cron else "one-off"

    def _aware(self, value: datetime | None) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=ZoneInfo(self.timezone))

    def window_bounds(self) -> tuple[datetime | None, datetime | None]:
        """One-off window as aware datetimes (None = open-ended)."""
        return self._aware(self.start), self._aware(self.end)

    def matches_probe(self, probe_id: str, tags: Sequence[str]) -> bool:
        if self.probes and not any(fnmatch.fnmatchcase(probe_id, g) for g in self.probes):
            return False
        return not self.tags or any(t in tags for t in self.tags)

    def active_at(self, now_s: float) -> bool:
        """True when ``now_s`` (epoch seconds) lies inside a window of this silence."""
        now = datetime.fromtimestamp(now_s, UTC)
        if self.cron is None:
            start, end = self.window_bounds()
            return (start is None or start <= now) and (end is None or now < end)
        return any(s <= now < s + timedelta(seconds=self.duration or 0.0) for s in self.recent_starts(now))

    def recent_starts(self, now: datetime, count: int = 3) -> list[datetime]:
        """The last ``count`` window starts at or before ``now``, as aware UTC datetimes.

        Cron runs over naive wall-clock time, then each start is placed in the zone: this is what
        keeps "09:00 local" at 09:00 across DST instead of drifting by the offset change.
        """
        from croniter import croniter

        tz = ZoneInfo(self.timezone)
        wall_now = now.astimezone(tz).replace(tzinfo=None)
        it = croniter(self.cron, wall_now + timedelta(seconds=1))
        starts: list[datetime] = []
        for _ in range(count):
            wall = it.get_prev(datetime)
            starts.append(wall.replace(tzinfo=tz).astimezone(UTC))
        return starts


def silenced_by(
    silences: Sequence[tuple[str, SilenceSettings]], probe_id: str, tags: Sequence[str], now_s: float
) -> str | None:
    """The id of the first active silence matching the probe, or None."""
    for silence_id, s in silences:
        if s.matches_probe(probe_id, tags) and s.active_at(now_s):
            return silence_id
    return None


@dataclass(frozen=True)
class ListedSilence:
    """A silence as the API and the dashboard list it."""

    id: str
    """``config-<n>`` for a configured silence, a random hex id for one added through the API."""
    source: Literal["config", "api"]
    active: bool
    """Whether the silence covers the moment it was listed."""
    settings: SilenceSettings
    created_by: str | None = None

    @property
    def kind(self) -> Literal["one-off", "recurring"]:
        return self.settings.kind


class Silences:
    """The configured silences plus the ones added through the API (kept in the store)."""

    def __init__(self, store: Store, configured: Sequence[SilenceSettings], clock: Callable[[], float]) -> None:
        self.store = store
        self._configured = [(f"config-{i}", s) for i, s in enumerate(configured)]
        self._clock = clock

    async def all(self) -> list[tuple[str, SilenceSettings]]:
        """Every silence as ``(id, settings)``: configured first, then stored ones by id."""
        stored = await self.store.kv_list(NS_SILENCES)
        return self._configured + [(k, SilenceSettings.model_validate(v["silence"])) for k, v in sorted(stored.items())]

    async def add(self, silence: SilenceSettings, *, created_by: str = "api") -> ListedSilence:
        """Store a silence; returns it as listed (with its new id)."""
        silence_id = uuid.uuid4().hex[:12]
        await self.store.kv_put(NS_SILENCES, silence_id, {
            "silence": silence.model_dump(mode="json"), "created_ns": int(self._clock() * 1e9),
            "created_by": created_by})
        log.info("alert.silence_added id=%s by=%s probes=%s tags=%s", silence_id, created_by,
                 silence.probes, silence.tags)
        return ListedSilence(silence_id, "api", silence.active_at(self._clock()), silence, created_by)

    async def remove(self, silence_id: str) -> bool:
        """Remove an API silence; False when unknown (configured silences are removed in config)."""
        if await self.store.kv_get(NS_SILENCES, silence_id) is None:
            return False
        await self.store.kv_delete(NS_SILENCES, silence_id)
        return True

    async def listed(self) -> list[ListedSilence]:
        now_s = self._clock()
        stored = await self.store.kv_list(NS_SILENCES)
        out = [ListedSilence(sid, "config", s.active_at(now_s), s) for sid, s in self._configured]
        for sid, value in sorted(stored.items()):
            s = SilenceSettings.model_validate(value["silence"])
            out.append(ListedSilence(sid, "api", s.active_at(now_s), s, value.get("created_by")))
        return out
