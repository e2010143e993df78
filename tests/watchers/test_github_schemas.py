"""Every webhook delivery we send validates against GitHub's published schemas (@octokit/webhooks-schemas).

Both senders are checked on what actually went over the wire: the github_webhook probe (every event and
action it offers, for github.com and a GitHub Enterprise base URL) and the GitHub emulator (every event a
review bot's flow makes it deliver). The validator itself is checked to catch and print errors.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from gidgethub.aiohttp import GitHubAPI

from tests.demo.emulators.hook_receiver import HookReceiver
from tests.probes.helpers import make_ctx
from tests.watchers.webhook_schemas import Delivery, assert_valid, install, report, validate
from tracecanary.demo.emulators.github import GitHubEmulator
from tracecanary.integrations import Integrations
from tracecanary.probes.github import GithubWebhookProbe
from tracecanary.probes.github_payloads import ACTIONS

SECRET = "schema-secret"
PROBE_DELIVERIES = [(event, action) for event, actions in ACTIONS.items() for action in (actions or (None,))]


@pytest.mark.anyio
@pytest.mark.timeout(300)
@pytest.mark.parametrize("base_url", ["https://api.github.com", "https://ghe.example.com/api/v3"])
async def test_every_probe_delivery_validates(base_url: str) -> None:
    install()
    integrations = Integrations.model_validate({"github": {"webhook_secret": SECRET, "base_url": base_url}})
    async with HookReceiver() as rx, aiohttp.ClientSession() as session:
        for event, action in PROBE_DELIVERIES:
            probe = GithubWebhookProbe.model_validate({"id": "gh", "kind": "github_webhook", "delivery": {
                "url": rx.url, "event": event, "action": action, "repo": "acme/shop", "number": 12}})
            await probe.fire(make_ctx(session, integrations=integrations))
        received = await rx.wait_for(len(PROBE_DELIVERIES))
    deliveries = [Delivery(f"{headers['X-GitHub-Event']}.{json.loads(body).get('action')}",
                           headers["X-GitHub-Event"], json.loads(body)) for headers, body in received]
    assert {d.name for d in deliveries} == {f"{e}.{a}" for e, a in PROBE_DELIVERIES}
    assert_valid(deliveries)
    web = "https://github.com" if "api.github.com" in base_url else "https://ghe.example.com"
    opened = next(d.payload for d in deliveries if d.name == "pull_request.opened")
    assert opened["pull_request"]["html_url"] == f"{web}/acme/shop/pull/12"
    assert opened["repository"]["url"] == f"{base_url}/repos/acme/shop"
    assert opened["pull_request"]["_links"]["comments"]["href"] == f"{base_url}/repos/acme/shop/issues/12/comments"
    assert opened["pull_request"]["created_at"].endswith("Z")


async def _review_bot_flow(em: GitHubEmulator) -> dict[str, Any]:
    """What a review bot and a person do on one PR: every kind of delivery the emulator makes."""
    async with aiohttp.ClientSession() as session:
        person = GitHubAPI(session, "person", oauth_token="ghp-prober", base_url=em.base_url)
        bot = GitHubAPI(session, "bot", oauth_token="ghp-bot", base_url=em.base_url)
        await person.post("/repos/acme/app/git/refs", data={"ref": "refs/heads/feature", "sha": "b" * 40})
        pr = await person.post("/repos/acme/app/pulls", data={"title": "T", "head": "feature", "base": "main"})
        n = pr["number"]
        await bot.post(f"/repos/acme/app/issues/{n}/comments", data={"body": "LGTM"})
        for event in ("COMMENT", "APPROVE", "REQUEST_CHANGES"):
            await bot.post(f"/repos/acme/app/pulls/{n}/reviews", data={"event": event, "body": f"{event} review"})
        await bot.post(f"/repos/acme/app/pulls/{n}/comments", data={"body": "nit", "path": "a.py", "line": 3})
        await bot.post("/repos/acme/app/check-runs", data={"name": "lint", "head_sha": pr["head"]["sha"]})
        await bot.post("/repos/acme/app/check-runs", data={"name": "test", "head_sha": pr["head"]["sha"],
                                                          "conclusion": "success"})
        await person.patch(f"/repos/acme/app/pulls/{n}", data={"title": "T2"})
        await person.patch(f"/repos/acme/app/pulls/{n}", data={"state": "closed"})
        await person.patch(f"/repos/acme/app/pulls/{n}", data={"state": "open"})
        reviews = [r async for r in bot.getiter(f"/repos/acme/app/pulls/{n}/reviews")]
        return {"reviews": reviews}


@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_every_emulator_delivery_validates() -> None:
    install()
    async with HookReceiver() as rx, GitHubEmulator(webhook_url=rx.url, webhook_secret=SECRET) as em:
        rest = await _review_bot_flow(em)
        received = await rx.wait_for(len(em.sent))
    deliveries = [Delivery(f"{i}:{headers['X-GitHub-Event']}.{json.loads(body).get('action')}",
                           headers["X-GitHub-Event"], json.loads(body)) for i, (headers, body) in enumerate(received)]
    assert {d.name.split(":", 1)[1] for d in deliveries} == {
        "pull_request.opened", "issue_comment.created", "pull_request_review.submitted",
        "pull_request_review_comment.created", "check_run.created", "check_run.completed", "pull_request.edited",
        "pull_request.closed", "pull_request.reopened"}
    assert_valid(deliveries)
    # review.state: lowercase in the webhook (the schema's enum), uppercase from REST (docs.github.com/rest/pulls/reviews)
    hooked = [d.payload["review"]["state"] for d in deliveries if d.event == "pull_request_review"]
    assert hooked == ["commented", "approved", "changes_requested", "commented"]
    assert [r["state"] for r in rest["reviews"]] == ["COMMENTED", "APPROVED", "CHANGES_REQUESTED", "COMMENTED"]
    closed = next(d.payload for d in deliveries if d.name.endswith("pull_request.closed"))
    assert closed["pull_request"]["state"] == "closed" and closed["pull_request"]["title"] == "T2"


def test_validator_reports_every_error() -> None:
    opened = {"action": "opened", "number": 1, "pull_request": {"url": "not a url"}, "repository": {}, "sender": {}}
    results = validate([Delivery("bad", "pull_request", opened), Delivery("unknown", "no_such_event", {})])
    text = report(results, limit=1000)
    assert "bad: " in text and "must have required property '_links'" in text
    assert "/pull_request/url must match format \"uri\"" in text
    assert "unknown: 1 error(s)" in text and "no schema for event no_such_event" in text
    with pytest.raises(AssertionError, match="do not validate against @octokit/webhooks-schemas"):
        assert_valid([Delivery("bad", "pull_request", opened)])
