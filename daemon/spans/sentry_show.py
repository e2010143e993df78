"""``tracecanary trace show TRACE_ID --source sentry``: fetch a trace from Sentry and print its waterfall.

The waterfall is the shared one (``daemon/spans/files.render_waterfall``); below it the errors
Sentry attached to spans (with their event ids, to open them in Sentry) and the trace links, the
Sentry UI link first.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
import anyio

from tracecanary.assertions.spans import Span
from tracecanary.daemon.links import LinkSettings, host_of, render_links
from tracecanary.probes.integrations import SentryIntegration

from .files import render_waterfall
from .sentry import SentryTraceSource


def render_errors(spans: list[Span]) -> list[str]:
    """One line per exception event: span, service, ``Type: message``, level and Sentry event id."""
    lines = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        for ev in span.events:
            if ev.name != "exception":
                continue
            a = ev.attributes
            lines.append(
                f"  ✗ {span.name} ({span.service or '?'}): {a.get('exception.type')!s}: "
                f"{a.get('exception.message')!s} [{a.get('sentry.level', 'error')!s}, event {a.get('sentry.event_id', '?')!s}]"
            )
    return lines


async def show_sentry_trace(
    integration: SentryIntegration,
    trace_id: str,
    links: LinkSettings | Mapping[str, str] | None = None,
    *,
    session: aiohttp.ClientSession | None = None,
    timeout_s: float = 30.0,
    color: bool = False,
) -> str:
    """The waterfall of ``trace_id`` as Sentry holds it, its errors, then the trace links."""
    async def fetch(s: aiohttp.ClientSession) -> list[Span]:
        with anyio.fail_after(timeout_s):
            return await SentryTraceSource(s, integration, request_timeout_s=timeout_s).fetch(trace_id)

    if session is None:
        async with aiohttp.ClientSession() as own:
            spans = await fetch(own)
    else:
        spans = await fetch(session)
    trace_id = trace_id.lower()
    if spans:
        lines = [render_waterfall(spans, color=color).rstrip("\n")]
        errors = render_errors(spans)
        if errors:
            lines += ["errors:", *errors]
    else:
        lines = [f"trace {trace_id}: no spans in Sentry yet (Sentry ingests with a delay; retry shortly)"]
    settings = links if isinstance(links, LinkSettings) else LinkSettings(dict(links or {}))
    rendered = render_links(settings, trace_id=trace_id, org=integration.org, host=host_of(integration.api_url))
    lines += [f"{name}: {url}" for name, url in rendered.items()]
    return "\n".join(lines)
