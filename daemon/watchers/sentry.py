"""The ``sentry`` side-effect watcher: did the system report an error to Sentry for this run's trace?

Polls Discover (``GET /api/0/organizations/{org}/events/?dataset=errors&query=trace:{trace_id}``) every
``ctx.poll_interval_s`` (longer when Sentry answers 429 with Retry-After) and judges the rows with
``assertions.side_effects.judge_sentry``. A positive expectation passes on the first matching event
and fails when its window closes; ``absent: true`` fails at once on a matching event and passes
when the window closes without one.
"""

from __future__ import annotations

import logging

import anyio

from tracecanary.assertions.side_effects import SentryEffect, judge_sentry
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.spans.sentry import (
    SentryApiError,
    SentryAuthError,
    SentryRateLimitedError,
    SentryTraceSource,
)
from tracecanary.daemon.watchers.base import WatchContext

log = logging.getLogger("tracecanary.watchers.sentry")


async def watch_sentry(effect: SentryEffect, ctx: WatchContext) -> list[Finding]:
    """Watch Sentry for an error event of this trace until the effect's window closes."""
    integration = ctx.probe.integrations.sentry
    try:
        client = SentryTraceSource(ctx.probe.session, integration, request_timeout_s=max(1.0, ctx.poll_interval_s * 5))
    except SentryApiError as e:
        return [Finding(type="side_effect", severity=Verdict.ERROR, path="sentry", message=f"sentry: {e}")]
    trace_id = ctx.probe.trace.trace_id
    end_s = ctx.window_end_s(effect.within)
    events: list[dict[str, object]] = []
    polls = 0
    while True:
        wait_s = ctx.poll_interval_s
        try:
            with anyio.move_on_after(max(0.0, end_s - anyio.current_time()) + ctx.poll_interval_s):
                events = await client.error_events(trace_id)
                polls += 1
                findings = judge_sentry(effect, events)
                ctx.saw(events)
                if effect.absent and findings:
                    return findings
                if not effect.absent and not findings:
                    ctx.probe.log("sentry event seen", trace_id=trace_id, polls=polls)
                    return []
        except SentryAuthError as e:
            return [Finding(type="side_effect", severity=Verdict.ERROR, path="sentry", message=f"sentry: {e}")]
        except SentryRateLimitedError as e:
            wait_s = max(wait_s, e.retry_after_s)
            log.info("sentry rate limited trace_id=%s retry_after_s=%g", trace_id, e.retry_after_s)
        except (SentryApiError, TimeoutError) as e:
            log.warning("sentry events poll failed trace_id=%s error=%s", trace_id, e)
        remaining_s = end_s - anyio.current_time()
        if remaining_s <= 0:
            break
        await anyio.sleep(min(wait_s, remaining_s))
    ctx.probe.log("sentry window closed", trace_id=trace_id, polls=polls, events=len(events))
    ctx.saw(events)
    return judge_sentry(effect, events)
