"""Outgoing trace context: traceparent, tracestate, baggage and sentry-trace, each switchable."""

from __future__ import annotations

from typing import Any

from tracecanary.integrations import Integrations, SentryIntegration
from tracecanary.probes.base import Inject, ProbeContext, RunLog, TraceContext
from tracecanary.probes.templating import Templates

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def ctx(inject: Inject | None = None, integrations: Integrations | None = None, sampled: bool = True) -> ProbeContext:
    return ProbeContext(
        probe_id="orders-webhook", run_id="run1", attempt=1, first_run_id="run1",
        trace=TraceContext(TRACE, SPAN, sampled), session=None,  # type: ignore[arg-type]
        templates=Templates(), integrations=integrations or Integrations(), inject=inject or Inject(),
        log=RunLog(), trigger_ns=0, deadline_s=0.0,
    )


def test_all_headers_by_default() -> None:
    h = ctx().trace_headers("b7ad6b7169203331")
    assert h["traceparent"] == f"00-{TRACE}-b7ad6b7169203331-01"
    assert h["tracestate"] == "tracecanary=run1"
    assert h["sentry-trace"] == f"{TRACE}-b7ad6b7169203331-1"
    members = h["baggage"].split(",")
    assert "tracecanary.probe_id=orders-webhook" in members and "tracecanary.run_id=run1" in members
    assert f"sentry-trace_id={TRACE}" in members and "sentry-sampled=true" in members
    assert not any(m.startswith("sentry-org_id") for m in members)


def test_unsampled_and_org_id_from_dsn() -> None:
    integ = Integrations(sentry=SentryIntegration(dsn="https://key@o4501.ingest.sentry.io/12"))
    h = ctx(integrations=integ, sampled=False).trace_headers()
    assert h["traceparent"].endswith("-00") and h["sentry-trace"].endswith("-0")
    assert "sentry-sampled=false" in h["baggage"] and "sentry-org_id=4501" in h["baggage"]


def test_each_header_can_be_switched_off() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"traceparent": False}, "traceparent"), ({"tracestate": False}, "tracestate"),
        ({"baggage": False}, "baggage"), ({"sentry_trace": False}, "sentry-trace"),
    ]
    for off, header in cases:
        h = ctx(Inject(**off)).trace_headers()
        assert header not in h
        assert len(h) == 3
    assert "sentry" not in ctx(Inject(sentry_trace=False)).trace_headers()["baggage"]


# --- a baggage / tracestate the config sets is merged with ours, never replaced ------------------
def test_merge_baggage_keeps_theirs_adds_ours_and_respects_limits() -> None:
    from tracecanary.probes.propagation import MAX_BAGGAGE_MEMBERS, merge_baggage, merge_tracestate

    merged, kept, dropped = merge_baggage("tenant=acme;ttl=30 , userid=alice", "tracecanary.run_id=r1,userid=bob")
    assert merged == "tenant=acme;ttl=30,userid=alice,tracecanary.run_id=r1"
    assert (kept, dropped) == (["userid"], [])
    full = ",".join(f"k{i}=v" for i in range(MAX_BAGGAGE_MEMBERS))
    merged, kept, dropped = merge_baggage(full, "tracecanary.run_id=r1")
    assert merged == full and dropped == ["tracecanary.run_id"]
    big = "blob=" + "x" * 8180
    assert merge_baggage(big, "tracecanary.run_id=r1")[2] == ["tracecanary.run_id"]
    assert merge_baggage("", "a=1,b=2")[0] == "a=1,b=2"
    assert merge_tracestate("congo=t61rcWkgMzE,tracecanary=old", "tracecanary=run1") == "tracecanary=run1,congo=t61rcWkgMzE"
    assert merge_tracestate(",".join(f"v{i}=x" for i in range(40)), "tracecanary=r").count(",") == 31


def test_with_trace_headers_is_case_insensitive_and_logs_what_gave_way() -> None:
    c = ctx()
    out = c.with_trace_headers({"Baggage": "sentry-sampled=false", "baggage": "tenant=acme", "TraceParent": "x",
                                "X-Other": "1"}, "b7ad6b7169203331")
    assert [k for k in out if k.lower() == "baggage"] == ["Baggage"]
    assert out["Baggage"].startswith("sentry-sampled=false,tenant=acme,tracecanary.probe_id=orders-webhook,")
    assert "sentry-sampled=true" not in out["Baggage"]
    assert "TraceParent" not in out and out["traceparent"] == f"00-{TRACE}-b7ad6b7169203331-01"
    assert out["X-Other"] == "1"
    assert "baggage: the request's own value kept keys=['sentry-sampled']" in c.log.text()


def test_http_probe_merges_a_configured_baggage_at_a_real_target() -> None:
    import aiohttp
    import anyio
    from aiohttp import web
    from opentelemetry import baggage as otel_baggage
    from opentelemetry.baggage.propagation import W3CBaggagePropagator

    from tests.probes.helpers import make_ctx, serve
    from tracecanary.probes.http import HttpProbe

    seen: list[web.Request] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response({"ok": True})

    async def go() -> ProbeContext:
        app = web.Application()
        app.router.add_post("/hook", hook)
        async with serve(app) as url, aiohttp.ClientSession() as session:
            probe = HttpProbe.model_validate({
                "id": "bag", "kind": "http", "request": {
                    "method": "POST", "url": url + "/hook", "json": {},
                    "headers": {"Baggage": "tenant=acme;ttl=30,user.id={{ probe_id }}", "tracestate": "congo=t61"}}})
            c = make_ctx(session, probe_id="bag")
            with anyio.fail_after(10):
                await probe.fire(c)
            return c

    c = anyio.run(go)
    (request,) = seen
    assert len(request.headers.getall("baggage")) == 1  # one list, not two headers
    value = request.headers["baggage"]
    assert value.startswith("tenant=acme;ttl=30,user.id=bag,")
    # A W3C baggage reader (OpenTelemetry's) sees the request's members and ours.
    got = otel_baggage.get_all(W3CBaggagePropagator().extract({"baggage": value}))
    assert got["tenant"] == "acme;ttl=30" and got["user.id"] == "bag"  # OTel Python keeps properties in the value
    assert got["tracecanary.run_id"] == c.run_id and got["sentry-trace_id"] == c.trace.trace_id
    assert request.headers["tracestate"] == f"tracecanary={c.run_id},congo=t61"
    assert request.headers["traceparent"].startswith(f"00-{c.trace.trace_id}-")
