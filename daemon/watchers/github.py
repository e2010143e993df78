"""Watch for a GitHub comment, review or check run on a PR/issue: webhook events, else REST polling.

Which way is ``integrations.github.watch`` (``auto`` by default, see ``watch_mode``):
- webhook: ``daemon/web/github_hook.py`` verifies deliveries to ``/hooks/github`` and publishes them into
  ``Services.github_events``; the watcher subscribes (with replay) to the repository and number, and
  looks over REST once before the window closes (a lost delivery does not fail a run whose effect
  happened);
- poll: the REST API from the window's start every ``poll_interval_s``, with conditional requests and
  the rate-limit headers respected (``github_rest.py``).
Judgement is ``assertions.side_effects.judge_github``.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio

from tracecanary.assertions.side_effects import GithubEffect, judge_github
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.watchers.base import Event, EventHub, WatchContext
from tracecanary.daemon.watchers.github_rest import (
    CLOCK_SKEW_S,
    Observed,
    PacedGitHubAPI,
    empty,
    poll,
    reconcile,
    settled,
)

__all__ = ["PacedGitHubAPI", "watch_github", "watch_mode"]

log = logging.getLogger("tracecanary.watchers.github")

RECONCILE_MAX_S = 3.0
RECONCILE_SHARE = 0.25
"""In webhook mode the last share of the window (≤ 3 s) checks REST once, so a lost delivery or a
webhook not pointed at the daemon does not fail a run whose effect did happen."""


def _loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def watch_mode(ctx: WatchContext) -> tuple[Literal["webhook", "poll"], str]:
    """Webhook or poll for this watch, and why: ``integrations.github.watch``, else whether GitHub can
    deliver to this process (a secret, a /hooks/github listener, an address GitHub reaches)."""
    cfg = ctx.probe.integrations.github
    services = ctx.services
    if cfg.watch == "poll":
        return "poll", "integrations.github.watch: poll"
    if services.github_events is None:
        return "poll", "this process receives no GitHub webhooks"
    if cfg.watch == "webhook":
        return "webhook", "integrations.github.watch: webhook"
    if not cfg.webhook_secret:
        return "poll", "no integrations.github.webhook_secret"
    if services.hook_address is None:
        return "poll", "no listen address serves /hooks/github"
    if services.public_url:
        return "webhook", f"GitHub delivers through {services.public_url}"
    listen_host = services.hook_address.rpartition(":")[0]
    github_host = urlsplit(cfg.base_url).hostname or ""
    if _loopback(listen_host) and not _loopback(github_host):
        return "poll", f"{github_host} cannot reach the loopback listen address {services.hook_address}"
    return "webhook", f"GitHub delivers to {services.hook_address}/hooks/github"


def _number(effect: GithubEffect, ctx: WatchContext) -> int:
    raw = effect.pull if effect.pull is not None else effect.issue
    return int(str(raw))  # rendered per run by the runner (probes.templating.render_spec)


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
    effect = effect.model_copy(update={target: number})
    end_s = ctx.window_end_s(effect.within)
    mode, why = watch_mode(ctx)
    ctx.probe.log("github watch", mode=mode, because=why)
    reconcile_error: str | None = None
    if mode == "webhook" and ctx.services.github_events is not None:
        observed, via, reconcile_error = await _webhook(effect, ctx, ctx.services.github_events, number, end_s)
    else:
        outcome = await poll(effect, ctx, number, end_s)
        if isinstance(outcome, Finding):
            return [outcome]
        observed, via = outcome, "rest"
    ctx.probe.log("github watch done", via=via, repo=effect.repo, number=number,
                  **{k: len(v) for k, v in observed.items()})
    ctx.saw(observed)
    findings = judge_github(effect, observed)
    if reconcile_error and findings and not effect.absent:
        note = f"; the REST check before the window closed failed: {reconcile_error}"
        findings = [f.model_copy(update={"message": f.message + note}) for f in findings]
    return findings


async def _webhook(effect: GithubEffect, ctx: WatchContext, hub: EventHub, number: int,
                   end_s: float) -> tuple[Observed, str, str | None]:
    """Deliveries until the last share of the window, then one REST look, then deliveries to the end."""
    token = ctx.probe.integrations.github.token
    reserve_s = min(RECONCILE_MAX_S, RECONCILE_SHARE * max(0.0, end_s - anyio.current_time())) if token else 0.0
    observed = await _watch_events(effect, ctx, hub, number, end_s - reserve_s)
    if not reserve_s or settled(effect, observed):
        return observed, "webhook", None
    observed, error = await reconcile(effect, ctx, number, observed, end_s)
    if not settled(effect, observed):
        observed = await _watch_events(effect, ctx, hub, number, end_s, observed)
    return observed, "webhook+rest", error


async def _watch_events(effect: GithubEffect, ctx: WatchContext, hub: EventHub, number: int, end_s: float,
                        initial: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, list[dict[str, Any]]]:
    repo = effect.repo.lower()
    since_ns = ctx.probe.trigger_ns - int(CLOCK_SKEW_S * 1e9)

    def relevant(ev: Event) -> bool:
        full = ((ev.get("payload") or {}).get("repository") or {}).get("full_name", "")
        return (str(full).lower() == repo and number in _event_number(ev)
                and int(ev.get("received_ns", since_ns)) >= since_ns)

    observed = initial or empty()
    seen: set[str] = set()
    with hub.subscribe(relevant) as sub:
        while True:
            for ev in await sub.next_batch(end_s - anyio.current_time()):
                if str(ev.get("delivery")) not in seen:
                    seen.add(str(ev.get("delivery")))
                    _fold(observed, ev)
            if settled(effect, observed) or anyio.current_time() >= end_s:
                return observed


