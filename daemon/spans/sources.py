"""The one place pull sources are built from ``integrations:`` (the engine and ``trace show`` use it)."""

from __future__ import annotations

import aiohttp

from tracecanary.daemon.spans.pull import PullSource
from tracecanary.integrations import Integrations

PULLED = ("sentry", "jaeger", "tempo")
"""The ``expect.trace.source`` values served by pulling."""

NEEDS = {"sentry": "integrations.sentry (org, token)", "jaeger": "integrations.jaeger (url)",
         "tempo": "integrations.tempo (url)"}
"""What each pull source needs configured, as error messages name it."""


def configured(integrations: Integrations) -> list[str]:
    """The pull sources whose integration is configured."""
    names = []
    if integrations.sentry.org and integrations.sentry.token:
        names.append("sentry")
    if integrations.jaeger.url:
        names.append("jaeger")
    if integrations.tempo.url:
        names.append("tempo")
    return names


def build_source(name: str, session: aiohttp.ClientSession, integrations: Integrations,
                 request_timeout_s: float = 10.0) -> PullSource:
    """The pull source ``name`` over ``session``; raises the source's error when it is not configured."""
    if name == "sentry":
        from tracecanary.daemon.spans.sentry import SentryTraceSource

        return SentryTraceSource(session, integrations.sentry, request_timeout_s=request_timeout_s)
    if name == "jaeger":
        from tracecanary.daemon.spans.jaeger import JaegerTraceSource

        return JaegerTraceSource(session, integrations.jaeger, request_timeout_s=request_timeout_s)
    if name == "tempo":
        from tracecanary.daemon.spans.tempo import TempoTraceSource

        return TempoTraceSource(session, integrations.tempo, request_timeout_s=request_timeout_s)
    raise ValueError(f"unknown pull source {name!r} (one of {', '.join(PULLED)})")


__all__ = ["NEEDS", "PULLED", "build_source", "configured"]
