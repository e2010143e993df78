"""The GitHub watcher's choice of webhook or poll, polling from the window's start with conditional
requests and rate-limit headers, and transient 5xx / connection failures retried with backoff."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import yaml
from gidgethub.aiohttp import GitHubAPI

from tests.watchers.support import probe_context
from tracecanary.assertions.side_effects import GithubEffect
from tracecanary.assertions.verdict import Finding, Verdict
from tracecanary.daemon.config.load import load_config
from tracecanary.daemon.engine import Engine, Overrides
from tracecanary.daemon.watchers.base import Backoff, EventHub, Services, WatchContext
from tracecanary.daemon.watchers.github import PacedGitHubAPI, watch_github, watch_mode
from tracecanary.demo.emulators.github import GitHubEmulator

FAST = Backoff(initial_s=0.02, factor=2.0, max_s=0.1)
COMMENT_PATH = "/repos/acme/app/issues/1/comments"


@pytest.mark.parametrize(("github", "services", "mode", "because"), [
    ({"watch": "poll"}, {"github_events": EventHub(), "hook_address": "0.0.0.0:8080"}, "poll",
     "integrations.github.watch: poll"),
    ({"webhook_secret": "s"}, {}, "poll", "this process receives no GitHub webhooks"),
    ({"watch": "webhook"}, {"github_events": EventHub()}, "webhook", "integrations.github.watch: webhook"),
    ({}, {"github_events": EventHub(), "hook_address": "0.0.0.0:8080"}, "poll",
     "no integrations.github.webhook_secret"),
    ({"webhook_secret": "s"}, {"github_events": EventHub()}, "poll", "no listen address serves /hooks/github"),
    ({"webhook_secret": "s"}, {"github_events": EventHub(), "public_url": "https://canary.example.com"}, "poll",
     "no listen address serves /hooks/github"),
    ({"webhook_secret": "s"}, {"github_events": EventHub(), "hook_address": "127.0.0.1:8080"}, "poll",
     "api.github.com cannot reach the loopback listen address 127.0.0.1:8080"),
    ({"webhook_secret": "s"}, {"github_events": EventHub(), "hook_address": "127.0.0.1:8080",
                               "public_url": "https://canary.example.com"}, "webhook",
     "GitHub delivers through https://canary.example.com"),
    ({"webhook_secret": "s"}, {"github_events": EventHub(), "hook_address": "10.0.0.5:8080"}, "webhook",
     "GitHub delivers to 10.0.0.5:8080/hooks/github"),
    ({"webhook_secret": "s", "base_url": "http://127.0.0.1:9999"},
     {"github_events": EventHub(), "hook_address": "127.0.0.1:8080"}, "webhook",
     "GitHub delivers to 127.0.0.1:8080/hooks/github"),
])
@pytest.mark.anyio
async def test_watch_mode(github: dict[str, Any], services: dict[str, Any], mode: str, because: str) -> None:
    async with aiohttp.ClientSession() as session:
        ctx = WatchContext(probe=probe_context(session, {"github": github}), services=Services(**services))
        assert watch_mode(ctx) == (mode, because)


@asynccontextmanager
async def open_pull(**em: Any) -> AsyncIterator[tuple[GitHubEmulator, aiohttp.ClientSession, GitHubAPI]]:
    """An emulator with PR #1 opened by a person; yields it, a session and the bot's client."""
    async with GitHubEmulator(**em) as emulator, aiohttp.ClientSession() as session:
        person = GitHubAPI(session, "person", oauth_token="ghp-prober", base_url=emulator.base_url)
        await person.post("/repos/acme/app/git/refs", data={"ref": "refs/heads/canary", "sha": "d" * 40})
        await person.post("/repos/acme/app/pulls", data={"title": "canary", "head": "canary", "base": "main"})
        yield emulator, session, GitHubAPI(session, "bot", oauth_token="ghp-bot", base_url=emulator.base_url)


def watch_ctx(em: GitHubEmulator, session: aiohttp.ClientSession, **wctx: Any) -> WatchContext:
    ctx = probe_context(session, {"github": {"token": "ghp-prober", "base_url": em.base_url, "watch": "poll"}})
    return WatchContext(probe=ctx, services=Services(github_events=EventHub()), **{"backoff": FAST, **wctx})


def effect(within: str, repo: str = "acme/app") -> GithubEffect:
    return GithubEffect.model_validate({"repo": repo, "pull": 1, "comment": {"contains": "LGTM"}, "within": within})


@pytest.mark.anyio
async def test_polling_sees_a_comment_within_one_interval() -> None:
    async with open_pull() as (em, session, bot):
        wctx = watch_ctx(em, session, poll_interval_s=0.2)
        posted_at: list[int] = []

        async def comment() -> None:
            await anyio.sleep(0.3)  # the scenario: the bot answers 0.3 s into the window
            posted_at.append(len(em.requests))
            await bot.post("/repos/acme/app/issues/1/comments", data={"body": "LGTM"})

        # 10 s bounds a 30 s window: waiting 75% of it before looking (the old behaviour) would trip it
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(comment)
                findings = await watch_github(effect("30s"), wctx)
    assert findings == []
    before = [st for m, path, st in em.requests[:posted_at[0]] if (m, path) == ("GET", COMMENT_PATH)]
    after = [st for m, path, st in em.requests[posted_at[0]:] if (m, path) == ("GET", COMMENT_PATH)]
    assert before and before[0] == 200 and set(before[1:]) <= {304}  # polled from the start, conditionally
    assert len(after) <= 2 and after[-1] == 200  # seen by the first poll after it, or the one in flight
    assert em.not_modified >= 1 and "github polled" in wctx.probe.log.text()


@pytest.mark.anyio
@pytest.mark.parametrize("fault", [{"status": 502}, {"status": 503}, {"disconnect": True}])
async def test_polling_retries_transient_failures(fault: dict[str, Any]) -> None:
    async with open_pull() as (em, session, bot):
        await bot.post("/repos/acme/app/issues/1/comments", data={"body": "LGTM"})
        em.fail(3, methods=("GET",), **fault)
        with anyio.fail_after(10):
            findings = await watch_github(effect("10s"), watch_ctx(em, session, poll_interval_s=5.0))
    assert findings == []
    gets = [st for m, _, st in em.requests if m == "GET"]
    assert gets[:3] == [fault.get("status", 0)] * 3 and gets[3] == 200  # retried after backoff, not the interval


@pytest.mark.anyio
async def test_a_failure_lasting_the_window_is_reported_with_the_last_error() -> None:
    async with open_pull() as (em, session, _bot):
        em.fail(10**6, status=503, methods=("GET",))
        with anyio.fail_after(10):
            [finding] = await watch_github(effect("1s"), watch_ctx(em, session, poll_interval_s=0.1))
    assert isinstance(finding, Finding) and finding.severity == Verdict.ERROR
    assert finding.message.startswith("GitHub polling of acme/app#1 failed until the window closed (")
    assert finding.message.endswith("last error: 503 Server Error") and finding.observed == "503 Server Error"
    assert sum(1 for m, _, st in em.requests if (m, st) == ("GET", 503)) >= 3


@pytest.mark.anyio
async def test_a_missing_repository_is_an_error_at_once() -> None:
    async with open_pull() as (em, session, _bot):
        with anyio.fail_after(10):
            [finding] = await watch_github(effect("30s", repo="acme/missing"), watch_ctx(em, session))
    assert finding.severity == Verdict.ERROR and finding.message == "GitHub polling of acme/missing#1 failed: 404 Not Found"


@pytest.mark.anyio
async def test_conditional_requests_and_an_exhausted_budget() -> None:
    async with GitHubEmulator(rate_limit=2, rate_reset_s=1.0) as em, aiohttp.ClientSession() as session:
        gh = PacedGitHubAPI(session, "t", oauth_token="ghp-bot", base_url=em.base_url,
                            deadline_s=anyio.current_time() + 10)
        await gh.getitem("/repos/acme/app")
        remaining = gh.remaining
        assert (await gh.getitem("/repos/acme/app"))["full_name"] == "acme/app"  # served from the ETag cache
        assert gh.not_modified == 1 and gh.remaining == remaining == 1  # a 304 costs nothing
        await gh.getitem("/repos/acme/app/git/ref/heads/main")
        assert gh.remaining == 0 and gh.pace_s() > 0
        with anyio.fail_after(8):
            await gh.getitem("/repos/acme/app/commits/main/check-runs")  # waits for x-ratelimit-reset
    statuses = [st for _, _, st in em.requests]
    assert statuses == [200, 304, 200, 200]  # never refused: the budget was read from the headers


@pytest.mark.anyio
@pytest.mark.parametrize("listen", [True, False])
async def test_the_engine_tells_watchers_where_it_serves_hooks(tmp_path: Path, listen: bool) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "daemon": {"public_url": "https://canary.example.com"},
        "probes": [{"id": "p", "kind": "http", "request": {"url": "http://127.0.0.1:9/"}}]}))
    # `check` without --listen serves no HTTP (serve_api=False): GitHub cannot deliver to it
    engine = Engine(load_config(path), Overrides(listen="127.0.0.1:0", otlp_http="none", otlp_grpc="none"),
                    serve_api=listen, gc_tuning=False)
    async with engine.started(temporary_store=True):
        services = engine.services
        api = engine.addresses.get("api")
    assert services.hook_address == api and (api is not None) is listen
    assert services.public_url == "https://canary.example.com"
