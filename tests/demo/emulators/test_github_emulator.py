"""The GitHub emulator against GitHub's documented bodies and headers, driven by gidgethub."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import gidgethub
import pytest
from gidgethub.aiohttp import GitHubAPI
from gidgethub.sansio import validate_event

from tests.demo.emulators.hook_receiver import HookReceiver
from tracecanary.demo.emulators.github import GitHubEmulator, hub_signature

NOT_FOUND = {"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}
BAD_CREDENTIALS = {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"}
# Documented example of an issue comment (docs.github.com/rest/issues/comments), field set only.
DOC_COMMENT_FIELDS = {"id", "node_id", "url", "html_url", "body", "user", "created_at", "updated_at",
                      "issue_url", "author_association"}
DOC_REVIEW_FIELDS = {"id", "node_id", "user", "body", "state", "html_url", "pull_request_url", "_links",
                     "submitted_at", "commit_id", "author_association"}
DOC_USER_FIELDS = {"login", "id", "node_id", "avatar_url", "gravatar_id", "url", "html_url", "type", "site_admin"}


@pytest.fixture
async def github() -> AsyncIterator[GitHubEmulator]:
    async with GitHubEmulator() as em:
        yield em


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def api(session: aiohttp.ClientSession, em: GitHubEmulator, token: str = "ghp-bot") -> GitHubAPI:
    return GitHubAPI(session, "tracecanary-tests", oauth_token=token, base_url=em.base_url)


async def open_pull(gh: GitHubAPI, branch: str = "feature") -> dict[str, Any]:
    main = await gh.getitem("/repos/acme/app/git/ref/heads/main")
    await gh.post("/repos/acme/app/git/refs", data={"ref": f"refs/heads/{branch}", "sha": "b" * 40})
    assert main["object"]["sha"] == "a" * 40
    pr: dict[str, Any] = await gh.post("/repos/acme/app/pulls", data={"title": "T", "head": branch, "base": "main"})
    return pr


@pytest.mark.anyio
async def test_error_bodies_exactly_as_github_sends_them(github: GitHubEmulator, session: aiohttp.ClientSession) -> None:
    async with session.get(github.base_url + "/repos/acme/missing/issues/1/comments") as r:
        assert r.status == 404 and await r.json() == NOT_FOUND
    async with session.get(github.base_url + "/repos/acme/app", headers={"Authorization": "token nope"}) as r:
        assert r.status == 401 and await r.json() == BAD_CREDENTIALS
    with pytest.raises(gidgethub.BadRequest) as e:
        await api(session, github).getitem("/repos/acme/app/pulls/99")
    assert e.value.status_code == 404 and str(e.value) == "Not Found"


@pytest.mark.anyio
async def test_validation_failed_422(github: GitHubEmulator, session: aiohttp.ClientSession) -> None:
    gh = api(session, github)
    async with session.post(github.base_url + "/repos/acme/app/pulls", json={"title": "x", "base": "main"},
                            headers={"Authorization": "token ghp-bot"}) as r:
        assert r.status == 422
        assert await r.json() == {
            "message": "Validation Failed",
            "errors": [{"resource": "PullRequest", "field": "head", "code": "missing_field"}],
            "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request", "status": "422",
        }
    with pytest.raises(gidgethub.InvalidField) as e:
        await gh.post("/repos/acme/app/pulls", data={"title": "x", "head": "nope", "base": "main"})
    assert str(e.value) == "Validation Failed for 'head'"
    await gh.post("/repos/acme/app/git/refs", data={"ref": "refs/heads/x", "sha": "c" * 40})
    with pytest.raises(gidgethub.BadRequest) as e2:
        await gh.post("/repos/acme/app/git/refs", data={"ref": "refs/heads/x", "sha": "c" * 40})
    assert e2.value.status_code == 422 and str(e2.value) == "Reference already exists"


@pytest.mark.anyio
async def test_link_pagination_honours_per_page(github: GitHubEmulator, session: aiohttp.ClientSession) -> None:
    gh = api(session, github)
    pr = await open_pull(gh)
    for i in range(65):
        await gh.post(f"/repos/acme/app/issues/{pr['number']}/comments", data={"body": f"c{i}"})
    url = f"{github.base_url}/repos/acme/app/issues/{pr['number']}/comments?per_page=30&page=2"
    async with session.get(url) as r:
        link = r.headers["Link"]
        assert 'page=3>; rel="next"' in link and 'page=3>; rel="last"' in link
        assert 'page=1>; rel="prev"' in link and 'page=1>; rel="first"' in link
        assert len(await r.json()) == 30
    before = len(github.requests)
    bodies = [c["body"] async for c in gh.getiter(f"/repos/acme/app/issues/{pr['number']}/comments?per_page=30")]
    assert bodies == [f"c{i}" for i in range(65)] and len(github.requests) - before == 3
    first = (await gh.getitem(f"/repos/acme/app/issues/{pr['number']}/comments"))[0]
    assert DOC_COMMENT_FIELDS <= set(first) and DOC_USER_FIELDS <= set(first["user"])
    assert first["user"]["login"] == "review-bot[bot]" and first["user"]["type"] == "Bot"


@pytest.mark.anyio
async def test_rate_limit_headers_and_exhaustion(session: aiohttp.ClientSession) -> None:
    async with GitHubEmulator(rate_limit=3) as em:
        gh = api(session, em)
        await gh.getitem("/repos/acme/app")
        assert gh.rate_limit is not None and gh.rate_limit.limit == 3 and gh.rate_limit.remaining == 2
        async with session.get(em.base_url + "/repos/acme/app") as r:
            assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-used", "x-ratelimit-reset",
                    "x-ratelimit-resource"} <= {k.lower() for k in r.headers}
            assert r.headers["x-ratelimit-used"] == "2"
        await gh.getitem("/repos/acme/app")
        with pytest.raises(gidgethub.RateLimitExceeded) as e:
            await gh.getitem("/repos/acme/app")
        assert str(e.value).startswith("API rate limit exceeded")


@pytest.mark.anyio
async def test_secondary_rate_limit_storm(session: aiohttp.ClientSession) -> None:
    async with GitHubEmulator(storm=1, storm_status=429, retry_after_s=30) as em:
        with pytest.raises(gidgethub.BadRequest) as e:
            await api(session, em).getitem("/repos/acme/app")
        assert e.value.status_code == 429 and e.value.headers["retry-after"] == "30"
        assert "secondary rate limit" in str(e.value)
        assert (await api(session, em).getitem("/repos/acme/app"))["full_name"] == "acme/app"


@pytest.mark.anyio
async def test_reviews_review_comments_check_runs(github: GitHubEmulator, session: aiohttp.ClientSession) -> None:
    gh = api(session, github)
    pr = await open_pull(gh)
    n = pr["number"]
    review = await gh.post(f"/repos/acme/app/pulls/{n}/reviews", data={"event": "REQUEST_CHANGES", "body": "fix"})
    assert DOC_REVIEW_FIELDS <= set(review) and review["state"] == "CHANGES_REQUESTED"
    with pytest.raises(gidgethub.BadRequest):
        await gh.post(f"/repos/acme/app/pulls/{n}/reviews", data={"event": "COMMENT"})
    await gh.post(f"/repos/acme/app/pulls/{n}/comments", data={"body": "nit", "path": "a.py", "line": 3})
    assert [c["path"] async for c in gh.getiter(f"/repos/acme/app/pulls/{n}/comments")] == ["a.py"]
    await gh.post("/repos/acme/app/check-runs", data={"name": "lint", "head_sha": pr["head"]["sha"],
                                                      "conclusion": "failure"})
    runs = [r async for r in gh.getiter(f"/repos/acme/app/commits/{pr['head']['sha']}/check-runs",
                                       iterable_key="check_runs")]
    assert runs[0]["conclusion"] == "failure" and runs[0]["pull_requests"][0]["number"] == n
    closed = await gh.patch(f"/repos/acme/app/pulls/{n}", data={"state": "closed"})
    assert closed["state"] == "closed" and closed["closed_at"]
    await gh.delete("/repos/acme/app/git/refs/heads/feature")
    with pytest.raises(gidgethub.BadRequest) as e:
        await gh.delete("/repos/acme/app/git/refs/heads/feature")
    assert e.value.status_code == 422


@pytest.mark.anyio
async def test_webhook_deliveries_signed(session: aiohttp.ClientSession) -> None:
    async with HookReceiver() as rx, GitHubEmulator(webhook_url=rx.url, webhook_secret="It's a Secret to Everybody") as em:
        assert hub_signature("It's a Secret to Everybody", b"Hello, World!") == (
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
        gh = api(session, em, "ghp-prober")
        pr = await open_pull(gh)
        await api(session, em).post(f"/repos/acme/app/issues/{pr['number']}/comments", data={"body": "LGTM"})
        (h1, b1), (h2, b2) = await rx.wait_for(2)
    for headers, body in ((h1, b1), (h2, b2)):
        validate_event(body, signature=headers["X-Hub-Signature-256"], secret="It's a Secret to Everybody")
        assert headers["User-Agent"].startswith("GitHub-Hookshot/") and len(headers["X-GitHub-Delivery"]) == 36
    opened = json.loads(b1)
    assert h1["X-GitHub-Event"] == "pull_request"
    assert {"action", "number", "pull_request", "repository", "sender"} <= set(opened)
    assert opened["action"] == "opened" and opened["sender"]["login"] == "prober"
    comment = json.loads(b2)
    assert h2["X-GitHub-Event"] == "issue_comment" and comment["comment"]["body"] == "LGTM"
    assert comment["issue"]["number"] == pr["number"] and "pull_request" in comment["issue"]


@pytest.mark.anyio
async def test_conditional_requests_answer_304_without_counting(github: GitHubEmulator,
                                                                 session: aiohttp.ClientSession) -> None:
    gh = api(session, github)
    pr = await open_pull(gh)
    url = f"{github.base_url}/repos/acme/app/issues/{pr['number']}/comments"
    auth = {"Authorization": "token ghp-bot"}
    async with session.get(url, headers=auth) as r:
        etag, used = r.headers["ETag"], r.headers["x-ratelimit-used"]
        assert r.status == 200 and etag.startswith('W/"') and await r.json() == []
    async with session.get(url, headers={**auth, "If-None-Match": etag}) as r:
        assert r.status == 304 and await r.read() == b""
        assert r.headers["ETag"] == etag and r.headers["x-ratelimit-used"] == used  # not counted
    await gh.post(f"/repos/acme/app/issues/{pr['number']}/comments", data={"body": "new"})
    async with session.get(url, headers={**auth, "If-None-Match": etag}) as r:
        assert r.status == 200 and r.headers["ETag"] != etag and [c["body"] for c in await r.json()] == ["new"]
    assert github.not_modified == 1


@pytest.mark.anyio
async def test_server_error_fault_knob(github: GitHubEmulator, session: aiohttp.ClientSession) -> None:
    github.fail(2, status=503, methods=("GET",))
    for _ in range(2):
        with pytest.raises(gidgethub.GitHubBroken) as e:
            await api(session, github).getitem("/repos/acme/app")
        assert e.value.status_code == 503 and str(e.value) == "Server Error"
    assert (await api(session, github).getitem("/repos/acme/app"))["full_name"] == "acme/app"
    github.fail(2, disconnect=True)  # aiohttp retries an idempotent request once on a dropped keep-alive connection
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await api(session, github).getitem("/repos/acme/app")
    assert [status for _, _, status in github.requests] == [503, 503, 200, 0, 0]
