"""What every pull source (Sentry, Jaeger, Tempo) shares: its errors, a bounded GET, and the polling loop.

A pull source answers ``fetch(trace_id)`` with the spans its backend holds right now (possibly none:
backends ingest with a delay). :func:`poll_trace` fetches until a predicate over those spans holds or
the deadline passes: the wait doubles from ``poll_initial_s`` to ``poll_max_s``, a 429 waits its
``Retry-After`` (capped), network failures and 5xx are retried and told to ``on_error``, auth errors
(401/403) are raised. The trace judge (``run/judge.py``) re-judges the whole fetched trace each time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import anyio

from tracecanary.assertions.spans import Span
from tracecanary.errors import TracecanaryError

log = logging.getLogger("tracecanary.spans.pull")

MAX_RESPONSE_BYTES = 32 << 20
"""A trace response larger than this is refused (a clear error, not an unbounded read)."""


class PullApiError(TracecanaryError):
    """A trace backend answered with an error (or not at all); ``status`` is the HTTP status if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PullAuthError(PullApiError):
    """401/403: the credentials are missing or wrong; polling stops at once."""


class PullRateLimitedError(PullApiError):
    """429: wait ``retry_after_s`` before the next request."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, 429)
        self.retry_after_s = retry_after_s


class PullSource(Protocol):
    """A backend spans are pulled from (``expect.trace.source: sentry | jaeger | tempo``)."""

    name: str
    """The ``expect.trace.source`` value this source serves."""

    observe: Callable[[str, str], None] | None
    """Told (source name, outcome) after every fetch: found, not_found, rate_limited, auth, error."""

    async def fetch(self, trace_id: str, since_ns: int | None = None) -> list[Span]:
        """The spans the backend holds for ``trace_id`` now (empty: not there yet); ``since_ns`` (the
        trigger, unix ns) lets a backend that takes a time window search only around it."""
        ...

    async def poll(
        self, trace_id: str, until: Callable[[list[Span]], bool], deadline_s: float,
        on_error: Callable[[Exception], None] | None = None, since_ns: int | None = None,
    ) -> list[Span]:
        """Fetch until ``until(spans)`` holds or the anyio-monotonic ``deadline_s``; the last spans."""
        ...


@dataclass(frozen=True)
class ErrorKinds:
    """The exception classes one source raises (its own subclasses of the pull errors)."""

    api: type[PullApiError] = PullApiError
    auth: type[PullApiError] = PullAuthError
    rate_limited: type[PullRateLimitedError] = PullRateLimitedError


@dataclass(frozen=True)
class Reply:
    """A backend's answer: status, body (bounded) and content type."""

    status: int
    body: bytes
    content_type: str

    def json(self, label: str, errors: ErrorKinds = ErrorKinds()) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise errors.api(f"{label}: invalid JSON: {e}", self.status) from e


@dataclass
class PullHttp:
    """GETs against one backend: shared headers, a deadline per request, bounded bodies, errors by status.

    A 429 raises ``rate_limited`` (``Retry-After`` seconds, capped at ``max_retry_after_s``; default
    ``default_retry_s``); 401/403 raise ``auth``; other statuses ≥ 400 raise ``api`` with the status
    unless listed in ``passed`` (e.g. 404 when the caller reads it as "not yet").
    """

    session: aiohttp.ClientSession
    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    request_timeout_s: float = 10.0
    max_retry_after_s: float = 60.0
    default_retry_s: float = 1.0
    errors: ErrorKinds = field(default_factory=ErrorKinds)

    async def get(self, path: str, params: Sequence[tuple[str, str]] | None = None, *,
                  headers: Mapping[str, str] | None = None, passed: Sequence[int] = ()) -> Reply:
        url = self.base_url.rstrip("/") + path
        merged = {**self.headers, **(headers or {})}
        with anyio.fail_after(self.request_timeout_s):
            try:
                async with self.session.get(url, params=list(params or ()), headers=merged) as resp:
                    body = await _read_bounded(resp, path, self.errors)
                    status, retry_after = resp.status, resp.headers.get("Retry-After")
                    content_type = resp.headers.get("Content-Type", "")
            except aiohttp.ClientError as e:
                raise self.errors.api(f"GET {path}: {e}") from e
        if status in passed:
            return Reply(status, body, content_type)
        if status == 429:
            wait_s = min(self.max_retry_after_s, retry_after_s(retry_after, self.default_retry_s))
            raise self.errors.rate_limited(f"GET {path}: 429 rate limited, retry after {wait_s:g}s", wait_s)
        if status in (401, 403):
            raise self.errors.auth(f"GET {path}: {status} {_excerpt(body)}", status)
        if status >= 400:
            raise self.errors.api(f"GET {path}: {status} {_excerpt(body)}", status)
        return Reply(status, body, content_type)


def _excerpt(body: bytes) -> str:
    return body[:200].decode(errors="replace")


async def _read_bounded(resp: aiohttp.ClientResponse, path: str, errors: ErrorKinds) -> bytes:
    # StreamReader.read(n) returns what is buffered (often 64 KiB), not n bytes: read to EOF, capped.
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        total += len(chunk)
        if total > MAX_RESPONSE_BYTES:
            raise errors.api(f"GET {path}: response over {MAX_RESPONSE_BYTES} bytes", resp.status)
        chunks.append(chunk)
    return b"".join(chunks)


def retry_after_s(header: str | None, default_s: float) -> float:
    """``Retry-After`` in seconds (the delta-seconds form); ``default_s`` when absent or unreadable."""
    try:
        return max(0.0, float(header)) if header else default_s
    except ValueError:
        return default_s


FETCH_OUTCOMES = ("found", "not_found", "rate_limited", "auth", "error")
"""What one fetch from a pull source came to (the ``outcome`` label of ``tracecanary_trace_source_fetches``)."""


def _ignore(name: str, outcome: str) -> None:
    pass


async def poll_trace(
    name: str, fetch: Callable[[str], Awaitable[list[Span]]], trace_id: str,
    until: Callable[[list[Span]], bool], deadline_s: float, *, poll_initial_s: float, poll_max_s: float,
    on_error: Callable[[Exception], None] | None = None, observe: Callable[[str, str], None] | None = None,
) -> list[Span]:
    """Fetch until ``until(spans)`` holds or the anyio-monotonic ``deadline_s``; return the last spans.

    Backoff doubles from ``poll_initial_s`` to ``poll_max_s``; a 429 waits its ``Retry-After``;
    transient failures (network, 5xx, timeouts) are retried, each told to ``on_error``; auth errors
    raise. ``until`` sees every successful fetch; ``observe(name, outcome)`` every fetch's outcome
    (one of :data:`FETCH_OUTCOMES`).
    """
    told = observe or _ignore
    delay_s = poll_initial_s
    last: list[Span] = []
    attempt = 0
    while True:
        attempt += 1
        wait_s = delay_s
        try:
            with anyio.move_on_after(max(0.0, deadline_s - anyio.current_time())):
                last = await fetch(trace_id)
                told(name, "found" if last else "not_found")
                if until(last):
                    log.debug("%s trace complete trace_id=%s attempts=%d spans=%d", name, trace_id, attempt, len(last))
                    return last
            delay_s = min(delay_s * 2, poll_max_s)
        except PullAuthError:
            told(name, "auth")
            raise
        except PullRateLimitedError as e:
            told(name, "rate_limited")
            wait_s = e.retry_after_s
            log.info("%s rate limited trace_id=%s retry_after_s=%g", name, trace_id, wait_s)
            if on_error is not None:
                on_error(e)
        except (PullApiError, TimeoutError) as e:
            told(name, "error")
            log.warning("%s trace fetch failed trace_id=%s error=%s", name, trace_id, e)
            delay_s = min(delay_s * 2, poll_max_s)
            if on_error is not None:
                on_error(e)
        remaining_s = deadline_s - anyio.current_time()
        if remaining_s <= 0:
            return last
        await anyio.sleep(min(wait_s, remaining_s))


class PolledSource:
    """Base of the pull sources: ``poll`` over the subclass's ``fetch`` with the shared loop."""

    name: str
    poll_initial_s: float = 1.0
    poll_max_s: float = 10.0
    observe: Callable[[str, str], None] | None = None
    """Told (source name, outcome) after every fetch of a poll (the engine counts them as a metric)."""

    async def fetch(self, trace_id: str, since_ns: int | None = None) -> list[Span]:
        """The spans the backend holds for ``trace_id`` now (empty: not there yet)."""
        raise NotImplementedError

    async def poll(
        self, trace_id: str, until: Callable[[list[Span]], bool], deadline_s: float,
        on_error: Callable[[Exception], None] | None = None, since_ns: int | None = None,
    ) -> list[Span]:
        """Fetch until ``until(spans)`` holds or the deadline (:func:`poll_trace`: backoff, Retry-After)."""

        async def fetch(trace_id: str) -> list[Span]:
            return await self.fetch(trace_id, since_ns)

        return await poll_trace(self.name, fetch, trace_id, until, deadline_s, poll_initial_s=self.poll_initial_s,
                                poll_max_s=self.poll_max_s, on_error=on_error, observe=self.observe)


@dataclass(frozen=True)
class Window:
    """The time a trace is searched in: [trigger − slack, now + slack], unix nanoseconds."""

    start_ns: int
    end_ns: int


class VersionedSource(PolledSource):
    """A backend with a newer and an older trace-by-id API (Jaeger api_v3 and api/traces; Tempo v2 and v1).

    Each fetch asks the newer one, then the older, and uses whichever returns the trace (404 or empty
    from both: not there yet). Once the older has answered while the newer did not find the trace, the
    backend is taken to lack the newer API, and only the older is asked from then on.
    With ``window_slack_s`` and a known trigger time, each query carries a time window (each API's own
    parameters, :meth:`window_params`) so the backend searches only the blocks around the run, not
    its whole retention; a backend that does not know the parameters ignores them.
    """

    newer_api = "newer API"

    def __init__(self, session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], errors: ErrorKinds, *,
                 poll_initial_s: float = 1.0, poll_max_s: float = 10.0, request_timeout_s: float = 10.0,
                 max_retry_after_s: float = 60.0, window_slack_s: float | None = None) -> None:
        self._http = PullHttp(session, url, headers, request_timeout_s=request_timeout_s,
                              max_retry_after_s=max_retry_after_s, default_retry_s=poll_initial_s, errors=errors)
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s
        self.window_slack_s = window_slack_s
        self.newer: bool | None = None
        """None until known; False once the older API served a trace the newer did not find."""

    def window(self, since_ns: int | None) -> Window | None:
        """The search window for a run triggered at ``since_ns`` (None: no trigger known or no slack set)."""
        if since_ns is None or self.window_slack_s is None:
            return None
        slack_ns = int(self.window_slack_s * 1e9)
        end_ns = time.time_ns() + slack_ns
        return Window(min(since_ns - slack_ns, end_ns), end_ns)

    def window_params(self, window: Window | None, *, newer: bool) -> list[tuple[str, str]]:
        """The query parameters that carry ``window`` to the newer or the older API."""
        return []

    async def fetch_newer(self, trace_id: str, params: list[tuple[str, str]]) -> list[Span]:
        raise NotImplementedError

    async def fetch_older(self, trace_id: str, params: list[tuple[str, str]]) -> list[Span]:
        raise NotImplementedError

    async def fetch(self, trace_id: str, since_ns: int | None = None) -> list[Span]:
        trace_id = trace_id.lower()
        window = self.window(since_ns)
        if self.newer is not False:
            spans = await self.fetch_newer(trace_id, self.window_params(window, newer=True))
            if spans:
                self.newer = True
                return spans
        spans = await self.fetch_older(trace_id, self.window_params(window, newer=False))
        if spans and self.newer is None:
            log.info("%s: the %s did not find a trace the older one has; asking the older only from now on",
                     self.name, self.newer_api)
            self.newer = False
        return spans


__all__ = [
    "FETCH_OUTCOMES", "MAX_RESPONSE_BYTES", "ErrorKinds", "PolledSource", "PullApiError", "PullAuthError", "PullHttp", "PullRateLimitedError",
    "PullSource", "Reply", "VersionedSource", "Window", "poll_trace", "retry_after_s",
]
