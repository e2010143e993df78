"""A real Slack Bolt app (PyPI ``slack-bolt``) answers the slack_mention probe through the emulator.

The bot under test is third-party code written the way Bolt's own docs write it: ``AsyncApp`` with an
``app_mention`` listener that ``say``s a reply in the mention's thread, connected over Socket Mode
(``AsyncSocketModeHandler``) or behind its own aiohttp request URL (``AsyncApp.web_app``, which
verifies the emulator's request signature). Only ``base_url`` points it at the emulator. The probe posts the mention
as a person (``deliver: post``) and the watcher finds the reply by polling the thread — the path a
real workspace takes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import pytest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from tests.probes.helpers import serve
from tests.watchers.support import probe_context
from tracecanary.assertions.side_effects import SlackEffect
from tracecanary.daemon.watchers.base import Services, WatchContext
from tracecanary.daemon.watchers.slack import SlackPacer, watch_slack
from tracecanary.demo.emulators.slack import SlackEmulator
from tracecanary.probes.slack import SlackMentionProbe
from tracecanary.probes.templating import render_spec

pytestmark = pytest.mark.anyio

CHANNEL = "C0BOLT"


def bolt_app(base_url: str, seen: list[dict[str, Any]], signing_secret: str | None = None) -> AsyncApp:
    """A Bolt app as Bolt's docs write one; ``seen`` records the mentions it handled."""
    app = AsyncApp(client=AsyncWebClient(token="xoxb-bot", base_url=base_url), signing_secret=signing_secret)

    @app.event("app_mention")
    async def answer(event: dict[str, Any], say: Any) -> None:
        seen.append(event)
        asked = event["text"].split()[-1]
        await say(text=f"pong {asked}", thread_ts=event.get("thread_ts") or event["ts"])

    @app.event("message")
    async def ignore_messages() -> None:  # a listener, so Bolt acks message events instead of warning
        return None

    return app


@asynccontextmanager
async def bolt_connected(mode: str, seen: list[dict[str, Any]]) -> AsyncIterator[SlackEmulator]:
    """The emulator with the Bolt app attached: over Socket Mode, or behind its Events API request URL."""
    if mode == "socket_mode":
        async with SlackEmulator(channels=[CHANNEL], http_event_types=()) as em:
            handler = AsyncSocketModeHandler(bolt_app(em.base_url, seen), app_token="xapp-app",
                                             web_client=AsyncWebClient(base_url=em.base_url))
            with anyio.fail_after(15):
                await handler.connect_async()
                await em.wait_until(lambda: em.socket_connections == 1, timeout_s=15)
            try:
                yield em
            finally:
                with anyio.fail_after(15):
                    await handler.close_async()
        return
    # HTTP mode: Bolt's own aiohttp app verifies the emulator's X-Slack-Signature with the signing secret.
    async with SlackEmulator(channels=[CHANNEL], socket_event_types=()) as em:
        app = bolt_app(em.base_url, seen, signing_secret=em.signing_secret)
        async with serve(app.web_app(path="/slack/events")) as url:
            em.events_url = url + "/slack/events"
            yield em


@pytest.mark.parametrize("mode", ["socket_mode", "http"])
async def test_bolt_app_answers_a_mention_through_the_emulator(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[dict[str, Any]] = []
    caplog.set_level(logging.WARNING, logger="slack_bolt")
    async with bolt_connected(mode, seen) as em, aiohttp.ClientSession() as session:
        ctx = probe_context(session, {"slack": {"user_token": "xoxp-user", "bot_token": "xoxb-bot",
                                                "base_url": em.base_url}})
        probe = SlackMentionProbe(id="bolt-check", channel=CHANNEL, bot_user_id="U0BOT", text="ping {{ run_id }}")
        fired = await probe.fire(ctx)
        effect = render_spec(SlackEffect.model_validate({
            "channel": CHANNEL, "in_thread": True, "from": "U0BOT",
            "text": {"contains": "pong {{ run_id }}"}, "within": "20s"}), ctx.render)
        services = Services(extra={"slack_pacer": SlackPacer({"conversations.replies": 6000})})
        wctx = WatchContext(probe=ctx, services=services, outputs=fired.outputs, poll_interval_s=0.05)
        with anyio.fail_after(30):
            findings = await watch_slack(effect, wctx)
    assert findings == [], [f.message for f in findings]
    (mention,) = seen
    assert mention["text"] == f"<@U0BOT> ping {ctx.run_id}" and mention["user"] == "U0PROBER"
    posted, reply = em.messages(CHANNEL)
    assert posted["ts"] == fired.outputs["slack"]["ts"] == mention["ts"]
    assert (reply["thread_ts"], reply["bot_id"], reply["text"]) == (posted["ts"], "B0BOT", f"pong {ctx.run_id}")
    if mode == "socket_mode":  # Bolt acked every envelope it was sent (the mention and the message events)
        assert em.state.unacked == {} and len(em.state.acked) >= 2
    else:  # one signed POST, accepted at once (no Slack retry)
        assert [(d["attempt"], d["status"]) for d in em.state.deliveries] == [(0, 200)]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("slack_bolt")] == []
