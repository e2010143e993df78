"""Watch for a GitHub comment, review or check run on a PR/issue: webhook events, else REST polling.

Event-driven: ``daemon/web/github_hook.py`` verifies deliveries to ``/hooks/github`` and publishes them
into ``Services.github_events``; the watcher subscribes (with replay) to the repository and number.
Polling fallback: gidgethub on aiohttp (``getiter`` follows ``Link``), through ``PacedGitHubAPI``
which waits out an exhausted ``x-ratelimit`` budget and backs off 403/429 secondary limits using
``retry-after``, never past the run's deadline. Judgement is ``assertions.side_effects.judge_github``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anyio
import gidgethub
from gidgethub.aiohttp import GitHubAPI

from tracecanary.assertions.side_effects import GithubEffect, judge_github
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.watchers.base import Event, EventHub, WatchContext

log = logging.getLogger("tracecanary.watchers.github")

KINDS = ("comments", "review_comments", "reviews", "check_runs")
CLOCK_SKEW_S = 1.0
MAX_ITEMS = 3000
RECONCILE_MAX_S = 3.0
RECONCILE_SHARE = 0.25
"""In webhook mode the last share of the window (≤ 3 s) checks REST once, so a lost delivery or a
webhook not pointed at the daemon does not fail a run whose effect did happen."""


class PacedGitHubAPI(GitHubAPI):
    """gidgethub's aiohttp client that respects primary and secondary rate limits within a deadline."""

    def __init__(self, session: aiohttp.ClientSession, requester: str, *, oauth_token: str | None,
                 base_url: str, deadline_s: float, max_backoffs: int = 5, default_backoff_s: float = 60.0) -> None:
        super().__init__(session, requester, oauth_token=oauth_token, base_url=base_url)
        self.deadline_s = deadline_s
        self.max_backoffs = max_backoffs
        self.default_backoff_s = default_backoff_s
        self.backoffs = 0

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))  # anyio refuses negative delays

    def _affordable(self, wait_s: float) -> bool:
        return anyio.current_time() + wait_s < self.deadline_s

    async def manage_rate_limit(self, *, method: str, url: str) -> None:
        rl = self.rate_limit
        if rl is None or rl.remaining >= 0:  # gidgethub decrements before calling this hook
            return
        wait_s = max(0.0, (rl.reset_datetime - datetime.now(UTC)).total_seconds())
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


def _number(effect: GithubEffect, ctx: WatchContext) -> int:
    raw = effect.pull if effect.pull is not None else effect.issue
    return int(str(ctx.probe.render(str(raw))))


def _event_number(ev: Event) -> list[int]:
    p = ev.get("payload") or {}
    if "issue" in p:
        return [int(p["issue"].get("number", -1))]
    if "pull_request" in p:
        return [int(p["pull_request"].get("number", -1))]
    if "check_run" in p:
        return [int(pr.get("number", -1)) for pr in p["check_run"].get("pull_requests") or []]
    return []


def _fold(observed: dict[str, list[dict[str, Any]]], ev: Event) -> None:
    """Add (or update, by id) what a webhook delivery says appeared to ``observed`` (REST shapes)."""
    p, name = ev.get("payload") or {}, ev.get("event")
    action = p.get("action")
    kinds = {
        ("issue_comment", "created"): ("comments", "comment"),
        ("pull_request_review_comment", "created"): ("review_comments", "comment"),
        ("pull_request_review", "submitted"): ("reviews", "review"),
        ("check_run", "created"): ("check_runs", "check_run"),
        ("check_run", "completed"): ("check_runs", "check_run"),
        ("check_run", "rerequested"): ("check_runs", "check_run"),
    }
    kind, key = kinds.get((str(name), str(action)), (None, None))
    if kind is None or not isinstance(p.get(key), dict):
        return
    item = p[key]
    items = observed[kind]
    items[:] = [i for i in items if i.get("id") != item.get("id")] + [item]


async def watch_github(effect: GithubEffect, ctx: WatchContext) -> list[Finding]:
    """Wait until what ``effect`` describes appears on the PR/issue (or its window closes)."""
    try:
        number = _number(effect, ctx)
    except ValueError as e:
        return [Finding(type="side_effect", severity=Verdict.ERROR, path="side_effects.github",
                        message=f"pull/issue is not a number after templating: {e}")]
    target = "pull" if effect.pull is not None else "issue"
    effect = effect.model_copy(update={target: number, "repo": str(ctx.probe.render(effect.repo))})
    end_s = ctx.window_end_s(effect.within)
    hub = ctx.services.github_events
    if hub is not None:
        token = ctx.probe.integrations.github.token
        reserve_s = min(RECONCILE_MAX_S, RECONCILE_SHARE * max(0.0, end_s - anyio.current_time())) if token else 0.0
        observed = await _watch_events(effect, ctx, hub, number, end_s - reserve_s)
        via = "webhook"
        if reserve_s and not _settled(effect, observed):
            observed = await _reconcile(effect, ctx, number, observed, end_s)
            via = "webhook+rest"
            if not _settled(effect, observed):
                observed = await _watch_events(effect, ctx, hub, number, end_s, observed)
    else:
        outcome = await _poll(effect, ctx, number, end_s)
        if isinstance(outcome, Finding):
            return [outcome]
        observed, via = outcome, "rest"
    ctx.probe.log("github watch done", via=via, repo=effect.repo, number=number,
                  **{k: len(v) for k, v in observed.items()})
    return judge_github(effect, observed)


async def _reconcile(effect: GithubEffect, ctx: WatchContext, number: int,
                     observed: dict[str, list[dict[str, Any]]], end_s: float) -> dict[str, list[dict[str, Any]]]:
    cfg = ctx.probe.integrations.github
    gh = PacedGitHubAPI(ctx.probe.session, "tracecanary", oauth_token=cfg.token, base_url=cfg.base_url,
                        deadline_s=end_s)
    with anyio.move_on_after(max(0.0, end_s - anyio.current_time())):
        try:
            fetched = await _fetch(gh, effect, number, ctx.probe.trigger_ns / 1e9)
        except (gidgethub.GitHubException, aiohttp.ClientError) as e:
            log.warning("github reconcile failed repo=%s error=%s", effect.repo, e)
            return observed
        merged = _empty()
        for kind in KINDS:
            by_id = {item.get("id"): item for item in [*observed[kind], *fetched[kind]]}
            merged[kind] = list(by_id.values())
        return merged
    return observed


def _empty() -> dict[str, list[dict[str, Any]]]:
    return {k: [] for k in KINDS}


async def _watch_events(effect: GithubEffect, ctx: WatchContext, hub: EventHub, number: int, end_s: float,
                        initial: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, list[dict[str, Any]]]:
    repo = effect.repo.lower()
    since_ns = ctx.probe.trigger_ns - int(CLOCK_SKEW_S * 1e9)

    def relevant(ev: Event) -> bool:
        full = ((ev.get("payload") or {}).get("repository") or {}).get("full_name", "")
        return (str(full).lower() == repo and number in _event_number(ev)
                and int(ev.get("received_ns", since_ns)) >= since_ns)

    observed = initial or _empty()
    seen: set[str] = set()
    with hub.subscribe(relevant) as sub:
        while True:
            for ev in await sub.next_batch(end_s - anyio.current_time()):
                if str(ev.get("delivery")) not in seen:
                    seen.add(str(ev.get("delivery")))
                    _fold(observed, ev)
            if _settled(effect, observed) or anyio.current_time() >= end_s:
                return observed


def _settled(effect: GithubEffect, observed: dict[str, list[dict[str, Any]]]) -> bool:
    """Positive effects end as soon as they hold; absent ones as soon as they are violated."""
    findings = judge_github(effect, observed)
    return bool(findings) if effect.absent else not findings


def _since(item: dict[str, Any], since_s: float) -> bool:
    stamp = item.get("submitted_at") or item.get("created_at") or item.get("completed_at") or item.get("started_at")
    if not stamp:
        return True
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() >= int(since_s - CLOCK_SKEW_S)
    except ValueError:
        return True


async def _poll(effect: GithubEffect, ctx: WatchContext, number: int,
                end_s: float) -> dict[str, list[dict[str, Any]]] | Finding:
    cfg = ctx.probe.integrations.github
    gh = PacedGitHubAPI(ctx.probe.session, "tracecanary", oauth_token=cfg.token, base_url=cfg.base_url,
                        deadline_s=end_s)
    interval_s = ctx.poll_interval_s
    observed = _empty()
    while True:
        try:
            with anyio.fail_after(max(0.5, min(60.0, ctx.probe.remaining_s()))):
                observed = await _fetch(gh, effect, number, ctx.probe.trigger_ns / 1e9)
        except gidgethub.RateLimitExceeded as e:
            log.warning("github rate limit exhausted repo=%s reset=%s", effect.repo, e.rate_limit.reset_datetime)
        except gidgethub.BadRequest as e:
            if int(e.status_code) not in (403, 429):
                return Finding(type="side_effect", severity=Verdict.ERROR, path="side_effects.github",
                               message=f"GitHub polling of {effect.repo}#{number} failed: {int(e.status_code)} {e}",
                               observed=int(e.status_code))
            log.warning("github secondary limit not survivable within window repo=%s", effect.repo)
        except (TimeoutError, gidgethub.GitHubBroken, aiohttp.ClientError) as e:
            log.warning("github poll failed repo=%s error=%s", effect.repo, type(e).__name__)
        now = anyio.current_time()
        if _settled(effect, observed) or now >= end_s:
            return observed
        await anyio.sleep(min(interval_s, end_s - now))
        interval_s = min(interval_s * 1.5, ctx.poll_interval_s * 8)


async def _collect(gh: GitHubAPI, url: str, since_s: float, iterable_key: str | None = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    async for item in gh.getiter(url, iterable_key=iterable_key):
        if _since(item, since_s):
            items.append(item)
        if len(items) >= MAX_ITEMS:
            break
    return items


async def _fetch(gh: GitHubAPI, effect: GithubEffect, number: int, since_s: float) -> dict[str, list[dict[str, Any]]]:
    base = f"/repos/{effect.repo}"
    observed = _empty()
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
