"""The sentry side-effect watcher against the emulator fed by the sentry-sdk-only service."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import pytest

from tests.fixtures.sentry_service import Service, integration_for, make_probe_context
from tracecanary.assertions.side_effects import SentryEffect, judge_sentry
from tracecanary.daemon.watchers.base import Services, WatchContext
from tracecanary.daemon.watchers.registry import WATCHERS
from tracecanary.daemon.watchers.sentry import watch_sentry
from tracecanary.demo.emulators.sentry import SentryEmulator
from tracecanary.integrations import Integrations

pytestmark = pytest.mark.anyio


async def run_probe(session: aiohttp.ClientSession, emulator: SentryEmulator, service: Service, fail: bool) -> Any:
    ctx: Any = make_probe_context(session, Integrations(sentry=integration_for(emulator)))
    with anyio.fail_after(10):
        async with session.post(
            service.url + "/checkout", params={"fail": "1"} if fail else {}, headers=ctx.trace_headers()
        ):
            pass
    return ctx


def effect(**kw: Any) -> SentryEffect:
    return SentryEffect.model_validate(kw)


async def test_reported_error_matches_and_absent_fails_at_once(
    sentry_emulator: SentryEmulator, sentry_service: Service
) -> None:
    assert WATCHERS["sentry"] is watch_sentry
    async with aiohttp.ClientSession() as session:
        probe = await run_probe(session, sentry_emulator, sentry_service, fail=True)
        ctx = WatchContext(probe=probe, services=Services(), poll_interval_s=0.05)
        t0 = anyio.current_time()
        ok = await watch_sentry(effect(event={"level": "error", "message": {"contains": "declined"}}, within="5s"), ctx)
        assert ok == []
        # The exception value itself matches exactly (Discover's message is Sentry's longer search text).
        assert await watch_sentry(effect(event={"message": "card 4242 declined"}, within="5s"), ctx) == []
        (absent,) = await watch_sentry(effect(event={"level": "error"}, absent=True, within="5s"), ctx)
        assert anyio.current_time() - t0 < 4  # decided on sight, not at the window's end
        assert absent.message == (
            "sentry: expected no event with level error for this trace, "
            "got [error] 'PaymentDeclinedError: card 4242 declined'"
        )
        (miss,) = await watch_sentry(effect(event={"message": {"contains": "timeout"}}, within="300ms"), ctx)
    assert miss.message == (
        "sentry: expected an event with message contains 'timeout' for this trace within 0.3s, "
        "saw 1: [error] 'PaymentDeclinedError: card 4242 declined'"
    )
    assert any("/events/" in p for p in sentry_emulator.api_requests)


async def test_clean_run_fails_positive_and_passes_absent_at_window_close(
    sentry_emulator: SentryEmulator, sentry_service: Service
) -> None:
    async with aiohttp.ClientSession() as session:
        probe = await run_probe(session, sentry_emulator, sentry_service, fail=False)
        ctx = WatchContext(probe=probe, services=Services(), poll_interval_s=0.05)
        t0 = anyio.current_time()
        assert await watch_sentry(effect(absent=True, within="400ms"), ctx) == []
        assert anyio.current_time() - t0 >= 0.3
        (miss,) = await watch_sentry(effect(event={"level": "error"}, within="100ms"), ctx)
    assert "saw no events" in miss.message


async def test_rate_limited_then_seen(sentry_emulator: SentryEmulator, sentry_service: Service) -> None:
    async with aiohttp.ClientSession() as session:
        probe = await run_probe(session, sentry_emulator, sentry_service, fail=True)
        sentry_emulator.throttle(1, retry_after_s=0.2)
        ctx = WatchContext(probe=probe, services=Services(), poll_interval_s=0.02)
        assert await watch_sentry(effect(within="5s"), ctx) == []
    times = sentry_emulator.api_request_times
    assert times[1] - times[0] >= 0.2


def test_judge_sentry_pure() -> None:
    rows = [{"id": "e1", "level": "warning", "message": "disk almost full", "title": "disk almost full"}]
    assert judge_sentry(effect(event={"level": "warning"}), rows) == []
    (f,) = judge_sentry(effect(event={"level": "error"}, within="2s"), rows)
    assert f.observed == ["[warning] 'disk almost full'"] and f.expected == {"level": "error"}
    assert judge_sentry(effect(absent=True), []) == []
    (g,) = judge_sentry(effect(absent=True), rows)
    assert g.details["event_ids"] == ["e1"]


async def test_missing_sentry_credentials_is_an_error_finding() -> None:
    async with aiohttp.ClientSession() as session:
        probe: Any = make_probe_context(session, Integrations())
        (f,) = await watch_sentry(effect(), WatchContext(probe=probe, services=Services(), poll_interval_s=0.01))
    assert f.severity == "error"
    assert f.message == "sentry: integrations.sentry needs org and token (event:read) for trace lookups"
