"""Side-effect detection latency: event-driven (Socket Mode, webhooks) vs polling, over loopback.

For each round a reply (Slack thread reply / GitHub PR comment) is posted ``--delay`` seconds after
the watcher starts; the figure is the time from that post to the watcher returning a pass.

- slack socket_mode: SlackSocketListener → EventHub → watch_slack
- slack polling: conversations.replies every poll interval (default 2 s, Tier 3 pacing 50/min)
- github webhook: emulator delivery → /hooks/github → EventHub → watch_github
- github rest: gidgethub getiter every poll interval

    python benchmarks/slack_github_detect.py            # 5 rounds, poll interval 2 s
    python benchmarks/slack_github_detect.py --quick
"""

from __future__ import annotations

import argparse
import functools
import secrets
import socket
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import anyio
from aiohttp import web
from gidgethub.aiohttp import GitHubAPI
from slack_sdk.web.async_client import AsyncWebClient

from tracecanary.assertions.side_effects import GithubEffect, SlackEffect
from tracecanary.assertions.verdict import Finding
from tracecanary.daemon.watchers.base import EventHub, Services, WatchContext
from tracecanary.daemon.watchers.github import watch_github
from tracecanary.daemon.watchers.slack import SlackSocketListener, watch_slack
from tracecanary.daemon.web.github_hook import github_hook_routes
from tracecanary.demo.emulators.github import GitHubEmulator
from tracecanary.demo.emulators.slack import SlackEmulator
from tracecanary.integrations import Integrations
from tracecanary.probes.base import Inject, ProbeContext, RunLog, TraceContext
from tracecanary.probes.templating import Templates


def _ctx(session: aiohttp.ClientSession, integrations: dict[str, object]) -> ProbeContext:
    run_id = uuid.uuid4().hex
    return ProbeContext(
        probe_id="bench", run_id=run_id, attempt=1, first_run_id=run_id,
        trace=TraceContext(secrets.token_hex(16), secrets.token_hex(8)), session=session, templates=Templates(),
        integrations=Integrations.model_validate(integrations), inject=Inject(), log=RunLog(),
        trigger_ns=time.time_ns(), deadline_s=anyio.current_time() + 30,
    )


async def _measure(watch: Callable[[], Awaitable[list[Finding]]], post: Callable[[], Awaitable[None]],
                   delay_s: float) -> float:
    posted: list[float] = []
    async with anyio.create_task_group() as tg:
        async def later() -> None:
            await anyio.sleep(delay_s)
            posted.append(time.perf_counter())
            await post()
        tg.start_soon(later)
        findings = await watch()
    assert findings == [], findings
    return time.perf_counter() - posted[0]


async def slack_rounds(mode: str, rounds: int, poll_s: float, delay_s: float) -> list[float]:
    out: list[float] = []
    async with SlackEmulator() as em, aiohttp.ClientSession() as session, anyio.create_task_group() as tg:
        hub = None
        if mode == "socket_mode":
            hub = EventHub()
            await tg.start(SlackSocketListener(hub, app_token="xapp-app", base_url=em.base_url).run)
        user = AsyncWebClient(token="xoxp-user", base_url=em.base_url)
        bot = AsyncWebClient(token="xoxb-bot", base_url=em.base_url)
        for _ in range(rounds):
            ctx = _ctx(session, {"slack": {"bot_token": "xoxb-bot", "base_url": em.base_url}})
            ts = (await user.chat_postMessage(channel="C1", text="<@U0BOT> ping"))["ts"]
            eff = SlackEffect.model_validate({"channel": "C1", "in_thread": True, "text": "pong", "within": 20})
            wctx = WatchContext(probe=ctx, services=Services(slack_events=hub), outputs={"slack": {"ts": ts}},
                                poll_interval_s=poll_s)

            async def post(ts: str = ts) -> None:
                await bot.chat_postMessage(channel="C1", text="pong", thread_ts=ts)

            out.append(await _measure(functools.partial(watch_slack, eff, wctx), post, delay_s))
        tg.cancel_scope.cancel()
    return out


async def github_rounds(mode: str, rounds: int, poll_s: float, delay_s: float) -> list[float]:
    out: list[float] = []
    hub = EventHub() if mode == "webhook" else None
    app = web.Application()
    app.add_routes(github_hook_routes(hub or EventHub(), "webhook-secret"))
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hooks/github" if hub else None
    try:
        async with GitHubEmulator(webhook_url=url) as em, aiohttp.ClientSession() as session:
            gh = GitHubAPI(session, "bench", oauth_token="ghp-bot", base_url=em.base_url)
            for i in range(rounds):
                await gh.post("/repos/acme/app/git/refs", data={"ref": f"refs/heads/b{i}", "sha": "e" * 40})
                pr = await gh.post("/repos/acme/app/pulls", data={"title": "t", "head": f"b{i}", "base": "main"})
                ctx = _ctx(session, {"github": {"token": "ghp-bot", "base_url": em.base_url,
                                                "watch": "webhook" if hub else "poll"}})
                eff = GithubEffect.model_validate({"repo": "acme/app", "pull": pr["number"], "comment": "LGTM",
                                                   "within": 20})
                wctx = WatchContext(probe=ctx, services=Services(github_events=hub), poll_interval_s=poll_s)

                async def post(n: int = pr["number"]) -> None:
                    await gh.post(f"/repos/acme/app/issues/{n}/comments", data={"body": "LGTM"})

                out.append(await _measure(functools.partial(watch_github, eff, wctx), post, delay_s))
    finally:
        await runner.cleanup()
    return out


def _report(name: str, values: list[float]) -> None:
    ms = sorted(v * 1000 for v in values)
    print(f"{name:<24} n={len(ms):<3} median={statistics.median(ms):8.1f} ms  max={ms[-1]:8.1f} ms")


async def main(rounds: int, poll_s: float, delay_s: float) -> None:
    print(f"detection latency after the reply is posted (poll interval {poll_s:g}s, reply {delay_s:g}s after start)")
    for mode in ("socket_mode", "polling"):
        _report(f"slack {mode}", await slack_rounds(mode, rounds, poll_s, delay_s))
    for mode in ("webhook", "rest"):
        _report(f"github {mode}", await github_rounds(mode, rounds, poll_s, delay_s))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll", type=float, default=2.0, help="poll interval (s) for the polling modes")
    parser.add_argument("--delay", type=float, default=0.5, help="reply this long after the watcher starts")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    args = parser.parse_args()
    anyio.run(main, 3 if args.quick else args.rounds, args.poll, args.delay)
