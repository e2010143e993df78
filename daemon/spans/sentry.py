"""Pull a trace from Sentry's REST API and convert it into the common span model.

``GET {api_url}/api/0/organizations/{org}/trace/{trace_id}/`` (bearer token with ``event:read``) returns
top-level spans with nested ``children`` and the ``errors`` attached to each span (Sentry's
``SerializedSpan``/``SerializedIssue`` in getsentry/sentry ``src/sentry/snuba/trace.py``). Timestamps
come as float epoch seconds or ISO-8601 strings; both are read. An error entry there carries Sentry's
*search message* as its ``description`` (value, type, file, function and culprit run together, e.g.
``card declined PaymentDeclinedError service.py charge POST /checkout``) and no exception type of its
own, so the exception's type and value are read from the error's event
(``/projects/{org}/{project}/events/{event_id}/``: ``metadata.type``/``metadata.value``), fetched once per
error and cached. Older self-hosted Sentry only has the legacy ``/events-trace/{trace_id}/`` view —
transactions without their child spans — so on a 404 there we switch to it for good and read each
transaction's spans from its event too.

Sentry ingests with delay, so :meth:`SentryTraceSource.poll` retries with exponential backoff until a
predicate over the spans holds or the deadline passes, sleeping ``Retry-After`` on a 429.

Mapping: service = ``project_slug``; name = the transaction name for transaction (segment) spans and
the description (else the op) for child spans; kind from the op (``http.server`` → server,
``http.client``/``db``/``cache`` → client, ``queue.publish`` → producer, ``queue.process`` → consumer);
status ERROR when the span's ``span.status`` is not ok or an error is attached; each error becomes a
span event ``exception`` with ``exception.type``/``exception.message`` from its event (until the event
can be read: no type, and Sentry's own text as the message) plus ``sentry.level``/``sentry.culprit``.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import anyio

from tracecanary.assertions.spans import Span
from tracecanary.daemon.spans.pull import (
    ErrorKinds,
    PolledSource,
    PullApiError,
    PullAuthError,
    PullHttp,
    PullRateLimitedError,
)
from tracecanary.daemon.spans.sentry_convert import (
    convert_legacy,
    convert_trace,
    epoch_ns,
    exception_of,
    kind_from_op,
    legacy_errors,
    trace_errors,
    walk_legacy,
)
from tracecanary.integrations import SentryIntegration

log = logging.getLogger("tracecanary.spans.sentry")

Json = dict[str, Any]
MAX_CACHED_EVENTS = 4096
"""Error events kept after reading (they do not change; a trace is polled many times)."""


class SentryApiError(PullApiError):
    """Sentry's API answered with an error (or not at all)."""


class SentryAuthError(SentryApiError, PullAuthError):
    """401/403: the token is missing, wrong or lacks ``event:read``."""


class SentryRateLimitedError(SentryApiError, PullRateLimitedError):
    """429: wait ``retry_after_s`` before the next request."""


_ERRORS = ErrorKinds(api=SentryApiError, auth=SentryAuthError, rate_limited=SentryRateLimitedError)


def _require(integration: SentryIntegration) -> tuple[str, str]:
    if not integration.org or not integration.token:
        raise SentryApiError("integrations.sentry needs org and token (event:read) for trace lookups")
    return integration.org, integration.token


class SentryTraceSource(PolledSource):
    """Fetch and poll traces from Sentry (or the emulator) through one aiohttp session."""

    name = "sentry"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        integration: SentryIntegration,
        *,
        poll_initial_s: float = 1.0,
        poll_max_s: float = 10.0,
        request_timeout_s: float = 10.0,
        max_retry_after_s: float = 60.0,
        max_event_fetches: int = 8,
        stats_period: str = "14d",
    ) -> None:
        self._org, token = _require(integration)
        self._http = PullHttp(session, integration.api_url.rstrip("/") + "/api/0",
                              {"Authorization": f"Bearer {token}", "Accept": "application/json"},
                              request_timeout_s=request_timeout_s, max_retry_after_s=max_retry_after_s,
                              default_retry_s=poll_initial_s, errors=_ERRORS)
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s
        self.request_timeout_s = request_timeout_s
        self.max_retry_after_s = max_retry_after_s
        self._event_fetch_limit = anyio.Semaphore(max_event_fetches)
        self._error_events: dict[str, Json] = {}
        self.stats_period = stats_period
        """How far back Sentry searches (``statsPeriod``); traces older than this are not found."""
        self._ask_status = True
        self.legacy: bool | None = None
        """None until the first lookup; then whether this Sentry only serves the legacy view."""

    async def _get(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        return (await self._http.get(path, params)).json(f"GET {path}", _ERRORS)

    async def fetch(self, trace_id: str, since_ns: int | None = None) -> list[Span]:
        """The spans Sentry holds for ``trace_id`` right now (possibly none yet); Sentry searches
        ``statsPeriod`` back, whatever ``since_ns``."""
        trace_id = trace_id.lower()
        if self.legacy is not True:
            data = await self._fetch_new(trace_id)
            if isinstance(data, list):
                self.legacy = False
                return convert_trace(trace_id, data, await self._error_details(trace_errors(data)))
            log.info("sentry trace view unavailable, using events-trace org=%s", self._org)
            self.legacy = True
        return await self._fetch_legacy(trace_id)

    async def _fetch_new(self, trace_id: str) -> Any:
        """The new trace view, or None on 404 (an older Sentry). Span status is an additional
        attribute; a Sentry that rejects it (400) is asked again without it, once and for good."""
        while True:
            params = [("statsPeriod", self.stats_period)]
            if self._ask_status:
                params.append(("additional_attributes", "span.status"))
            try:
                return await self._get(f"/organizations/{self._org}/trace/{trace_id}/", params)
            except SentryApiError as e:
                if e.status == 400 and self._ask_status:
                    log.info("sentry rejected additional_attributes=span.status; asking without it")
                    self._ask_status = False
                    continue
                if e.status == 404:
                    return None
                raise

    async def _fetch_legacy(self, trace_id: str) -> list[Span]:
        try:
            data = await self._get(
                f"/organizations/{self._org}/events-trace/{trace_id}/",
                [("statsPeriod", self.stats_period), ("detailed", "1")],
            )
        except SentryApiError as e:
            if e.status == 404:  # the legacy view answers 404 while the trace has no transaction
                return []
            raise
        if isinstance(data, list):  # before tracing-without-performance: a bare list of transactions
            data = {"transactions": data, "orphan_errors": []}
        if not isinstance(data, dict):
            raise SentryApiError(f"events-trace {trace_id}: unexpected shape {type(data).__name__}")
        txns = list(walk_legacy(data.get("transactions") or []))
        orphans = list(data.get("orphan_errors") or [])
        details = await self._events([(str(t.get("project_slug")), str(t.get("event_id"))) for t in txns])
        details.update(await self._error_details(legacy_errors(txns, orphans)))
        return convert_legacy(trace_id, txns, details, orphans)

    async def _error_details(self, errors: list[Json]) -> dict[str, Json]:
        """The events of these error entries, by event id: cached ones, and the rest fetched now."""
        wanted = {str(e.get("event_id")): str(e.get("project_slug") or e.get("project") or "")
                  for e in errors if e.get("event_id")}
        missing = [(project, eid) for eid, project in wanted.items() if eid not in self._error_events and project]
        if missing:
            try:
                fetched = await self._events(missing)
            except (SentryAuthError, SentryRateLimitedError):
                raise
            except SentryApiError as e:
                # The spans are there; only the exception types are not (yet): judge with Sentry's text.
                log.warning("sentry error events unreadable errors=%d error=%s", len(missing), e)
                fetched = {}
            if len(self._error_events) + len(fetched) > MAX_CACHED_EVENTS:
                self._error_events.clear()
            self._error_events.update(fetched)
        return {eid: self._error_events[eid] for eid in wanted if eid in self._error_events}

    async def _events(self, keys: list[tuple[str, str]]) -> dict[str, Json]:
        """``GET /projects/{org}/{project}/events/{event_id}/`` for each key, a few at a time. A 404
        (not in nodestore yet) leaves that one out; any other failure is raised (429 → Retry-After)."""
        found: dict[str, Json] = {}
        failures: list[SentryApiError] = []

        async def one(project: str, event_id: str) -> None:
            async with self._event_fetch_limit:
                path = f"/projects/{self._org}/{project}/events/{event_id}/"
                try:
                    event = await self._get(path)
                except SentryApiError as e:
                    if e.status != 404:
                        failures.append(e)
                    return
                except TimeoutError:
                    failures.append(SentryApiError(f"GET {path}: timed out"))
                    return
                if isinstance(event, dict):
                    found[event_id] = event

        async with anyio.create_task_group() as tg:
            for project, event_id in keys:
                tg.start_soon(one, project, event_id)
        if failures:
            # Raised here, not inside the group, so callers see the error itself (429 → Retry-After).
            raise failures[0]
        return found

    async def error_events(self, trace_id: str, limit: int = 100) -> list[Json]:
        """Error events of ``trace_id`` from Discover (``dataset=errors``, ``query=trace:…``) as rows:
        ``title``, ``message`` (Sentry's search text), ``level``, ``error.value`` (the exception values)…"""
        # project=-1: every project the token can see (a trace crosses projects).
        params = [("dataset", "errors"), ("query", f"trace:{trace_id.lower()}"), ("per_page", str(limit)),
                  ("statsPeriod", "24h"), ("sort", "-timestamp"), ("project", "-1")]
        fields = ("id", "title", "message", "level", "timestamp", "trace", "trace.span", "project", "error.value")
        params += [("field", f) for f in fields]
        data = await self._get(f"/organizations/{self._org}/events/", params)
        rows = data.get("data") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise SentryApiError(f"events: unexpected shape {type(data).__name__}")
        return [r for r in rows if isinstance(r, dict)]



__all__ = [
    "SentryApiError", "SentryAuthError", "SentryRateLimitedError", "SentryTraceSource", "convert_legacy",
    "convert_trace", "epoch_ns", "exception_of", "kind_from_op",
]
