"""Silences: matching by glob and tag, one-off windows, recurring windows across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tracecanary.daemon.alerts.silences import SilenceSettings, silenced_by


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


NY_9AM = SilenceSettings(probes=["*"], cron="0 9 * * *", duration=3600, timezone="America/New_York")


@pytest.mark.parametrize(("when_utc", "active"), [
    # winter (EST, UTC-5): 09:00-10:00 local = 14:00-15:00 UTC
    ("2026-03-07T13:59:59", False), ("2026-03-07T14:00:00", True), ("2026-03-07T14:59:59", True),
    ("2026-03-07T15:00:00", False),
    # DST starts 2026-03-08; summer (EDT, UTC-4): 09:00-10:00 local = 13:00-14:00 UTC
    ("2026-03-09T13:00:00", True), ("2026-03-09T13:59:59", True), ("2026-03-09T14:30:00", False),
    ("2026-03-08T13:30:00", True),  # the transition day itself
    # DST ends 2026-11-01: back to 14:00-15:00 UTC
    ("2026-11-01T14:30:00", True), ("2026-11-01T13:30:00", False), ("2026-10-31T13:30:00", True),
])
def test_recurring_window_follows_local_time_across_dst(when_utc: str, active: bool) -> None:
    assert NY_9AM.active_at(at(when_utc)) is active


def test_window_spanning_the_spring_forward_gap_lasts_its_absolute_duration() -> None:
    # 01:00 EST on 2026-03-08 is 06:00 UTC; two real hours later is 08:00 UTC (04:00 EDT)
    s = SilenceSettings(tags=["db"], cron="0 1 * * *", duration="2h", timezone="America/New_York")
    assert s.active_at(at("2026-03-08T07:59:00")) and not s.active_at(at("2026-03-08T08:00:01"))
    # a start inside the gap (02:30 does not exist) is read with the pre-transition offset: 07:30 UTC
    gap = SilenceSettings(tags=["db"], cron="30 2 * * *", duration="30m", timezone="America/New_York")
    assert gap.active_at(at("2026-03-08T07:45:00")) and not gap.active_at(at("2026-03-08T07:15:00"))


def test_weekly_maintenance_window_in_berlin() -> None:
    s = SilenceSettings(probes=["orders-*"], cron="0 22 * * 6", duration="4h", timezone="Europe/Berlin")
    # Saturday 2026-03-28 22:00 CET = 21:00 UTC; Saturday 2026-04-04 22:00 CEST = 20:00 UTC
    assert s.active_at(at("2026-03-29T00:59:00")) and not s.active_at(at("2026-03-29T01:01:00"))
    assert s.active_at(at("2026-04-04T20:00:00")) and not s.active_at(at("2026-04-04T19:59:00"))


def test_one_off_window_naive_times_use_the_timezone() -> None:
    s = SilenceSettings(probes=["a"], start=datetime(2026, 7, 1, 9), end=datetime(2026, 7, 1, 10),
                        timezone="Asia/Tokyo")
    assert s.active_at(at("2026-07-01T00:30:00")) and not s.active_at(at("2026-07-01T01:00:00"))
    open_ended = SilenceSettings(probes=["a"], start=datetime(2026, 7, 1, tzinfo=UTC))
    assert open_ended.active_at(at("2030-01-01T00:00:00")) and not open_ended.active_at(at("2026-06-30T23:59:59"))


@pytest.mark.parametrize(("probes", "tags", "probe_id", "probe_tags", "hit"), [
    (["orders-*"], [], "orders-webhook", [], True),
    (["orders-*"], [], "billing", [], False),
    ([], ["tier-2"], "billing", ["payments", "tier-2"], True),
    ([], ["tier-2"], "billing", ["tier-1"], False),
    (["orders-*"], ["tier-2"], "orders-webhook", ["tier-1"], False),  # both given: both must hold
    (["orders-*"], ["tier-2"], "orders-webhook", ["tier-2"], True),
])
def test_matching(probes: list[str], tags: list[str], probe_id: str, probe_tags: list[str], hit: bool) -> None:
    s = SilenceSettings(probes=probes, tags=tags, start=datetime(2026, 1, 1, tzinfo=UTC))
    assert (silenced_by([("s1", s)], probe_id, probe_tags, at("2026-02-01T00:00:00")) == "s1") is hit
