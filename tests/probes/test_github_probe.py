"""The github_webhook probe delivering to a real aiohttp receiver that verifies with gidgethub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from gidgethub import ValidationFailure
from gidgethub.sansio import Event, validate_event

from tests.probes.helpers import make_ctx, serve
from tracecanary.errors import ProbeError
from tracecanary.integrations import Integrations
from tracecanary.probes.github import GithubWebhookProbe, delivery_id
from tracecanary.probes.steps import StepsProbe

SECRET = "hook-secret-for-tests"


async def _receiver(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        validate_event(body, signature=request.headers.get("X-Hub-Signature-256", ""), secret=SECRET)
        event = Event.from_http(request.headers, body, secret=SECRET)
    except ValidationFailure as e:
        return web.json_response({"error": str(e)}, status=401)
    return web.json_response({
        "event": event.event, "delivery_id": event.delivery_id, "data": event.data,
        "headers": {k: v for k, v in request.headers.items() if k.lower().startswith(("x-", "user-agent", "traceparent"))},
    }, status=202)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    app = web.Application()
    app.router.add_post("/hooks/github", _receiver)
    async with serve(app) as url, aiohttp.ClientSession() as session:
        yield url + "/hooks/github", session


def _probe(**delivery: Any) -> GithubWebhookProbe:
    return GithubWebhookProbe.model_validate({"id": "gh", "kind": "github_webhook", "delivery": delivery})


def _integrations() -> Integrations:
    return Integrations.model_validate({"github": {"webhook_secret": SECRET}})


@pytest.mark.anyio
@pytest.mark.parametrize("action", ["opened", "synchronize"])
async def test_pull_request_delivery_validates_with_gidgethub(
    receiver: tuple[str, aiohttp.ClientSession], action: str
) -> None:
    url, session = receiver
    ctx = make_ctx(session, integrations=_integrations())
    result = await _probe(url=url, event="pull_request", action=action, repo="acme/shop", number=12).fire(ctx)
    assert result.response is not None and result.response.status == 202, result.response.body_text
    seen = result.response.json
    assert seen["event"] == "pull_request" and seen["delivery_id"] == ctx.run_id == delivery_id(ctx.run_id)
    data = seen["data"]
    assert {"action", "number", "pull_request", "repository", "sender"} <= set(data)
    assert data["action"] == action and data["number"] == 12
    assert data["pull_request"]["number"] == 12 and data["pull_request"]["base"]["ref"] == "main"
    assert data["repository"]["full_name"] == "acme/shop"
    assert len(data["pull_request"]["head"]["sha"]) == 40
    assert ("before" in data) is (action == "synchronize")
    headers = seen["headers"]
    assert headers["User-Agent"].startswith("GitHub-Hookshot/")
    assert headers["X-GitHub-Hook-ID"].isdigit()
    assert headers["X-GitHub-Hook-Installation-Target-ID"] == str(data["repository"]["id"])
    assert headers["traceparent"].startswith(f"00-{ctx.trace.trace_id}-")
    assert result.outputs["delivery_id"] == ctx.run_id and result.outputs["number"] == 12


@pytest.mark.anyio
async def test_issue_comment_with_deep_merged_overrides(receiver: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = receiver
    ctx = make_ctx(session)
    probe = _probe(url=url, event="issue_comment", secret=SECRET, number="{{ attempt + 6 }}",
                   comment="@bot review please ({{ run_id }})",
                   payload={"comment": {"author_association": "OWNER"}, "installation": {"id": 42}})
    result = await probe.fire(ctx)
    assert result.response is not None and result.response.status == 202
    data = result.response.json["data"]
    assert data["action"] == "created" and data["issue"]["number"] == 7
    assert data["comment"]["body"] == f"@bot review please ({ctx.run_id})"
    assert data["comment"]["author_association"] == "OWNER" and data["comment"]["user"]["login"]
    assert data["installation"] == {"id": 42}
    assert "pull_request" in data["issue"]


@pytest.mark.anyio
async def test_push_delivery(receiver: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = receiver
    result = await _probe(url=url, event="push", secret=SECRET, ref="refs/heads/release").fire(make_ctx(session))
    assert result.response is not None and result.response.status == 202
    data = result.response.json["data"]
    assert data["ref"] == "refs/heads/release" and data["head_commit"]["id"] == data["after"]
    assert data["pusher"]["name"] and data["commits"][0]["modified"] == ["README.md"]


@pytest.mark.anyio
async def test_wrong_secret_is_refused_by_the_receiver(receiver: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = receiver
    result = await _probe(url=url, event="push", secret="not-it").fire(make_ctx(session))
    assert result.response is not None and result.response.status == 401


@pytest.mark.anyio
async def test_override_removing_a_required_field_is_refused(receiver: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = receiver
    with pytest.raises(ProbeError, match=r"pull_request payload lacks required field.*: number"):
        await _probe(url=url, event="pull_request", payload={"number": None}).fire(make_ctx(session))
    unchecked = _probe(url=url, event="pull_request", secret=SECRET, payload={"number": None},
                       validate_payload=False)
    result = await unchecked.fire(make_ctx(session))
    assert result.response is not None and "number" not in result.response.json["data"]


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="action 'created' is not one of opened, synchronize"):
        _probe(url="http://x", event="pull_request", action="created")
    with pytest.raises(ValueError, match="event push takes no action"):
        _probe(url="http://x", event="push", action="opened")
    assert delivery_id("not-a-uuid") == delivery_id("not-a-uuid") != delivery_id("other")


@pytest.mark.anyio
async def test_github_step_then_http_step_share_the_trace(receiver: tuple[str, aiohttp.ClientSession]) -> None:
    url, session = receiver
    ctx = make_ctx(session, integrations=_integrations())
    probe = StepsProbe.model_validate({"id": "s", "kind": "steps", "steps": [
        {"name": "deliver", "github_webhook": {"url": url, "event": "pull_request", "number": 5},
         "capture": {"delivery": "$.delivery_id", "sha": "$.data.pull_request.head.sha"}, "expect": {"status": 202}},
        {"name": "redeliver", "github_webhook": {"url": url, "event": "issue_comment", "number": 5,
                                                  "comment": "re {{ steps.deliver.sha }}"}},
    ]})
    result = await probe.fire(ctx)
    assert result.findings == []
    assert ctx.steps["deliver"]["delivery"] == ctx.run_id
    assert result.response is not None
    data = result.response.json["data"]
    assert data["comment"]["body"] == f"re {ctx.steps['deliver']['sha']}"
    assert result.outputs["deliver"]["event"] == "pull_request"
    assert result.response.json["headers"]["traceparent"].split("-")[1] == ctx.trace.trace_id
