"""Pull a trace from Jaeger's query service (``expect.trace.source: jaeger``).

Each fetch asks ``GET {url}/api/v3/traces/{trace_id}`` (OTLP-shaped, see ``otlp_pulled.py``), then the
older ``GET {url}/api/traces/{trace_id}`` (Jaeger's JSON model, see ``jaeger_convert.py``), and uses
whichever returns the trace; a 404 (or an empty answer) from both means "not there yet". Once v1 has
answered while v3 said 404, the query service is taken to lack api_v3 and v1 alone is asked from then on
(``pull.VersionedSource``).
Polling (backoff, 429 ``Retry-After``, 5xx retried) is ``pull.poll_trace``, shared with Sentry and Tempo.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from tracecanary.assertions.spans import Span
from tracecanary.daemon.spans import pull
from tracecanary.daemon.spans.jaeger_convert import convert_traces
from tracecanary.daemon.spans.model import OtlpDecodeError
from tracecanary.daemon.spans.otlp_pulled import decode_pulled, json_objects
from tracecanary.integrations import JaegerIntegration


class JaegerApiError(pull.PullApiError):
    """Jaeger's query service answered with an error (or not at all)."""


class JaegerAuthError(JaegerApiError, pull.PullAuthError):
    """401/403 from Jaeger (or the proxy in front of it)."""


class JaegerRateLimitedError(JaegerApiError, pull.PullRateLimitedError):
    """429 from Jaeger (or the proxy in front of it)."""


_ERRORS = pull.ErrorKinds(api=JaegerApiError, auth=JaegerAuthError, rate_limited=JaegerRateLimitedError)


class JaegerTraceSource(pull.VersionedSource):
    """Fetch and poll traces from a Jaeger query service through one aiohttp session."""

    name = "jaeger"
    newer_api = "api_v3"

    def __init__(self, session: aiohttp.ClientSession, integration: JaegerIntegration, **timing_s: float) -> None:
        """``timing_s``: ``poll_initial_s``, ``poll_max_s``, ``request_timeout_s``, ``max_retry_after_s``."""
        if not integration.url:
            raise JaegerApiError("integrations.jaeger needs url (the query service, e.g. http://jaeger:16686)")
        super().__init__(session, integration.url, {"Accept": "application/json", **integration.headers}, _ERRORS,
                         window_slack_s=integration.query_window, **timing_s)

    def window_params(self, window: pull.Window | None, *, newer: bool) -> list[tuple[str, str]]:
        """api_v3: ``start_time``/``end_time`` as RFC 3339 (Jaeger 1.6x+ reads them in ``getTrace``);
        api/traces: ``start``/``end`` in unix microseconds (the JSON API's time unit)."""
        if window is None:
            return []
        if newer:
            return [("start_time", _rfc3339(window.start_ns)), ("end_time", _rfc3339(window.end_ns))]
        return [("start", str(window.start_ns // 1000)), ("end", str(-(-window.end_ns // 1000)))]

    async def fetch_newer(self, trace_id: str, params: list[tuple[str, str]]) -> list[Span]:
        """``/api/v3/traces/{id}``."""
        path = f"/api/v3/traces/{trace_id}"
        reply = await self._http.get(path, params, passed=(404,))
        if reply.status == 404:
            return []
        spans: list[Span] = []
        try:
            for chunk in json_objects(reply.body):
                spans += self._v3_chunk(chunk, trace_id, path)
        except (ValueError, UnicodeDecodeError, OtlpDecodeError) as e:
            raise JaegerApiError(f"GET {path}: unreadable response: {e}", reply.status) from e
        return spans

    @staticmethod
    def _v3_chunk(chunk: Any, trace_id: str, path: str) -> list[Span]:
        if not isinstance(chunk, Mapping):
            raise JaegerApiError(f"GET {path}: expected an object, got {type(chunk).__name__}")
        error = chunk.get("error")
        if isinstance(error, Mapping):
            code = int(error.get("httpCode") or 0)
            if code == 404:
                return []
            raise JaegerApiError(f"GET {path}: {code} {error.get('message', '')}", code or None)
        result = chunk.get("result")
        return decode_pulled(result, trace_id) if isinstance(result, Mapping) else []

    async def fetch_older(self, trace_id: str, params: list[tuple[str, str]]) -> list[Span]:
        """``/api/traces/{id}``."""
        path = f"/api/traces/{trace_id}"
        reply = await self._http.get(path, params, passed=(404,))
        if reply.status == 404:
            return []
        doc = reply.json(f"GET {path}", _ERRORS)
        if not isinstance(doc, Mapping):
            raise JaegerApiError(f"GET {path}: expected an object with data, got {type(doc).__name__}")
        data = doc.get("data") or []
        errors = [e for e in doc.get("errors") or () if isinstance(e, Mapping)]
        if not data and errors:
            if all(int(e.get("code") or 0) == 404 for e in errors):
                return []
            raise JaegerApiError(f"GET {path}: " + "; ".join(str(e.get("msg", "")) for e in errors),
                                 int(errors[0].get("code") or 0) or None)
        if not isinstance(data, list):
            raise JaegerApiError(f"GET {path}: data is {type(data).__name__}, not a list")
        try:
            return convert_traces(data, trace_id)
        except (TypeError, ValueError, AttributeError) as e:
            raise JaegerApiError(f"GET {path}: unreadable trace: {e}") from e


def _rfc3339(unix_ns: int) -> str:
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


__all__ = ["JaegerApiError", "JaegerAuthError", "JaegerRateLimitedError", "JaegerTraceSource"]
