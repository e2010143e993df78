"""The Jaeger and Tempo pull sources against their HTTP emulators (``demo/emulators/jaeger.py``,
``tempo.py``; the shapes and the upstream file each follows are listed there and in
``test_pull_shapes.py``): every flavour returns the spans that were sent, exactly; 404-then-found, 429
with Retry-After, 5xx and auth failures; a 64-bit Jaeger trace id; a 1,000-span trace."""

from __future__ import annotations

import secrets
from dataclasses import replace

import aiohttp
import anyio
import pytest

from tests.spans.pull_support import FLAVOURS, Flavour, backend, comparable, ingest, sample_trace
from tracecanary.assertions.spans import Span
from tracecanary.daemon.spans.pull import PullApiError, PullAuthError, PullRateLimitedError

pytestmark = pytest.mark.anyio
IDS = [f.name for f in FLAVOURS]


def by_id(spans: list[Span]) -> dict[str, Span]:
    return {s.span_id: s for s in spans}


@pytest.mark.parametrize("flavour", FLAVOURS, ids=IDS)
async def test_fetch_returns_what_was_sent(flavour: Flavour) -> None:
    sent = sample_trace(error=True)
    async with backend(flavour) as emulator, aiohttp.ClientSession() as session:
        ingest(emulator, sent, flavour.tenant())
        ingest(emulator, sample_trace())  # another trace (and tenant): never mixed in
        got = await flavour.source(session, emulator.base_url).fetch(sent[0].trace_id.upper())
    # v3/v2 answered; an older release (no v3/v2) was asked v1 next
    older = flavour.name in ("jaeger-v1-only", "tempo-1x-json", "tempo-1x-protobuf")
    assert len(emulator.requests) == (2 if older else 1), emulator.requests
    assert len(got) == len(sent)
    received = by_id(got)
    for span in sent:
        assert comparable(received[span.span_id]) == comparable(span)
        assert [(ln.trace_id, ln.span_id) for ln in received[span.span_id].links] == \
               [(ln.trace_id, ln.span_id) for ln in span.links]
        assert received[span.span_id].resource.get("service.name") == span.service
    assert received[sent[0].span_id].resource.get("host.name") == "web-1"


@pytest.mark.parametrize("flavour", FLAVOURS, ids=IDS)
async def test_unknown_trace_is_not_yet(flavour: Flavour) -> None:
    async with backend(flavour) as emulator, aiohttp.ClientSession() as session:
        assert await flavour.source(session, emulator.base_url).fetch(secrets.token_hex(16)) == []


@pytest.mark.parametrize("flavour", FLAVOURS, ids=IDS)
async def test_404_then_found_while_polling(flavour: Flavour) -> None:
    sent = sample_trace()
    async with backend(flavour, ingest_delay_s=0.3) as emulator, aiohttp.ClientSession() as session:
        ingest(emulator, sent, flavour.tenant())
        source = flavour.source(session, emulator.base_url)
        assert await source.fetch(sent[0].trace_id) == []  # ingested, not visible yet
        got = await source.poll(sent[0].trace_id, lambda s: len(s) == len(sent), anyio.current_time() + 20)
    assert {s.span_id for s in got} == {s.span_id for s in sent}
    assert len(emulator.requests) >= 2


@pytest.mark.parametrize("flavour", FLAVOURS, ids=IDS)
async def test_429_waits_retry_after_then_finds(flavour: Flavour) -> None:
    sent = sample_trace()
    errors: list[Exception] = []
    async with backend(flavour) as emulator, aiohttp.ClientSession() as session:
        ingest(emulator, sent, flavour.tenant())
        emulator.throttle(2, retry_after_s=0.05)
        source = flavour.source(session, emulator.base_url)
        got = await source.poll(sent[0].trace_id, lambda s: len(s) == len(sent), anyio.current_time() + 20,
                                on_error=errors.append)
    assert len(got) == len(sent)
    assert [type(e) for e in errors if isinstance(e, PullRateLimitedError)], errors
    assert all(isinstance(e, PullRateLimitedError) and e.retry_after_s == pytest.approx(0.05) for e in errors)


@pytest.mark.parametrize("flavour", [FLAVOURS[0], FLAVOURS[3]], ids=["jaeger", "tempo"])
async def test_5xx_is_retried_and_reported(flavour: Flavour) -> None:
    sent = sample_trace()
    errors: list[Exception] = []
    async with backend(flavour) as emulator, aiohttp.ClientSession() as session:
        ingest(emulator, sent)
        emulator.fail(2, status=503)
        source = flavour.source(session, emulator.base_url)
        got = await source.poll(sent[0].trace_id, bool, anyio.current_time() + 20, on_error=errors.append)
    assert len(got) == len(sent)
    assert len(errors) == 2 and all(isinstance(e, PullApiError) and e.status == 503 for e in errors)
    assert "503 backend unavailable" in str(errors[0])


async def test_tempo_without_tenant_is_an_auth_error() -> None:
    flavour = FLAVOURS[-1]
    anonymous = Flavour("tempo-no-tenant", "tempo", flavour.options, {})
    async with backend(anonymous) as emulator, aiohttp.ClientSession() as session:
        source = anonymous.source(session, emulator.base_url)
        with pytest.raises(PullAuthError, match="401 no org id"):
            await source.poll(secrets.token_hex(16), bool, anyio.current_time() + 20)
        assert emulator.requests[0][1].get("X-Scope-OrgID") is None


async def test_tenant_and_headers_are_sent() -> None:
    flavour = Flavour("tempo-headers", "tempo", {"multitenant": True},
                      {"tenant": "team-a", "headers": {"Authorization": "Basic dTpw"}})
    async with backend(flavour) as emulator, aiohttp.ClientSession() as session:
        await flavour.source(session, emulator.base_url).fetch(secrets.token_hex(16))
    headers = emulator.requests[0][1]
    assert headers["X-Scope-OrgID"] == "team-a" and headers["Authorization"] == "Basic dTpw"
    assert headers["Accept"] == "application/json"


async def test_older_backend_is_asked_v1_only_once_known() -> None:
    for flavour, v1_path in ((FLAVOURS[2], "/api/traces/"), (FLAVOURS[5], "/api/traces/")):
        sent = sample_trace()
        async with backend(flavour) as emulator, aiohttp.ClientSession() as session:
            ingest(emulator, sent)
            source = flavour.source(session, emulator.base_url)
            await source.fetch(sent[0].trace_id)
            emulator.requests.clear()
            assert len(await source.fetch(sent[0].trace_id)) == len(sent)
        assert [p for p, _ in emulator.requests] == [v1_path + sent[0].trace_id], flavour.name


async def test_jaeger_64_bit_trace_id_is_padded() -> None:
    tid = "0" * 16 + secrets.token_hex(8)
    sent = sample_trace(tid)
    async with backend(FLAVOURS[2]) as emulator, aiohttp.ClientSession() as session:
        ingest(emulator, sent)
        got = await FLAVOURS[2].source(session, emulator.base_url).fetch(tid)
        async with session.get(f"{emulator.base_url}/api/traces/{tid}") as resp:
            raw = await resp.json()
    assert raw["data"][0]["traceID"] == tid[16:]  # Jaeger writes 16 hex characters
    assert {s.trace_id for s in got} == {tid} and len(got) == len(sent)


@pytest.mark.parametrize("flavour", FLAVOURS[:4] + FLAVOURS[4:5], ids=IDS[:5])
async def test_thousand_span_trace(flavour: Flavour) -> None:
    sent = sample_trace(extra_children=997)
    assert len(sent) == 1000
    async with backend(flavour) as emulator, aiohttp.ClientSession() as session:
        ingest(emulator, sent, flavour.tenant())
        got = await flavour.source(session, emulator.base_url).fetch(sent[0].trace_id)
    assert len(got) == 1000
    received = by_id(got)
    assert all(comparable(received[s.span_id]) == comparable(s) for s in sent)


WINDOW_PARAMS = {"jaeger": ({"start_time", "end_time"}, {"start", "end"}), "tempo": ({"start", "end"}, {"start", "end"})}


@pytest.mark.parametrize("flavour", FLAVOURS, ids=IDS)
async def test_queries_carry_the_runs_time_window(flavour: Flavour) -> None:
    """With a trigger time each query names [trigger - query_window, now + query_window] in the API's own
    parameters (Jaeger api_v3 RFC 3339, api/traces µs; Tempo s); a run far from the trace finds nothing
    (the backend reads only that time), and a source without a window asks without parameters."""
    sent = sample_trace()
    trigger_ns = sent[0].start_ns - 1_000_000
    async with backend(flavour) as emulator, aiohttp.ClientSession() as session:
        ingest(emulator, sent, flavour.tenant())
        integration = {**flavour.integration, "query_window": "2s"}
        source = Flavour(flavour.name, flavour.backend, flavour.options, integration).source(session, emulator.base_url)
        assert len(await source.fetch(sent[0].trace_id, since_ns=trigger_ns)) == len(sent)
        newer, older = WINDOW_PARAMS[flavour.backend]
        for path, _ in emulator.requests:
            query = dict(p.split("=", 1) for p in path.partition("?")[2].split("&") if p)
            assert set(query) == (older if path.startswith("/api/traces/") else newer), path
        if flavour.name != "jaeger-v3-grpc-gateway":  # (the grpc-gateway api_v3 had no window; v1 is asked next)
            hour_ns = 3_600 * 10**9  # a trace an hour older than the run: outside its window
            old = [replace(s, start_ns=s.start_ns - hour_ns, end_ns=s.end_ns - hour_ns) for s in sample_trace()]
            ingest(emulator, old, flavour.tenant())
            assert await source.fetch(old[0].trace_id, since_ns=trigger_ns) == []
        emulator.requests.clear()
        unbounded = Flavour(flavour.name, flavour.backend, flavour.options, {**flavour.integration, "query_window": None})
        assert len(await unbounded.source(session, emulator.base_url).fetch(sent[0].trace_id, since_ns=trigger_ns)) \
            == len(sent)
        assert all("?" not in path for path, _ in emulator.requests)


async def test_jaeger_window_is_rfc3339_and_microseconds() -> None:
    trigger_ns = 1_790_000_000_123_456_789
    for flavour in (FLAVOURS[0], FLAVOURS[2]):  # api_v3 answers; a Jaeger without api_v3 is asked api/traces next
        sent = sample_trace()
        async with backend(flavour) as emulator, aiohttp.ClientSession() as session:
            ingest(emulator, sent)
            assert await flavour.source(session, emulator.base_url).fetch(sent[0].trace_id, since_ns=trigger_ns)
        query = dict(p.split("=", 1) for p in emulator.requests[-1][0].partition("?")[2].split("&"))
        if flavour is FLAVOURS[0]:
            assert query["start_time"] == "2026-09-21T13:58:20.123456789Z"  # 1_790_000_000 s is 14:13:20Z; minus 15m, ns kept
        else:
            assert int(query["start"]) == (trigger_ns - 900 * 10**9) // 1000


async def test_every_fetch_outcome_is_observed() -> None:
    """``observe`` (the engine's ``tracecanary_trace_source_fetches`` counter) hears each fetch: 5xx, 429,
    not yet, found; and an auth failure that ends the poll."""
    flavour = FLAVOURS[3]
    sent = sample_trace()
    seen: list[tuple[str, str]] = []
    async with backend(flavour, ingest_delay_s=0.0) as emulator, aiohttp.ClientSession() as session:
        source = flavour.source(session, emulator.base_url)
        source.observe = lambda name, outcome: seen.append((name, outcome))
        emulator.fail(1)
        emulator.throttle(1, 0.01, after=1)
        calls = 0

        def until(spans: list[Span]) -> bool:
            nonlocal calls
            calls += 1
            if calls == 1:
                ingest(emulator, sent)  # not there on the first successful fetch, there on the next
            return len(spans) == len(sent)

        await source.poll(sent[0].trace_id, until, anyio.current_time() + 20)
    assert [o for _, o in seen] == ["error", "rate_limited", "not_found", "found"]
    assert {n for n, _ in seen} == {"tempo"}
    anonymous = Flavour("tempo-no-tenant", "tempo", {"multitenant": True}, {})
    seen.clear()
    async with backend(anonymous) as emulator, aiohttp.ClientSession() as session:
        source = anonymous.source(session, emulator.base_url)
        source.observe = lambda name, outcome: seen.append((name, outcome))
        with pytest.raises(PullAuthError):
            await source.poll(secrets.token_hex(16), bool, anyio.current_time() + 20)
    assert seen == [("tempo", "auth")]
