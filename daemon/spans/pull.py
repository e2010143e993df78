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

    async def fetch(self, trace_id: str) -> list[Span]:
        """The spans the backend holds for ``trace_id`` now (empty: not there yet)."""
        ...

    async def poll(
        self, trace_id: str, until: Callable[[list[Span]], bool], deadline_s: float,
        on_error: Callable[[Exception], None] | None = None,
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


async def poll_trace(
    name: str, fetch: Callable[[str], Awaitable[list[Span]]], trace_id: str,
    until: Callable[[list[Span]], bool], deadline_s: float, *, poll_initial_s: float, poll_max_s: float,
    on_error: Callable[[Exception], None] | None = None,
) -> list[Span]:
    """Fetch until ``until(spans)`` holds or the anyio-monotonic ``deadline_s``; return the last spans.

    Backoff doubles from ``poll_initial_s`` to ``poll_max_s``; a 429 waits its ``Retry-After``;
    transient failures (network, 5xx, timeouts) are retried, each told to ``on_error``; auth errors
    raise. ``until`` sees every successful fetch.
    """
    delay_s = poll_initial_s
    last: list[Span] = []
    attempt = 0
    while True:
        attempt += 1
        wait_s = delay_s
        try:
            with anyio.move_on_after(max(0.0, deadline_s - anyio.current_time())):
                last = await fetch(trace_id)
                if until(last):
                    log.debug("%s trace complete trace_id=%s attempts=%d spans=%d", name, trace_id, attempt, len(last))
                    return last
            delay_s = min(delay_s * 2, poll_max_s)
        except PullAuthError:
            raise
        except PullRateLimitedError as e:
            wait_s = e.retry_after_s
            log.info("%s rate limited trace_id=%s retry_after_s=%g", name, trace_id, wait_s)
            if on_error is not None:
                on_error(e)
        except (PullApiError, TimeoutError) as e:
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

    async def fetch(self, trace_id: str) -> list[Span]:
        """The spans the backend holds for ``trace_id`` now (empty: not there yet)."""
        raise NotImplementedError

    async def poll(
        self, trace_id: str, until: Callable[[list[Span]], bool], deadline_s: float,
        on_error: Callable[[Exception], None] | None = None,
    ) -> list[Span]:
        """Fetch until ``until(spans)`` holds or the deadline (:func:`poll_trace`: backoff, Retry-After)."""
        return await poll_trace(self.name, self.fetch, trace_id, until, deadline_s, poll_initial_s=self.poll_initial_s,
                                poll_max_s=self.poll_max_s, on_error=on_error)


class VersionedSource(PolledSource):
    """A backend with a newer and an older trace-by-id API (Jaeger api_v3 and api/traces; Tempo v2 and v1).

    Each fetch asks the newer one, then the older, and uses whichever returns the trace (404 or empty
    from both: not there yet). Once the older has answered while the newer did not find the trace, the
    backend is taken to lack the newer API, and only the older is asked from then on.
    """

    newer_api = "newer API"

    def __init__(self, session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], errors: ErrorKinds, *,
                 poll_initial_s: float = 1.0, poll_max_s: float = 10.0, request_timeout_s: float = 10.0,
                 max_retry_after_s: float = 60.0) -> None:
        self._http = PullHttp(session, url, headers, request_timeout_s=request_timeout_s,
                              max_retry_after_s=max_retry_after_s, default_retry_s=poll_initial_s, errors=errors)
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s
        self.newer: bool | None = None
        """None until known; False once the older API served a trace the newer did not find."""

    async def fetch_newer(self, trace_id: str) -> list[Span]:
        raise NotImplementedError

    async def fetch_older(self, trace_id: str) -> list[Span]:
        raise NotImplementedError

    async def fetch(self, trace_id: str) -> list[Span]:
        trace_id = trace_id.lower()
        if self.newer is not False:
            spans = await self.fetch_newer(trace_id)
            if spans:
                self.newer = True
                return spans
        spans = await self.fetch_older(trace_id)
        if spans and self.newer is None:
            log.info("%s: the %s did not find a trace the older one has; asking the older only from now on",
                     self.name, self.newer_api)
            self.newer = False
        return spans


__all__ = [
    "MAX_RESPONSE_BYTES", "ErrorKinds", "PolledSource", "PullApiError", "PullAuthError", "PullHttp", "PullRateLimitedError",
    "PullSource", "Reply", "VersionedSource", "poll_trace", "retry_after_s",
]
