"""`trace show --source sentry` output and trace link templates."""

from __future__ import annotations

import aiohttp
import anyio
import pytest
from pydantic import ValidationError

from tests.fixtures.sentry_service import Service, integration_for
from tests.spans.test_sentry_source import complete, fire
from tracecanary.daemon.cli.traces import show_sentry_trace
from tracecanary.daemon.config.links import LinkSettings, host_of, render_links
from tracecanary.daemon.spans.sentry import SentryTraceSource
from tracecanary.demo.emulators.sentry import SentryEmulator

TID = "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.anyio
async def test_show_prints_tree_errors_and_link(sentry_emulator: SentryEmulator, sentry_service: Service) -> None:
    integration = integration_for(sentry_emulator)
    async with aiohttp.ClientSession() as session:
        ctx, _ = await fire(session, sentry_service, fail=True)
        source = SentryTraceSource(session, integration, poll_initial_s=0.02)
        await source.poll(ctx.trace.trace_id, lambda s: complete(s) and any(x.events for x in s),
                          anyio.current_time() + 10)
        jaeger = LinkSettings({"jaeger": "http://{host}/trace/{trace_id}"})
        text = await show_sentry_trace(integration, ctx.trace.trace_id.upper(), jaeger, session=session)
    lines = text.splitlines()
    assert lines[0].startswith(f"trace {ctx.trace.trace_id} · 4 spans")
    # Waterfall rows in tree order, indented under their parents, with service, kind and status.
    rows = {name: next(line for line in lines if f" {name} (shop)" in line)
            for name in ("POST /checkout", "load-cart", "charge-card", "fraud-check")}
    assert [lines.index(r) for r in rows.values()] == sorted(lines.index(r) for r in rows.values())
    assert "] POST /checkout (shop) server" in rows["POST /checkout"]
    assert "]   charge-card (shop) client" in rows["charge-card"]
    assert "ERROR: PaymentDeclinedError: card 4242 declined" in rows["charge-card"]
    assert "]     fraud-check (shop) internal" in rows["fraud-check"]
    assert "orphan: parent " + ctx.trace.span_id in rows["POST /checkout"]
    (err,) = [line for line in lines if line.startswith("  ✗ ")]
    assert err.startswith("  ✗ charge-card (shop): PaymentDeclinedError: card 4242 declined [error, event ")
    assert lines[-2] == f"sentry: https://acme.sentry.io/explore/traces/trace/{ctx.trace.trace_id}"
    assert lines[-1] == f"jaeger: http://{host_of(sentry_emulator.base_url)}/trace/{ctx.trace.trace_id}"


@pytest.mark.anyio
async def test_show_unknown_trace_says_so(sentry_emulator: SentryEmulator) -> None:
    text = await show_sentry_trace(integration_for(sentry_emulator), TID.upper())
    assert text.splitlines()[0].startswith(f"trace {TID}: no spans in Sentry yet")


def test_links_render_defaults_templates_and_skip_missing() -> None:
    settings = LinkSettings({
        "tempo": "https://grafana.local/explore?traceId={trace_id}",
        "run": "http://{host}/runs/{run_id}?probe={probe_id}",
    })
    links = render_links(settings, trace_id=TID, run_id="r 1", probe_id="orders", org="acme", host="canary.local:8080")
    assert links == {
        "sentry": f"https://acme.sentry.io/explore/traces/trace/{TID}",
        "tempo": f"https://grafana.local/explore?traceId={TID}",
        "run": "http://canary.local:8080/runs/r%201?probe=orders",
    }
    # No org: no sentry link; no host: the template needing it is skipped, not half-rendered.
    assert render_links(settings, trace_id=TID, run_id="r1") == {"tempo": f"https://grafana.local/explore?traceId={TID}"}
    self_hosted = LinkSettings({"sentry": "https://{host}/organizations/{org}/explore/traces/trace/{trace_id}"})
    assert render_links(self_hosted, trace_id=TID, org="acme", host=host_of("https://sentry.corp:9000/")) == {
        "sentry": f"https://sentry.corp:9000/organizations/acme/explore/traces/trace/{TID}"
    }


def test_links_reject_unknown_placeholder() -> None:
    with pytest.raises(ValidationError, match=r"link 'jaeger': unknown placeholder \{traceid\}"):
        LinkSettings.model_validate({"jaeger": "http://j/trace/{traceid}"})
