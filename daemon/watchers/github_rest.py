"""The GitHub watcher's REST side: polling from the window's start, and the one reconcile of webhook mode.

gidgethub on aiohttp (``getiter`` follows ``Link``) through ``PacedGitHubAPI``, which
- sends conditional requests: an ETag cache per watch, so an unchanged list is a ``304 Not Modified``
  that does not count against the rate limit (docs.github.com/rest/using-the-rest-api/
  best-practices-for-using-the-rest-api, "Use conditional requests if appropriate");
- reads ``x-ratelimit-remaining``/``x-ratelimit-reset`` from every response (304s included), waits out an
  exhausted budget when the wait fits the window and, below a tenth of it, spreads polls over what is left;
- backs off 403/429 secondary limits for ``retry-after`` (docs.github.com/rest/using-the-rest-api/
  rate-limits-for-the-rest-api), never past the window.
5xx answers, dropped connections and timeouts are transient: retried after ``WatchContext.backoff``;
when they last until the window closes, the watch reports the last error instead of a verdict.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anyio
import gidgethub
from gidgethub.aiohttp import GitHubAPI

from tracecanary.assertions.side_effects import GithubEffect, judge_github
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.watchers.base import Attempts, WatchContext

log = logging.getLogger("tracecanary.watchers.github")

KINDS = ("comments", "review_comments", "reviews", "check_runs")
CLOCK_SKEW_S = 1.0
MAX_ITEMS = 3000
REQUEST_TIMEOUT_S = 60.0
RESET_MARGIN_S = 1.0
"""x-ratelimit-reset is in whole seconds and GitHub's clock is not ours: wait this much past it."""

Observed = dict[str, list[dict[str, Any]]]


class PacedGitHubAPI(GitHubAPI):
    """gidgethub's aiohttp client with an ETag cache that respects primary and secondary rate limits
    within a deadline (``deadline_s``, anyio time)."""

    def __init__(self, session: aiohttp.ClientSession, requester: str, *, oauth_token: str | None,
                 base_url: str, deadline_s: float, max_backoffs: int = 5, default_backoff_s: float = 60.0) -> None:
        super().__init__(session, requester, oauth_token=oauth_token, base_url=base_url, cache={})
        self.deadline_s = deadline_s
        self.max_backoffs = max_backoffs
        self.default_backoff_s = default_backoff_s
        self.backoffs = self.requests = self.not_modified = 0
        self.limit: int | None = None
        self.remaining: int | None = None
        self.reset_epoch_s: float | None = None

    async def _request(self, method: str, url: str, headers: Mapping[str, str],
                       body: bytes = b"") -> tuple[int, Mapping[str, str], bytes]:
        # gidgethub.abc.GitHubAPI's documented extension point; gidgethub itself does not read the
        # rate-limit headers of a 304, and its own count goes down by one per request, 304s included.
        status, response_headers, data = await super()._request(method, url, headers, body)
        self.requests += 1
        self.not_modified += status == 304
        lower = {k.lower(): v for k, v in response_headers.items()}
        try:
            self.limit = int(lower["x-ratelimit-limit"])
            self.remaining = int(lower["x-ratelimit-remaining"])
            self.reset_epoch_s = float(lower["x-ratelimit-reset"])
        except (KeyError, ValueError):
            pass
        return status, response_headers, data

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))  # anyio refuses negative delays

    def _affordable(self, wait_s: float) -> bool:
        return anyio.current_time() + wait_s < self.deadline_s

    def reset_in_s(self) -> float:
        return max(0.0, (self.reset_epoch_s or 0.0) - datetime.now(UTC).timestamp())

    def pace_s(self) -> float:
        """0 while the budget is healthy; below a tenth of it, the gap between polls that makes what is
        left last until it resets (its reset when nothing is left)."""
        if self.remaining is None or self.reset_epoch_s is None or self.remaining > max(10, (self.limit or 0) // 10):
            return 0.0
        return self.reset_in_s() / self.remaining if self.remaining > 0 else self.reset_in_s()

    async def manage_rate_limit(self, *, method: str, url: str) -> None:
        if self.remaining != 0:
            return
        wait_s = self.reset_in_s() + RESET_MARGIN_S
        if self._affordable(wait_s):
            log.info("github rate limit exhausted waiting_s=%.1f", wait_s)
            await anyio.sleep(wait_s)

    async def handle_rate_limit_error(self, *, method: str, url: str, exception: gidgethub.HTTPException,
                                      attempt: int) -> bool:
        if exception.status_code not in (403, 429) or attempt > self.max_backoffs:
            return False
        headers = {k.lower(): v for k, v in exception.headers.items()}
        if "retry-after" in headers:
            wait_s = max(0.0, float(headers["retry-after"]))
        elif headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
            wait_s = max(0.0, float(headers["x-ratelimit-reset"]) - datetime.now(UTC).timestamp())
        elif exception.status_code == 429 or "secondary" in str(exception).lower():
            wait_s = self.default_backoff_s * 2 ** (attempt - 1)
        else:
            return False  # a plain 403 (permissions) is not a rate limit
        if not self._affordable(wait_s):
            return False
        self.backoffs += 1
        log.info("github rate limited status=%s waiting_s=%.1f attempt=%d", int(exception.status_code), wait_s, attempt)
        await anyio.sleep(wait_s)
        return True


def client(ctx: WatchContext, end_s: float) -> PacedGitHubAPI:
    cfg = ctx.probe.integrations.github
    return PacedGitHubAPI(ctx.probe.session, "tracecanary", oauth_token=cfg.token, base_url=cfg.base_url,
                          deadline_s=end_s)


def transient(error: BaseException) -> str | None:
    """What went wrong, when retrying may help (5xx, rate limits, connection errors, timeouts); else None."""
    if isinstance(error, gidgethub.RateLimitExceeded):
        return f"403 rate limit exhausted until {error.rate_limit.reset_datetime:%H:%M:%S} UTC"
    if isinstance(error, gidgethub.GitHubBroken):
        return f"{int(error.status_code)} {error}".strip()
    if isinstance(error, gidgethub.BadRequest) and int(error.status_code) in (403, 429):
        return f"{int(error.status_code)} {error}".strip()
    if isinstance(error, aiohttp.ClientError):
        return f"{type(error).__name__}: {error}".rstrip(": ")
    if isinstance(error, TimeoutError):
        return "no answer within the request timeout"
    return None


def empty() -> Observed:
    return {k: [] for k in KINDS}


def settled(effect: GithubEffect, observed: Observed) -> bool:
    """Positive effects end as soon as they hold; absent ones as soon as they are violated."""
    findings = judge_github(effect, observed)
    return bool(findings) if effect.absent else not findings


async def poll(effect: GithubEffect, ctx: WatchContext, number: int, end_s: float) -> Observed | Finding:
    """Poll from now (the window's start) every ``ctx.poll_interval_s`` until ``effect`` settles or ``end_s``."""
    gh = client(ctx, end_s)
    attempts = Attempts(ctx.backoff)
    observed = empty()
    target = f"{effect.repo}#{number}"
    while True:
        started_s = anyio.current_time()
        try:
            with anyio.fail_after(max(0.5, min(REQUEST_TIMEOUT_S, ctx.probe.remaining_s()))):
                observed = await fetch(gh, effect, number, ctx.probe.trigger_ns / 1e9)
            attempts.ok()
            next_s = started_s + max(ctx.poll_interval_s, gh.pace_s())
        except (gidgethub.GitHubException, aiohttp.ClientError, TimeoutError) as e:
            why = transient(e)
            if why is None:
                status = int(getattr(e, "status_code", 0)) or None
                return Finding(type="side_effect", severity=Verdict.ERROR, path="side_effects.github",
                               message=f"GitHub polling of {target} failed: {f'{status} ' if status else ''}{e}",
                               observed=status)
            next_s = anyio.current_time() + attempts.failed(why)
            log.warning("github poll failed repo=%s error=%s retry_in_s=%.2f", effect.repo, why,
                        next_s - anyio.current_time())
        now = anyio.current_time()
        if settled(effect, observed) or now >= end_s:
            break
        await anyio.sleep(max(0.0, min(next_s, end_s) - now))
    ctx.probe.log("github polled", requests=gh.requests, not_modified=gh.not_modified, failed=attempts.failures,
                  ratelimit_remaining=gh.remaining)
    # the last look failed and what was seen before it does not decide the effect: the answer is unknown
    if attempts.failing and not settled(effect, observed):
        return attempts.finding("side_effects.github", f"GitHub polling of {target}")
    return observed


async def reconcile(effect: GithubEffect, ctx: WatchContext, number: int, observed: Observed,
                    end_s: float) -> tuple[Observed, str | None]:
    """One REST look before the window closes (transient failures retried until ``end_s``): the merged
    view, and the last error when no look succeeded."""
    gh = client(ctx, end_s)
    attempts = Attempts(ctx.backoff)
    while True:
        try:
            with anyio.fail_after(max(0.1, min(REQUEST_TIMEOUT_S, end_s - anyio.current_time()))):
                fetched = await fetch(gh, effect, number, ctx.probe.trigger_ns / 1e9)
            break
        except (gidgethub.GitHubException, aiohttp.ClientError, TimeoutError) as e:
            why = transient(e) or f"{getattr(e, 'status_code', '')} {e}".strip()
            delay_s = attempts.failed(why)
            log.warning("github reconcile failed repo=%s error=%s", effect.repo, why)
            if transient(e) is None or anyio.current_time() + delay_s >= end_s:
                return observed, why
            await anyio.sleep(delay_s)
    merged = empty()
    for kind in KINDS:
        by_id = {item.get("id"): item for item in [*observed[kind], *fetched[kind]]}
        merged[kind] = list(by_id.values())
    return merged, None


def _since(item: dict[str, Any], since_s: float) -> bool:
    stamp = item.get("submitted_at") or item.get("created_at") or item.get("completed_at") or item.get("started_at")
    if not stamp:
        return True
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() >= int(since_s - CLOCK_SKEW_S)
    except ValueError:
        return True


async def _collect(gh: GitHubAPI, url: str, since_s: float, iterable_key: str | None = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    async for item in gh.getiter(url, iterable_key=iterable_key):
        if _since(item, since_s):
            items.append(item)
        if len(items) >= MAX_ITEMS:
            break
    return items


async def fetch(gh: GitHubAPI, effect: GithubEffect, number: int, since_s: float) -> Observed:
    """What the PR/issue holds now (REST shapes), limited to what ``effect`` asks about."""
    base = f"/repos/{effect.repo}"
    observed = empty()
    wants_comment = effect.comment is not None or (effect.review is None and effect.check_run is None)
    if wants_comment:
        observed["comments"] = await _collect(gh, f"{base}/issues/{number}/comments?per_page=100", since_s)
    if effect.pull is None:
        return observed
    if wants_comment:
        observed["review_comments"] = await _collect(gh, f"{base}/pulls/{number}/comments?per_page=100", since_s)
    if effect.review is not None:
        observed["reviews"] = await _collect(gh, f"{base}/pulls/{number}/reviews?per_page=100", since_s)
    if effect.check_run is not None:
        pr = await gh.getitem(f"{base}/pulls/{number}")
        sha = pr["head"]["sha"]
        observed["check_runs"] = await _collect(gh, f"{base}/commits/{sha}/check-runs?per_page=100", since_s,
                                                iterable_key="check_runs")
    return observed
