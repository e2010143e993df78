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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field

from tracecanary.assertions.units import CronExpression, Duration, Timezone, parse_duration_s
from tracecanary.daemon.store.base import Store
from tracecanary.model import cross_field_rule

log = logging.getLogger("tracecanary.alerts")
NS_SILENCES = "alerts.silences"


def _window_problem(fields: Mapping[str, Any]) -> str | None:
    """The window's shape, on validated values or (when a field failed) on the values as written."""
    one_off = fields.get("start") is not None or fields.get("end") is not None
    recurring = fields.get("cron") is not None or fields.get("duration") is not None
    if one_off == recurring:
        return "set either start/end (one-off) or cron/duration (recurring)"
    if recurring:
        duration = fields.get("duration")
        if fields.get("cron") is None or duration is None or _seconds(duration) == 0:
            return "a recurring silence needs both cron and a positive duration"
        return None
    start, end = _instant(fields.get("start"), fields), _instant(fields.get("end"), fields)
    return "end must be after start" if start is not None and end is not None and end <= start else None


def _seconds(value: Any) -> float | None:
    try:
        return parse_duration_s(value)
    except ValueError:
        return None  # a field error of its own


def _instant(value: Any, fields: Mapping[str, Any]) -> datetime | None:
    """``value`` as an aware datetime (naive = the silence's timezone); None when it cannot be read here."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is not None:
        return value
    try:
        return value.replace(tzinfo=ZoneInfo(str(fields.get("timezone", "UTC"))))
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None  # an unknown timezone: a field error of its own


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

    _selects = cross_field_rule(
        lambda fields: "a silence needs probes or tags (probes: ['*'] silences every probe)"
        if not fields.get("probes") and not fields.get("tags") else None)
    _shape = cross_field_rule(_window_problem)

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
