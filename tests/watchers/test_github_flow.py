"""PR opened → the review bot comments; the GitHub watcher sees it via webhooks and via REST."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import pytest
from gidgethub.aiohttp import GitHubAPI

from tests.watchers.slack_bot import BotUnderTest
from tests.watchers.support import LoopbackApp, probe_context
from tracecanary.assertions.side_effects import GithubEffect
from tracecanary.assertions.verdict import Finding
from tracecanary.daemon.watchers.base import Backoff, EventHub, Services, WatchContext
from tracecanary.daemon.watchers.github import watch_github
from tracecanary.daemon.web.github_hook import github_hook_routes
from tracecanary.demo.emulators.github import GitHubEmulator, hub_signature
from tracecanary.probes.templating import render_spec

SECRET = "webhook-secret"
FAST = Backoff(initial_s=0.02, factor=2.0, max_s=0.1)


@dataclass
class GithubWorld:
    """The bot under test, the GitHub emulator and, with a hub, the daemon's /hooks/github on loopback."""

    bot: BotUnderTest
    em: GitHubEmulator
    hook_address: str | None

    def services(self, hub: EventHub | None) -> Services:
        """What the engine hands watchers: the hub and the address it serves /hooks/github on."""
        return Services(github_events=hub, hook_address=self.hook_address)


@asynccontextmanager
async def github_world(hub: EventHub | None, bot: dict[str, Any] | None = None, **em: Any) -> AsyncIterator[GithubWorld]:
    routes = github_hook_routes(hub, SECRET) if hub is not None else []
    async with BotUnderTest(**(bot or {})) as b, LoopbackApp(routes) as daemon:
        urls = [b.url + "/github/hooks"] + ([daemon.url + "/hooks/github"] if hub is not None else [])
        async with GitHubEmulator(webhook_url=urls, webhook_secret=SECRET, **em) as emulator:
            b.github_base_url = emulator.base_url
            yield GithubWorld(b, emulator, daemon.url.removeprefix("http://") if hub is not None else None)


async def open_pr_and_watch(em: GitHubEmulator, services: Services, spec: dict[str, Any],
                            github: dict[str, Any] | None = None, **wctx: Any) -> tuple[str, list[Finding]]:
    """Open a PR as a person and watch for ``spec`` (integrations.github gains ``github``)."""
    async with aiohttp.ClientSession() as session:
        prober = GitHubAPI(session, "prober", oauth_token="ghp-prober", base_url=em.base_url)
        await prober.post("/repos/acme/app/git/refs", data={"ref": "refs/heads/canary", "sha": "d" * 40})
        integration = {"token": "ghp-prober", "base_url": em.base_url, "webhook_secret": SECRET, **(github or {})}
        ctx = probe_context(session, {"github": integration})
        pr = await prober.post("/repos/acme/app/pulls", data={"title": "canary", "head": "canary", "base": "main"})
        eff = GithubEffect.model_validate({"repo": "acme/app", "pull": "{{ steps.pr.number }}", **spec})
        ctx.steps["pr"] = {"number": pr["number"]}
        watch = WatchContext(probe=ctx, services=services, **{"poll_interval_s": 0.05, "backoff": FAST, **wctx})
        with anyio.fail_after(15):
            findings = await watch_github(render_spec(eff, ctx.render), watch)  # as the runner does
        return ctx.log.text(), findings


COMMENT = {"comment": {"matches": "(?i)error handling"}, "within": "10s"}


@pytest.mark.anyio
async def test_comment_detected_via_webhook() -> None:
    hub = EventHub()
    async with github_world(hub) as world:
        log, findings = await open_pr_and_watch(world.em, world.services(hub), COMMENT)
    assert findings == [] and world.bot.errors == []
    assert "mode='webhook' because='GitHub delivers to 127.0.0.1:" in log
    assert "via='webhook'" in log and hub.published >= 2
    assert not any(m == "GET" for m, _, _ in world.em.requests)  # nothing polled
    assert {(d["event"], d["status"]) for d in world.em.deliveries} >= {("pull_request", 202), ("issue_comment", 202)}


@pytest.mark.anyio
async def test_comment_detected_via_rest() -> None:
    async with github_world(None) as world:
        log, findings = await open_pr_and_watch(world.em, world.services(None), COMMENT)
    assert findings == [] and "via='rest'" in log
    assert "because='this process receives no GitHub webhooks'" in log
    assert ("GET", "/repos/acme/app/issues/1/comments", 200) in world.em.requests


@pytest.mark.anyio
@pytest.mark.parametrize("state", ["COMMENTED", "commented"])
async def test_review_and_check_run_via_webhook(state: str) -> None:
    hub = EventHub()
    spec = {"review": {"state": state, "body": {"contains": "error handling"}},
            "check_run": {"name": "bot-review", "conclusion": "success"}, "within": "10s"}
    async with github_world(hub) as world:
        log, findings = await open_pr_and_watch(world.em, world.services(hub), spec)
    assert findings == [] and "via='webhook'" in log
    # webhook deliveries carry review.state lowercase; the judge matches either casing
    reviews = [p["review"]["state"] for e, p in world.em.sent if e == "pull_request_review"]
    assert reviews == ["commented"]


@pytest.mark.anyio
@pytest.mark.parametrize("state", ["CHANGES_REQUESTED", "changes_requested"])
async def test_review_state_matches_rest_uppercase_either_way(state: str) -> None:
    spec = {"review": {"state": state}, "within": "5s"}
    async with github_world(None, bot={"review_event": "REQUEST_CHANGES"}) as world:
        _, findings = await open_pr_and_watch(world.em, world.services(None), spec)
    assert findings == []


@pytest.mark.anyio
async def test_wrong_review_state_quotes_what_appeared_via_rest() -> None:
    spec = {"review": {"state": "APPROVED"}, "within": "1s"}
    async with github_world(None, bot={"review_event": "REQUEST_CHANGES"}) as world:
        _, findings = await open_pr_and_watch(world.em, world.services(None), spec)
    assert len(findings) == 1
    msg = findings[0].message
    assert msg.startswith("GitHub acme/app#1: no matching review within 1s; 1 appeared, none matched:")
    assert "review.state: expected 'APPROVED', got 'CHANGES_REQUESTED'" in msg
    assert findings[0].observed[0]["user"] == "review-bot[bot]"


def test_unknown_review_state_is_a_config_error() -> None:
    with pytest.raises(ValueError, match=r"review\.state 'LGTM' is not one of APPROVED, CHANGES_REQUESTED"):
        GithubEffect.model_validate({"repo": "acme/app", "pull": 1, "review": {"state": "LGTM"}})


@pytest.mark.anyio
async def test_missing_comment_fails_via_webhook() -> None:
    hub = EventHub()
    async with github_world(hub, bot={"review_text": None, "check_conclusion": None}) as world:
        _, findings = await open_pr_and_watch(world.em, world.services(hub), {**COMMENT, "within": "0.5s"})
    assert [f.message for f in findings] == ["GitHub acme/app#1: no matching comment within 0.5s; no comment appeared"]


@pytest.mark.anyio
async def test_secondary_rate_limit_storm_survived_via_rest() -> None:
    async with github_world(None, storm=2, storm_status=429, retry_after_s=1, storm_methods=("GET",)) as world:
        t0 = time.monotonic()
        _, findings = await open_pr_and_watch(world.em, world.services(None), COMMENT)
        waited_s = time.monotonic() - t0
    assert findings == []
    gets = [status for method, _, status in world.em.requests if method == "GET"]
    assert gets[:2] == [429, 429] and 200 in gets
    assert waited_s >= 2.0  # both retry-after waits honoured (a lower bound: waiting, not speed)


@pytest.mark.anyio
async def test_hook_route_verifies_signatures() -> None:
    hub = EventHub()
    body = json.dumps({"action": "opened", "number": 1, "repository": {"full_name": "acme/app"}}).encode()
    async with LoopbackApp(github_hook_routes(hub, SECRET)) as daemon, aiohttp.ClientSession() as s:
        url = daemon.url + "/hooks/github"
        base = {"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "d-1", "Content-Type": "application/json"}
        async with s.post(url, data=body, headers={**base, "X-Hub-Signature-256": hub_signature("wrong", body)}) as r:
            assert r.status == 401
        async with s.post(url, data=body, headers=base) as r:
            assert r.status == 401
        assert hub.published == 0
        headers = {**base, "X-Hub-Signature-256": hub_signature(SECRET, body), "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
        async with s.post(url, data=body, headers=headers) as r:
            assert r.status == 202
        form = b"payload=" + body.replace(b" ", b"+")
        form_headers = {**base, "Content-Type": "application/x-www-form-urlencoded",
                        "X-Hub-Signature-256": hub_signature(SECRET, form)}
        async with s.post(url, data=form, headers=form_headers) as r:
            assert r.status == 202
    events = list(hub.recent())
    assert [e["payload"]["number"] for e in events] == [1, 1]
    assert events[0]["delivery"] == "d-1" and events[0]["traceparent"].startswith("00-aaaa")


@pytest.mark.anyio
async def test_webhooks_not_pointed_at_daemon_are_reconciled_by_rest_once() -> None:
    hub = EventHub()  # a hub, but GitHub only delivers to the bot
    async with github_world(None) as world:
        log, findings = await open_pr_and_watch(world.em, Services(github_events=hub), {**COMMENT, "within": "2s"},
                                                github={"watch": "webhook"})
    assert findings == [] and "via='webhook+rest'" in log
    comment_gets = [r for r in world.em.requests if r[:2] == ("GET", "/repos/acme/app/issues/1/comments")]
    assert comment_gets == [("GET", "/repos/acme/app/issues/1/comments", 200)]  # one REST look, not a poll loop


@pytest.mark.anyio
async def test_reconcile_retries_transient_5xx() -> None:
    hub = EventHub()
    async with github_world(None) as world:
        world.em.fail(2, status=502, methods=("GET",))
        log, findings = await open_pr_and_watch(world.em, Services(github_events=hub), {**COMMENT, "within": "2s"},
                                                github={"watch": "webhook"})
    assert findings == [] and "via='webhook+rest'" in log
    statuses = [st for m, path, st in world.em.requests if m == "GET"]
    assert statuses[:2] == [502, 502] and 200 in statuses
