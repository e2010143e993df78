"""``POST /hooks/github`` refuses forged deliveries: unsigned or wrongly signed is 401, and without a
webhook secret everything is refused unless ``allow_unsigned_webhooks`` says otherwise. End to end, a
forged comment cannot turn a failing probe into a pass."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web

from tests.watchers.support import LoopbackApp
from tracecanary.assertions.verdict import Verdict
from tracecanary.daemon.config.load import load_config
from tracecanary.daemon.engine import Engine, Overrides
from tracecanary.daemon.watchers.base import EventHub
from tracecanary.daemon.web.github_hook import github_hook_routes
from tracecanary.demo.emulators.github import GitHubEmulator, hub_signature

pytestmark = pytest.mark.anyio

SECRET = "It's a Secret to Everybody"
COMMENT = {"action": "created", "issue": {"number": 7, "pull_request": {}},
           "comment": {"id": 99, "body": "LGTM, ship it", "user": {"login": "octocat"}},
           "repository": {"full_name": "acme/app"}}


async def _post(url: str, body: bytes, signature: str | None = None, sha1: str | None = None) -> int:
    headers = {"X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": "d-1", "Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    if sha1 is not None:
        headers["X-Hub-Signature"] = sha1
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status


async def test_signatures_decide() -> None:
    import hashlib
    import hmac

    body = json.dumps(COMMENT).encode()
    for secret, allow, cases in [
        (SECRET, False, [(None, None, 401), (hub_signature("wrong", body), None, 401),
                         (hub_signature(SECRET, body), None, 202),
                         (None, "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest(), 202)]),
        (None, False, [(None, None, 401), (hub_signature(SECRET, body), None, 401)]),
        (None, True, [(None, None, 202)]),
    ]:
        hub = EventHub()
        async with LoopbackApp(github_hook_routes(hub, secret, allow_unsigned=allow)) as app:
            for signature, sha1, want in cases:
                assert await _post(app.url + "/hooks/github", body, signature, sha1) == want, (secret, allow, signature)


async def test_startup_warning_only_where_webhooks_are_read(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tracecanary.hooks.github"):
        github_hook_routes(EventHub(), None, announce=False)
        github_hook_routes(EventHub(), SECRET, announce=True)
        assert caplog.messages == []
        github_hook_routes(EventHub(), None, announce=True)
        github_hook_routes(EventHub(), None, allow_unsigned=True, announce=True)
    assert "refused (401)" in caplog.messages[0]
    assert "WITHOUT signature check" in caplog.messages[1]


@pytest.fixture
async def target() -> AsyncIterator[tuple[str, anyio.Event]]:
    fired = anyio.Event()

    async def ok(request: web.Request) -> web.Response:
        fired.set()
        return web.json_response({"ok": True})

    app = web.Application()
    app.add_routes([web.post("/pr", ok)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", fired
    await runner.cleanup()


@pytest.mark.parametrize("allow_unsigned", [False, True])
async def test_a_forged_comment_cannot_pass_a_probe(tmp_path: Path, target: tuple[str, anyio.Event],
                                                    allow_unsigned: bool) -> None:
    """The review bot never comments; a forged, unsigned issue_comment delivery says it did. Refused (the
    default), the probe fails; only the lab switch ``allow_unsigned_webhooks`` would let it through."""
    url, fired = target
    async with GitHubEmulator() as github:  # the REST reconcile before the window closes finds no comment
        await _forge_against(tmp_path, url, fired, github.base_url, allow_unsigned)


async def _forge_against(tmp_path: Path, url: str, fired: anyio.Event, github_url: str, allow_unsigned: bool) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""
integrations:
  github: {{allow_unsigned_webhooks: {str(allow_unsigned).lower()}, watch: webhook, token: t, base_url: "{github_url}"}}
probes:
  - id: review-bot
    kind: http
    timeout: 10s
    request: {{method: POST, url: "{url}/pr"}}
    expect:
      side_effects:
        - github: {{repo: acme/app, pull: 7, comment: {{contains: LGTM}}, within: 2s}}
""")
    config = load_config(suite)
    engine = Engine(config, Overrides(listen="127.0.0.1:0", otlp_http="none", otlp_grpc="none"), serve_api=True)
    async with engine.started(temporary_store=True):
        hook = f"http://{engine.addresses['api']}/hooks/github"
        statuses: list[int] = []

        async def forge() -> None:
            await fired.wait()
            statuses.append(await _post(hook, json.dumps(COMMENT).encode()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(forge)
            with anyio.fail_after(30):
                [run] = await engine.runner.run_probe(config.probes[0])
    if allow_unsigned:
        assert statuses == [202] and run.verdict is Verdict.PASS
    else:
        assert statuses == [401] and run.verdict is Verdict.FAIL
        assert ["no matching comment" in f.message for f in run.findings] == [True], run.findings
