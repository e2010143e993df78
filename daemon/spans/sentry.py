"""Pull a trace from Sentry's REST API and convert it into the common span model.

``GET {api_url}/api/0/organizations/{org}/trace/{trace_id}/`` (bearer token with ``event:read``) returns
top-level spans with nested ``children`` and the ``errors`` attached to each span (Sentry's
``SerializedSpan``/``SerializedIssue``). Older self-hosted Sentry only has the legacy
``/events-trace/{trace_id}/`` view — transactions without their child spans — so on a 404 there we
switch to it for good and read each transaction's spans from its event
(``/projects/{org}/{project}/events/{event_id}/``).

Sentry ingests with delay, so :meth:`SentryTraceSource.poll` retries with exponential backoff until a
predicate over the spans holds or the deadline passes, sleeping ``Retry-After`` on a 429.

Mapping: service = ``project_slug``; name = the transaction name for transaction (segment) spans and
the description (else the op) for child spans; kind from the op (``http.server`` → server,
``http.client``/``db``/``cache`` → client, ``queue.publish`` → producer, ``queue.process`` → consumer);
status ERROR when the span's ``span.status`` is not ok or an error is attached; each error becomes a
span event ``exception`` with ``exception.type``/``exception.message``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import anyio
from tracecanary.assertions.spans import EMPTY_ATTRS, Span, SpanEvent, SpanKind, StatusCode
from tracecanary.errors import TracecanaryError
from tracecanary.probes.integrations import SentryIntegration

log = logging.getLogger("tracecanary.spans.sentry")

Json = dict[str, Any]
MAX_RESPONSE_BYTES = 32 << 20
_TITLE_RE = re.compile(r"^([A-Za-z_][\w.]*): (.*)$", re.S)
_OK_STATUSES = {"ok", "unknown", "unset", ""}


class SentryApiError(TracecanaryError):
    """Sentry's API answered with an error (or not at all)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SentryAuthError(SentryApiError):
    """401/403: the token is missing, wrong or lacks ``event:read``."""


class SentryRateLimitedError(SentryApiError):
    """429: wait ``retry_after_s`` before the next request."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, 429)
        self.retry_after_s = retry_after_s


def _require(integration: SentryIntegration) -> tuple[str, str]:
    if not integration.org or not integration.token:
        raise SentryApiError("integrations.sentry needs org and token (event:read) for trace lookups")
    return integration.org, integration.token


class SentryTraceSource:
    """Fetch and poll traces from Sentry (or the emulator) through one aiohttp session."""

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
    ) -> None:
        self._org, token = _require(integration)
        self._session = session
        self._api = integration.api_url.rstrip("/") + "/api/0"
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s
        self.request_timeout_s = request_timeout_s
        self.max_retry_after_s = max_retry_after_s
        self._event_fetch_limit = anyio.Semaphore(max_event_fetches)
        self.legacy: bool | None = None
        """None until the first lookup; then whether this Sentry only serves the legacy view."""

    async def _get(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        url = self._api + path
        with anyio.fail_after(self.request_timeout_s):
            try:
                async with self._session.get(url, params=params, headers=self._headers) as resp:
                    body = await resp.content.read(MAX_RESPONSE_BYTES)
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
            except aiohttp.ClientError as e:
                raise SentryApiError(f"GET {path}: {e}") from e
        if status == 429:
            wait_s = min(self.max_retry_after_s, _retry_after_s(retry_after, self.poll_initial_s))
            raise SentryRateLimitedError(f"GET {path}: 429 rate limited, retry after {wait_s:g}s", wait_s)
        if status in (401, 403):
            raise SentryAuthError(f"GET {path}: {status} {body[:200].decode(errors='replace')}", status)
        if status >= 400:
            raise SentryApiError(f"GET {path}: {status} {body[:200].decode(errors='replace')}", status)
        try:
            return json.loads(body)
        except ValueError as e:
            raise SentryApiError(f"GET {path}: invalid JSON: {e}", status) from e

    async def fetch(self, trace_id: str) -> list[Span]:
        """The spans Sentry holds for ``trace_id`` right now (possibly none yet)."""
        trace_id = trace_id.lower()
        if self.legacy is not True:
            try:
                data = await self._get(
                    f"/organizations/{self._org}/trace/{trace_id}/",
                    [("additional_attributes", "span.status")],
                )
            except SentryApiError as e:
                if e.status != 404:
                    raise
                data = None
            if isinstance(data, list):
                self.legacy = False
                return convert_trace(trace_id, data)
            log.info("sentry trace view unavailable, using events-trace org=%s", self._org)
            self.legacy = True
        return await self._fetch_legacy(trace_id)

    async def _fetch_legacy(self, trace_id: str) -> list[Span]:
        data = await self._get(f"/organizations/{self._org}/events-trace/{trace_id}/")
        if not isinstance(data, dict):
            raise SentryApiError(f"events-trace {trace_id}: unexpected shape {type(data).__name__}")
        txns = list(_walk_legacy(data.get("transactions") or []))
        details: dict[str, Json] = {}

        async def one(txn: Json) -> None:
            async with self._event_fetch_limit:
                path = f"/projects/{self._org}/{txn.get('project_slug')}/events/{txn.get('event_id')}/"
                try:
                    details[str(txn.get("event_id"))] = await self._get(path)
                except SentryApiError as e:
                    if e.status != 404:  # an event not in nodestore yet: keep the transaction alone
                        raise

        async with anyio.create_task_group() as tg:
            for txn in txns:
                tg.start_soon(one, txn)
        return convert_legacy(trace_id, txns, details, data.get("orphan_errors") or [])

    async def error_events(self, trace_id: str, limit: int = 100) -> list[Json]:
        """Error events of ``trace_id`` from Discover (``dataset=errors``, ``query=trace:…``) as rows."""
        params = [("dataset", "errors"), ("query", f"trace:{trace_id.lower()}"), ("per_page", str(limit)),
                  ("statsPeriod", "24h"), ("sort", "-timestamp")]
        params += [("field", f) for f in ("id", "title", "message", "level", "timestamp", "trace", "trace.span", "project")]
        data = await self._get(f"/organizations/{self._org}/events/", params)
        rows = data.get("data") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise SentryApiError(f"events: unexpected shape {type(data).__name__}")
        return [r for r in rows if isinstance(r, dict)]

    async def poll(
        self, trace_id: str, until: Callable[[list[Span]], bool], deadline_s: float
    ) -> list[Span]:
        """Fetch until ``until(spans)`` holds or the anyio-monotonic ``deadline_s``; return the last spans.

        Backoff doubles from ``poll_initial_s`` to ``poll_max_s``; a 429 waits its ``Retry-After``;
        transient failures (network, 5xx) are retried; auth errors raise.
        """
        delay_s = self.poll_initial_s
        last: list[Span] = []
        attempt = 0
        while True:
            attempt += 1
            wait_s = delay_s
            try:
                with anyio.move_on_after(max(0.0, deadline_s - anyio.current_time())):
                    last = await self.fetch(trace_id)
                    if until(last):
                        log.debug("sentry trace complete trace_id=%s attempts=%d spans=%d", trace_id, attempt, len(last))
                        return last
                delay_s = min(delay_s * 2, self.poll_max_s)
            except SentryAuthError:
                raise
            except SentryRateLimitedError as e:
                wait_s = e.retry_after_s
                log.info("sentry rate limited trace_id=%s retry_after_s=%g", trace_id, wait_s)
            except (SentryApiError, TimeoutError) as e:
                log.warning("sentry trace fetch failed trace_id=%s error=%s", trace_id, e)
                delay_s = min(delay_s * 2, self.poll_max_s)
            remaining_s = deadline_s - anyio.current_time()
            if remaining_s <= 0:
                return last
            await anyio.sleep(min(wait_s, remaining_s))


def _retry_after_s(header: str | None, default_s: float) -> float:
    try:
        return max(0.0, float(header)) if header else default_s
    except ValueError:
        return default_s


# --- conversion -----------------------------------------------------------------------------------
def kind_from_op(op: str) -> SpanKind:
    """A span kind from Sentry's op (Sentry has no kinds; the op convention carries the same idea)."""
    op = op.lower()
    if op in ("http.server", "websocket.server", "rpc.server", "function.aws", "function.gcp") or op.endswith(".server"):
        return SpanKind.SERVER
    if op.startswith(("queue.publish", "queue.submit", "queue.send")) or op.endswith(".producer"):
        return SpanKind.PRODUCER
    if op.startswith(("queue.process", "queue.receive", "queue.task")) or op.endswith(".consumer"):
        return SpanKind.CONSUMER
    if op.startswith(("http.client", "db", "cache", "rpc.client", "grpc.client", "redis")) or op.endswith(".client"):
        return SpanKind.CLIENT
    return SpanKind.INTERNAL


def split_title(title: str) -> tuple[str, str]:
    """``"ValueError: payment declined"`` → (type, message); a plain message keeps type ``Error``."""
    found = _TITLE_RE.match(title or "")
    return (found.group(1), found.group(2)) if found else ("Error", title or "")


def _exception_event(err: Json, default_time_ns: int) -> SpanEvent:
    title = str(err.get("title") or err.get("description") or "")
    typ, message = split_title(title)
    ts = err.get("start_timestamp", err.get("timestamp"))
    attrs: dict[str, Any] = {
        "exception.type": typ,
        "exception.message": message,
        "sentry.event_id": str(err.get("event_id") or ""),
        "sentry.level": str(err.get("level") or "error"),
    }
    if err.get("issue_id") is not None:
        attrs["sentry.issue_id"] = err["issue_id"]
    if err.get("short_id"):
        attrs["sentry.short_id"] = str(err["short_id"])
    time_ns = round(float(ts) * 1e9) if isinstance(ts, int | float) else default_time_ns
    return SpanEvent(name="exception", time_ns=time_ns, attributes=attrs)


def _status(raw_status: Any, errors: list[Json]) -> tuple[StatusCode, str]:
    if errors:
        return StatusCode.ERROR, str(errors[0].get("title") or errors[0].get("description") or "error")
    status = str(raw_status or "").lower()
    if status == "ok":
        return StatusCode.OK, ""
    if status in _OK_STATUSES:
        return StatusCode.UNSET, ""
    return StatusCode.ERROR, status


def _make_span(trace_id: str, *, span_id: str, parent: Any, name: str, op: str, start_s: float, end_s: float,
               service: str, raw_status: Any, errors: list[Json], attributes: dict[str, Any]) -> Span:
    start_ns, end_ns = round(start_s * 1e9), round(end_s * 1e9)
    code, message = _status(raw_status, errors)
    attrs = {"sentry.op": op, **{k: v for k, v in attributes.items() if v not in (None, "")}}
    if raw_status:
        attrs["sentry.status"] = str(raw_status)
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=str(parent) if parent and parent != "0" * 16 else None,
        name=name or op or "<unnamed>",
        kind=kind_from_op(op),
        start_ns=start_ns,
        end_ns=max(start_ns, end_ns),
        service=service,
        attributes=attrs,
        resource={"service.name": service} if service else EMPTY_ATTRS,
        events=tuple(_exception_event(e, end_ns) for e in errors),
        status_code=code,
        status_message=message,
        scope="sentry",
    )


def convert_trace(trace_id: str, nodes: Iterable[Json]) -> list[Span]:
    """Convert the new trace view (a list of nested span and error nodes) to spans."""
    spans: list[Span] = []
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node.get("event_type") not in (None, "span"):
            # A top-level error belongs to no span Sentry holds: nothing to hang it on.
            log.debug("sentry error without span trace_id=%s event_id=%s", trace_id, node.get("event_id"))
            continue
        stack.extend(node.get("children") or [])
        extra = dict(node.get("additional_attributes") or {})
        raw_status = extra.pop("span.status", None)
        is_txn = bool(node.get("is_transaction"))
        op = str(node.get("op") or "")
        description = str(node.get("description") or "")
        name = (str(node.get("transaction") or "") if is_txn else "") or description or op
        spans.append(_make_span(
            trace_id, span_id=str(node.get("event_id")), parent=node.get("parent_span_id"), name=name, op=op,
            start_s=float(node.get("start_timestamp") or 0), end_s=float(node.get("end_timestamp") or 0),
            service=str(node.get("project_slug") or ""), raw_status=raw_status,
            errors=list(node.get("errors") or []),
            attributes={
                **extra,
                "sentry.description": node.get("description"),
                "sentry.transaction": node.get("transaction"),
                "sentry.transaction_id": node.get("transaction_id"),
                "sentry.is_transaction": is_txn,
                "sentry.sdk_name": node.get("sdk_name"),
            },
        ))
    return spans


def _walk_legacy(txns: Iterable[Json]) -> Iterable[Json]:
    stack = list(txns)
    while stack:
        txn = stack.pop()
        stack.extend(txn.get("children") or [])
        yield txn


def convert_legacy(trace_id: str, txns: list[Json], details: dict[str, Json], orphan_errors: list[Json]) -> list[Span]:
    """Convert legacy transactions (+ their events' spans) to spans; errors hang on their span."""
    errors_by_span: dict[str, list[Json]] = {}
    for txn in txns:
        for err in txn.get("errors") or []:
            errors_by_span.setdefault(str(err.get("span") or txn.get("span_id")), []).append(err)
    for err in orphan_errors:
        errors_by_span.setdefault(str(err.get("span")), []).append(err)
    spans: list[Span] = []
    for txn in txns:
        service = str(txn.get("project_slug") or "")
        op = str(txn.get("transaction.op") or "")
        span_id = str(txn.get("span_id"))
        spans.append(_make_span(
            trace_id, span_id=span_id, parent=txn.get("parent_span_id"), name=str(txn.get("transaction") or ""),
            op=op, start_s=float(txn.get("start_timestamp") or 0), end_s=float(txn.get("timestamp") or 0),
            service=service, raw_status=txn.get("transaction.status"), errors=errors_by_span.pop(span_id, []),
            attributes={"sentry.transaction": txn.get("transaction"), "sentry.transaction_id": txn.get("event_id"),
                        "sentry.is_transaction": True},
        ))
        entries = (details.get(str(txn.get("event_id"))) or {}).get("entries") or []
        for raw in next((e.get("data") or [] for e in entries if e.get("type") == "spans"), []):
            sid = str(raw.get("span_id"))
            child_op = str(raw.get("op") or "")
            spans.append(_make_span(
                trace_id, span_id=sid, parent=raw.get("parent_span_id"),
                name=str(raw.get("description") or child_op), op=child_op,
                start_s=_epoch(raw.get("start_timestamp")), end_s=_epoch(raw.get("timestamp")), service=service,
                raw_status=raw.get("status"), errors=errors_by_span.pop(sid, []),
                attributes={"sentry.description": raw.get("description"), "sentry.transaction": txn.get("transaction"),
                            "sentry.transaction_id": txn.get("event_id"), "sentry.is_transaction": False,
                            **{k: v for k, v in (raw.get("data") or {}).items() if isinstance(v, str | int | float | bool)}},
            ))
    return spans


def _epoch(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        from datetime import datetime

        try:
            return float(value)
        except ValueError:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0
