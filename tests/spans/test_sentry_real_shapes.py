"""SentryTraceSource against Sentry's real API shapes, served over HTTP from fixtures.

The fixtures (tests/spans/sentry_shapes.py) follow getsentry/sentry: the trace view's
``SerializedSpan``/``SerializedIssue`` in ``src/sentry/snuba/trace.py``, the ISO timestamps of
``src/sentry/apidocs/examples/trace_examples.py``, the search message of
``src/sentry/services/eventstore/models.py`` as an error's ``description``, event details as in
``src/sentry/apidocs/examples/event_examples.py`` and the legacy ``TraceError`` of
``src/sentry/api/endpoints/organization_events_trace.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.spans import sentry_shapes as shapes
from tests.watchers.support import LoopbackApp
from tracecanary.assertions.spans import Span, StatusCode, Trace
from tracecanary.daemon.spans.sentry import SentryRateLimitedError, SentryTraceSource
from tracecanary.daemon.spans.sentry_convert import epoch_ns
from tracecanary.integrations import SentryIntegration

pytestmark = pytest.mark.anyio


class FakeSentry:
    """Serves the fixtures at Sentry's paths; event details can be held back (not in nodestore yet)."""

    def __init__(self, *, legacy: bool = False) -> None:
        self.legacy = legacy
        self.held_back: set[str] = set()
        self.event_status = 200
        """Answer every event read with this status instead (500, 429…)."""
        self.requests: list[str] = []

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/0/organizations/acme/trace/{tid}/", self._trace),
                web.get("/api/0/organizations/acme/events-trace/{tid}/", self._legacy),
                web.get("/api/0/projects/acme/{project}/events/{eid}/", self._event)]

    async def _trace(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        if self.legacy:
            raise web.HTTPNotFound(text='{"detail": "not found"}', content_type="application/json")
        return web.json_response(shapes.trace_view())

    async def _legacy(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.json_response(shapes.legacy_view())

    async def _event(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        if self.event_status != 200:
            return web.json_response({"detail": "x"}, status=self.event_status, headers={"Retry-After": "3"})
        eid = request.match_info["eid"]
        found: dict[str, Any] | None = shapes.events().get(eid)
        if eid == "280027d94f30428c83a2de46f932612b":
            found = shapes.legacy_transaction_event()
        if found is None or eid in self.held_back or request.match_info["project"] != "shop":
            raise web.HTTPNotFound(text='{"detail": "Event not found"}', content_type="application/json")
        return web.json_response(found)


@asynccontextmanager
async def source_for(fake: FakeSentry) -> AsyncIterator[SentryTraceSource]:
    async with LoopbackApp(fake.routes()) as app, aiohttp.ClientSession() as session:
        yield SentryTraceSource(session, SentryIntegration(org="acme", token="t", api_url=app.url))


def by_name(spans: list[Span]) -> dict[str, Span]:
    return {s.name: s for s in spans}


def test_epoch_ns_reads_both_timestamp_forms_exactly() -> None:
    assert epoch_ns(shapes.START_ISO) == 1_776_277_351_000_000_000
    assert epoch_ns("2026-04-15T18:22:31.250000Z") == 1_776_277_351_250_000_000
    assert epoch_ns("2026-04-15T18:22:31.250000+00:00") == 1_776_277_351_250_000_000
    assert epoch_ns("2026-04-15T18:22:31.25") == 1_776_277_351_250_000_000  # no zone: UTC
    assert epoch_ns(shapes.START_S + 0.25) == 1_776_277_351_250_000_000
    assert epoch_ns("1776277351.25") == 1_776_277_351_250_000_000
    assert epoch_ns(None) is None and epoch_ns("yesterday") is None and epoch_ns(True) is None


async def test_trace_view_with_iso_and_float_timestamps_and_search_messages() -> None:
    fake = FakeSentry()
    async with source_for(fake) as source:
        spans = await source.fetch(shapes.TRACE_ID)
        again = await source.fetch(shapes.TRACE_ID)
    assert again == spans
    named = by_name(spans)
    root, charge, ledger = named["/checkout"], named["POST https://payments.internal/charge"], named["INSERT INTO ledger"]
    assert (root.start_ns, root.end_ns) == (1_776_277_351_000_000_000, 1_776_277_351_250_000_000)
    assert charge.start_ns == epoch_ns(shapes.START_S + 0.05) and charge.parent_span_id == shapes.ROOT
    assert Trace.build(shapes.TRACE_ID, spans).roots == (root,)
    assert root.status_code is StatusCode.ERROR and root.status_message == "internal_error"

    # The type comes from the event's metadata, not from the description's first word.
    assert charge.status_code is StatusCode.ERROR and charge.status_message == "ValueError: payment declined"
    (declined,) = charge.events
    assert declined.attributes["exception.type"] == "ValueError"
    assert declined.attributes["exception.message"] == "payment declined"
    assert declined.attributes["sentry.description"] == "ValueError payment declined service.py charge /checkout"
    assert declined.attributes["sentry.culprit"] == "/checkout"
    assert declined.attributes["sentry.short_id"] == "SHOP-3F"
    assert declined.time_ns == epoch_ns(shapes.START_S + 0.19)

    # Value first in the search text, a colon inside the value, a free-sentence title: still exact.
    (down,) = ledger.events
    assert down.attributes["exception.type"] == "LedgerError"
    assert down.attributes["exception.message"] == "ledger unavailable: retry later"
    assert down.attributes["sentry.level"] == "warning"
    assert ledger.status_message == "LedgerError: ledger unavailable: retry later"

    # Each error on a span has its event read once; later polls use the cache. The top-level error
    # belongs to no span Sentry holds, so nothing is read for it.
    event_reads = [p for p in fake.requests if "/events/" in p]
    assert sorted(event_reads) == sorted(f"/api/0/projects/acme/shop/events/{e}/"
                                         for e in (shapes.DECLINED, shapes.LEDGER_DOWN))


async def test_error_whose_event_is_not_readable_yet_keeps_sentrys_text_and_no_guessed_type() -> None:
    fake = FakeSentry()
    fake.held_back.add(shapes.DECLINED)
    async with source_for(fake) as source:
        early = by_name(await source.fetch(shapes.TRACE_ID))["POST https://payments.internal/charge"]
        fake.held_back.clear()
        later = by_name(await source.fetch(shapes.TRACE_ID))["POST https://payments.internal/charge"]
    (event,) = early.events
    assert "exception.type" not in event.attributes
    assert event.attributes["exception.message"] == "ValueError payment declined service.py charge /checkout"
    assert later.events[0].attributes["exception.type"] == "ValueError"


async def test_legacy_view_reads_the_type_from_the_event_not_the_title() -> None:
    fake = FakeSentry(legacy=True)
    async with source_for(fake) as source:
        spans = await source.fetch(shapes.TRACE_ID)
    assert source.legacy is True
    named = by_name(spans)
    charge = named["POST https://payments.internal/charge"]
    assert charge.start_ns == 1_776_277_351_050_000_000 and charge.end_ns == 1_776_277_351_200_000_000
    (event,) = charge.events
    assert (event.attributes["exception.type"], event.attributes["exception.message"]) == ("ValueError", "payment declined")
    assert event.attributes["sentry.title"] == "ValueError: payment declined"
    assert named["/checkout"].status_message == "internal_error"


async def test_unreadable_error_events_keep_the_spans_and_a_429_still_waits() -> None:
    fake = FakeSentry()
    fake.event_status = 502
    async with source_for(fake) as source:
        spans = await source.fetch(shapes.TRACE_ID)
        fake.event_status = 429
        with pytest.raises(SentryRateLimitedError) as caught:
            await source.fetch(shapes.TRACE_ID)
    charge = by_name(spans)["POST https://payments.internal/charge"]
    assert charge.status_code is StatusCode.ERROR and "exception.type" not in charge.events[0].attributes
    assert caught.value.retry_after_s == 3
