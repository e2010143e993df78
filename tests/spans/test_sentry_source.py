"""SentryTraceSource against the emulator fed by a real sentry-sdk service (same trace id end to end)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import anyio
import pytest

from tests.fixtures.sentry_service import (
    Service,
    integration_for,
    make_probe_context,
    start_service,
    stop_service,
)
from tracecanary.assertions.spans import Span, SpanKind, StatusCode, Trace
from tracecanary.daemon.spans.sentry import SentryAuthError, SentryRateLimitedError, SentryTraceSource
from tracecanary.demo.emulators.sentry import SentryEmulator
from tracecanary.integrations import SentryIntegration

pytestmark = pytest.mark.anyio

NAMES = {"POST /checkout", "load-cart", "charge-card", "fraud-check"}


def complete(spans: list[Span]) -> bool:
    return {s.name for s in spans} >= NAMES


async def fire(session: aiohttp.ClientSession, service: Service, fail: bool = False) -> tuple[Any, dict[str, Any]]:
    """Send the probe request carrying ProbeContext.trace_headers(); return (ctx, service's answer)."""
    ctx: Any = make_probe_context(session)
    with anyio.fail_after(10):
        async with session.post(
            service.url + "/checkout", params={"fail": "1"} if fail else {}, headers=ctx.trace_headers()
        ) as resp:
            body = await resp.json()
    return ctx, body


def assert_checkout_tree(spans: list[Span], ctx: Any) -> Trace:
    trace = Trace.build(ctx.trace.trace_id, spans)
    assert {s.trace_id for s in spans} == {ctx.trace.trace_id}
    by_name = {s.name: s for s in spans}
    root = by_name["POST /checkout"]
    # The service's transaction hangs under the probe's span: the orphan is the probe root itself.
    assert root.parent_span_id == ctx.trace.span_id
    assert trace.orphans == (root,)
    assert root.kind is SpanKind.SERVER and root.service == "shop"
    assert [c.name for c in trace.children(root)] == ["load-cart", "charge-card"]
    assert [c.name for c in trace.children(by_name["charge-card"])] == ["fraud-check"]
    assert by_name["load-cart"].kind is SpanKind.CLIENT
    assert by_name["charge-card"].kind is SpanKind.CLIENT
    assert by_name["fraud-check"].kind is SpanKind.INTERNAL
    for s in spans:
        assert 0 < s.start_ns <= s.end_ns
        assert s.service == "shop"
    # sentry-sdk stamps each span as wall-clock start + monotonic duration, so a child's end may overrun its
    # parent's by the wall clock's slew between the two starts (seen: 37 µs). Allow 1 ms of it.
    slew = 1_000_000
    assert root.start_ns <= by_name["load-cart"].start_ns + slew
    assert by_name["fraud-check"].end_ns <= root.end_ns + slew
    return trace


async def test_finds_sdk_transaction_with_same_trace_id(
    sentry_emulator: SentryEmulator, sentry_service: Service
) -> None:
    async with aiohttp.ClientSession() as session:
        ctx, body = await fire(session, sentry_service)
        assert body["trace_id"] == ctx.trace.trace_id and body["parent_span_id"] == ctx.trace.span_id
        source = SentryTraceSource(session, integration_for(sentry_emulator), poll_initial_s=0.02)
        spans = await source.poll(ctx.trace.trace_id, complete, anyio.current_time() + 10)
    assert source.legacy is False
    trace = assert_checkout_tree(spans, ctx)
    assert all(s.status_code is StatusCode.OK for s in trace.roots + trace.orphans)
    assert any("/trace/" in p for p in sentry_emulator.api_requests)


async def test_error_becomes_exception_event_on_its_span(
    sentry_emulator: SentryEmulator, sentry_service: Service
) -> None:
    async with aiohttp.ClientSession() as session:
        ctx, _ = await fire(session, sentry_service, fail=True)
        source = SentryTraceSource(session, integration_for(sentry_emulator), poll_initial_s=0.02)

        def with_error(spans: list[Span]) -> bool:
            return complete(spans) and any(s.events for s in spans)

        spans = await source.poll(ctx.trace.trace_id, with_error, anyio.current_time() + 10)
    assert_checkout_tree(spans, ctx)
    charge = next(s for s in spans if s.name == "charge-card")
    assert charge.status_code is StatusCode.ERROR
    (event,) = charge.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "PaymentDeclinedError"
    assert event.attributes["exception.message"] == "card 4242 declined"
    assert event.attributes["sentry.level"] == "error"
    # What the trace view said about the error: Sentry's search text, value first (metadata order), with
    # the crash frame and the culprit (the transaction) — the type above came from the event instead.
    assert event.attributes["sentry.description"] == (
        "card 4242 declined PaymentDeclinedError sentry_service_app.py checkout POST /checkout")
    assert event.attributes["sentry.culprit"] == "POST /checkout"
    assert charge.status_message == "PaymentDeclinedError: card 4242 declined"
    root = next(s for s in spans if s.name == "POST /checkout")
    assert root.status_code is StatusCode.ERROR and root.status_message == "internal_error"


async def test_iso_timestamps_read_like_floats() -> None:
    """The trace view as Sentry's published example writes it (ISO-8601 span timestamps)."""
    async with SentryEmulator(projects={"1": "shop"}, timestamps="iso") as iso:
        service = await start_service(iso.dsn())
        try:
            async with aiohttp.ClientSession() as session:
                ctx, _ = await fire(session, service)
                iso_spans = await SentryTraceSource(session, integration_for(iso), poll_initial_s=0.02).poll(
                    ctx.trace.trace_id, complete, anyio.current_time() + 10)
                status, raw = await _raw_trace(session, iso, ctx.trace.trace_id)
        finally:
            await stop_service(service)
    assert status == 200 and isinstance(raw[0]["start_timestamp"], str) and raw[0]["start_timestamp"].endswith("Z")
    assert_checkout_tree(iso_spans, ctx)
    root = next(s for s in iso_spans if s.name == "POST /checkout")
    assert root.start_ns % 1000 == 0 and abs(root.start_ns / 1e9 - time.time()) < 60


async def _raw_trace(session: aiohttp.ClientSession, emulator: SentryEmulator, trace_id: str) -> tuple[int, Any]:
    url = f"{emulator.base_url}/api/0/organizations/{emulator.org}/trace/{trace_id}/"
    with anyio.fail_after(10):
        async with session.get(url, headers={"Authorization": f"Bearer {emulator.token}"}) as resp:
            return resp.status, await resp.json()


async def test_legacy_events_trace_fallback() -> None:
    # With an ingest delay, the legacy view first answers 404 (no transaction yet): that is "not yet".
    async with SentryEmulator(projects={"1": "shop"}, legacy_only=True, ingest_delay_s=0.3) as emulator:
        service = await start_service(emulator.dsn())
        try:
            async with aiohttp.ClientSession() as session:
                ctx, _ = await fire(session, service, fail=True)
                source = SentryTraceSource(session, integration_for(emulator), poll_initial_s=0.02)
                spans = await source.poll(ctx.trace.trace_id, lambda ss: complete(ss) and any(s.events for s in ss),
                                          anyio.current_time() + 10)
        finally:
            await stop_service(service)
    assert source.legacy is True
    assert_checkout_tree(spans, ctx)
    charge = next(s for s in spans if s.name == "charge-card")
    assert charge.events[0].attributes["exception.type"] == "PaymentDeclinedError"
    # New view tried once (404), then only the legacy endpoints.
    assert sum("/trace/" in p for p in emulator.api_requests) == 1
    assert sum("/events-trace/" in p for p in emulator.api_requests) >= 2


async def test_polls_until_ingested_and_respects_retry_after() -> None:
    async with SentryEmulator(projects={"1": "shop"}, ingest_delay_s=0.8) as emulator:
        service = await start_service(emulator.dsn())
        try:
            async with aiohttp.ClientSession() as session:
                ctx, _ = await fire(session, service)
                emulator.throttle(2, retry_after_s=0.2)
                source = SentryTraceSource(session, integration_for(emulator), poll_initial_s=0.02, poll_max_s=0.1)
                t0 = time.monotonic()
                spans = await source.poll(ctx.trace.trace_id, complete, anyio.current_time() + 10)
                elapsed_s = time.monotonic() - t0
        finally:
            await stop_service(service)
    assert_checkout_tree(spans, ctx)
    polls = [p for p in emulator.api_requests if "/trace/" in p]
    # Two 429s, each waited out in full, then empty answers until the ingest delay passed.
    times = emulator.api_request_times
    assert times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.2
    assert elapsed_s >= 0.6
    assert len(polls) >= 4


async def test_deadline_returns_what_was_seen(sentry_emulator: SentryEmulator) -> None:
    async with aiohttp.ClientSession() as session:
        source = SentryTraceSource(session, integration_for(sentry_emulator), poll_initial_s=0.02, poll_max_s=0.05)
        t0 = anyio.current_time()
        spans = await source.poll("ab" * 16, complete, t0 + 0.3)
        assert spans == []
        assert 0.3 <= anyio.current_time() - t0 < 1.0
        assert len(sentry_emulator.api_requests) >= 3


async def test_bad_token_raises(sentry_emulator: SentryEmulator) -> None:
    bad = SentryIntegration(org="acme", token="wrong", api_url=sentry_emulator.base_url)
    async with aiohttp.ClientSession() as session:
        source = SentryTraceSource(session, bad, poll_initial_s=0.01)
        with pytest.raises(SentryAuthError):
            await source.poll("cd" * 16, complete, anyio.current_time() + 5)


async def test_legacy_detail_fetch_rate_limited_surfaces_as_retry_after() -> None:
    async with SentryEmulator(projects={"1": "shop"}, legacy_only=True) as emulator:
        service = await start_service(emulator.dsn())
        try:
            async with aiohttp.ClientSession() as session:
                ctx, _ = await fire(session, service)
                source = SentryTraceSource(session, integration_for(emulator), poll_initial_s=0.02)
                await source.poll(ctx.trace.trace_id, complete, anyio.current_time() + 10)
                # events-trace answers, the per-transaction event fetch is throttled: a plain 429 error.
                emulator.throttle(1, retry_after_s=0.15, after=1)
                with pytest.raises(SentryRateLimitedError) as caught:
                    await source.fetch(ctx.trace.trace_id)
                assert caught.value.retry_after_s == 0.15
                emulator.throttle(1, retry_after_s=0.15, after=1)
                spans = await source.poll(ctx.trace.trace_id, complete, anyio.current_time() + 10)
        finally:
            await stop_service(service)
    assert_checkout_tree(spans, ctx)


async def test_large_trace_is_read_whole(sentry_emulator: SentryEmulator) -> None:
    """A trace view bigger than one read buffer (here ~300 KiB) arrives whole, not cut at 64 KiB."""
    from sentry_sdk.envelope import Envelope, Item, PayloadRef

    trace_id, root = "12" * 16, "34" * 8
    t0 = time.time()
    spans = [{"trace_id": trace_id, "span_id": f"{i:016x}", "parent_span_id": root, "op": "db.query",
              "description": f"SELECT {'x' * 500} /* {i} */", "start_timestamp": t0, "timestamp": t0 + 0.001}
             for i in range(1, 501)]
    txn = {"type": "transaction", "transaction": "batch", "start_timestamp": t0, "timestamp": t0 + 1,
           "contexts": {"trace": {"trace_id": trace_id, "span_id": root, "op": "task"}}, "spans": spans}
    env = Envelope(headers={})
    env.add_item(Item(payload=PayloadRef(json=txn), type="transaction"))
    async with aiohttp.ClientSession() as session:
        with anyio.fail_after(10):
            async with session.post(f"{sentry_emulator.base_url}/api/1/envelope/", data=env.serialize(),
                                    params={"sentry_key": sentry_emulator.public_key}) as resp:
                assert resp.status == 200
        got = await SentryTraceSource(session, integration_for(sentry_emulator)).fetch(trace_id)
    assert len(got) == 501
    assert Trace.build(trace_id, got).roots[0].name == "batch"
