"""``tracecanary trace show TRACE_ID --source sentry``: fetch a trace from Sentry and print its waterfall.

Uses the shared renderer ``tracecanary.daemon.spans.files.render_waterfall`` when it exists and a
compact one of its own otherwise; appends the trace links (the Sentry UI link first).
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import anyio
from tracecanary.assertions.spans import Span, StatusCode, Trace
from tracecanary.assertions.units import format_duration
from tracecanary.daemon.links import LinkSettings, host_of, render_links
from tracecanary.probes.integrations import SentryIntegration

from .sentry import SentryTraceSource


def _waterfall_renderer() -> Callable[[list[Span]], str]:
    try:
        from tracecanary.daemon.spans.files import render_waterfall  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return render_minimal_waterfall
    return render_waterfall  # type: ignore[no-any-return,unused-ignore]


def render_minimal_waterfall(spans: list[Span]) -> str:
    """Indented tree: start offset, name, service, kind, duration, status, and each exception event."""
    if not spans:
        return "(no spans)"
    trace = Trace.build(spans[0].trace_id, spans)
    t0 = trace.start_ns
    lines = [f"trace {trace.trace_id}  {len(trace)} spans  {format_duration((trace.end_ns - t0) / 1e9)}"]
    stack = [(s, 0) for s in reversed((*trace.roots, *trace.orphans))]
    while stack:
        span, depth = stack.pop()
        status = {StatusCode.OK: "ok", StatusCode.ERROR: "ERROR", StatusCode.UNSET: ""}[span.status_code]
        if span.status_code is StatusCode.ERROR and span.status_message:
            status += f" ({span.status_message})"
        orphan = "  [parent not in trace]" if span in trace.orphans else ""
        lines.append(
            f"{format_duration((span.start_ns - t0) / 1e9):>8} {'  ' * depth}{span.name}"
            f"  [{span.service or '?'}] {span.kind.name.lower()} {format_duration(span.duration_s)} {status}{orphan}".rstrip()
        )
        for ev in span.events:
            if ev.name == "exception":
                lines.append(
                    f"{'':>8} {'  ' * depth}  ! {ev.attributes.get('exception.type')!s}: "
                    f"{ev.attributes.get('exception.message')!s}"
                )
        stack.extend((c, depth + 1) for c in reversed(trace.children(span)))
    return "\n".join(lines)


async def show_sentry_trace(
    integration: SentryIntegration,
    trace_id: str,
    links: LinkSettings | None = None,
    *,
    session: aiohttp.ClientSession | None = None,
    timeout_s: float = 30.0,
) -> str:
    """The waterfall of ``trace_id`` as Sentry holds it, followed by the trace links."""
    async def fetch(s: aiohttp.ClientSession) -> list[Span]:
        with anyio.fail_after(timeout_s):
            return await SentryTraceSource(s, integration, request_timeout_s=timeout_s).fetch(trace_id)

    if session is None:
        async with aiohttp.ClientSession() as own:
            spans = await fetch(own)
    else:
        spans = await fetch(session)
    if spans:
        text = _waterfall_renderer()(spans)
    else:
        text = f"trace {trace_id.lower()}: no spans in Sentry yet (Sentry ingests with a delay; retry shortly)"
    rendered = render_links(
        links or LinkSettings(), trace_id=trace_id.lower(), org=integration.org, host=host_of(integration.api_url)
    )
    return text + "".join(f"\n{name}: {url}" for name, url in rendered.items())
