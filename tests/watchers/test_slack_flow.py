"""slack_mention probe + Slack watcher against the bot under test, through the Slack emulator."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import pytest

from tests.watchers.slack_bot import BotUnderTest
from tests.watchers.support import probe_context
from tracecanary.assertions.side_effects import SlackEffect
from tracecanary.assertions.verdict import Finding
from tracecanary.daemon.watchers.base import EventHub, Services, WatchContext
from tracecanary.daemon.watchers.slack import SlackPacer, SlackSocketListener, watch_slack
from tracecanary.demo.emulators.slack import SlackEmulator
from tracecanary.errors import ProbeError
from tracecanary.probes.base import ProbeContext
from tracecanary.probes.slack import SlackMentionProbe
from tracecanary.probes.steps import StepsProbe

CHANNEL = "C0BOTTEST"


def integrations(em: SlackEmulator) -> dict[str, Any]:
    return {"slack": {"user_token": "xoxp-user", "bot_token": "xoxb-bot", "app_token": "xapp-app",
                      "signing_secret": "signing-secret", "base_url": em.base_url}}


def effect(**kw: Any) -> SlackEffect:
    spec = {"channel": CHANNEL, "in_thread": True, "from": "U0BOT", "text": {"contains": "pong"}, "within": "10s"}
    return SlackEffect.model_validate({**spec, **kw})


def fast_services(hub: EventHub | None = None) -> Services:
    return Services(slack_events=hub, extra={"slack_pacer": SlackPacer({"conversations.replies": 6000,
                                                                         "conversations.history": 6000})})


@asynccontextmanager
async def slack_world(reply_text: str | None = "pong from bot", **em: Any) -> AsyncIterator[tuple[BotUnderTest, SlackEmulator]]:
    async with BotUnderTest(reply_text=reply_text) as bot, \
            SlackEmulator(events_url=bot.url + "/slack/events", **em) as emulator:
        bot.slack_base_url = emulator.base_url
        yield bot, emulator


async def mention_and_watch(em: SlackEmulator, services: Services, eff: SlackEffect,
                            probe: SlackMentionProbe | None = None) -> tuple[ProbeContext, list[Finding]]:
    async with aiohttp.ClientSession() as session:
        ctx = probe_context(session, integrations(em))
        probe = probe or SlackMentionProbe(id="bot-check", channel=CHANNEL, bot_user_id="U0BOT")
        fired = await probe.fire(ctx)
        wctx = WatchContext(probe=ctx, services=services, outputs=fired.outputs, poll_interval_s=0.05)
        with anyio.fail_after(15):
            return ctx, await watch_slack(eff, wctx)


def bot_span_ids(bot: BotUnderTest) -> tuple[str, str]:
    span = next(s for s in bot.spans() if s.name == "handle app_mention")
    assert span.parent is not None
    return format(span.context.trace_id, "032x"), format(span.parent.span_id, "016x")


@pytest.mark.anyio
async def test_mention_reply_detected_via_socket_mode() -> None:
    async with slack_world() as (bot, em), anyio.create_task_group() as tg:
        hub = EventHub()
        listener = SlackSocketListener(hub, app_token="xapp-app", base_url=em.base_url)
        await tg.start(listener.run)
        ctx, findings = await mention_and_watch(em, fast_services(hub), effect())
        tg.cancel_scope.cancel()
    assert findings == []
    assert "via='socket_mode'" in ctx.log.text() and listener.received >= 2
    posted = em.messages(CHANNEL)[0]
    assert posted["text"] == f"<@U0BOT> ping {ctx.run_id}" and posted["user"] == "U0PROBER"
    payload = posted["metadata"]["event_payload"]
    assert posted["metadata"]["event_type"] == "tracecanary_probe" and payload["run_id"] == ctx.run_id
    assert bot_span_ids(bot) == (ctx.trace.trace_id, ctx.trace.span_id)  # context carried in metadata
    assert em.state.unacked == {}


@pytest.mark.anyio
async def test_mention_reply_detected_via_polling() -> None:
    async with slack_world() as (_bot, em):
        ctx, findings = await mention_and_watch(em, fast_services(), effect())
    assert findings == [] and "via='polling'" in ctx.log.text()
    assert em.messages(CHANNEL)[1]["thread_ts"] == em.messages(CHANNEL)[0]["ts"]


@pytest.mark.anyio
async def test_wrong_reply_fails_quoting_what_arrived() -> None:
    async with slack_world(reply_text="I am broken") as (_bot, em), anyio.create_task_group() as tg:
        hub = EventHub()
        await tg.start(SlackSocketListener(hub, app_token="xapp-app", base_url=em.base_url).run)
        t0 = time.monotonic()
        _, findings = await mention_and_watch(em, fast_services(hub), effect(within="1.5s"))
        waited_s = time.monotonic() - t0
        tg.cancel_scope.cancel()
    assert len(findings) == 1 and 1.0 < waited_s < 5
    f = findings[0]
    assert f.type == "side_effect" and f.severity == "fail"
    assert "1 arrived, none matched" in f.message and "'I am broken'" in f.message
    assert "text: expected to contain 'pong'" in f.message
    assert f.observed[0]["text"] == "I am broken" and f.observed[0]["from"] == "B0BOT"


@pytest.mark.anyio
async def test_missing_reply_polling_says_nothing_arrived() -> None:
    async with slack_world(reply_text=None) as (bot, em):
        _, findings = await mention_and_watch(em, fast_services(), effect(within="1s"))
    assert len(bot.mentions) == 1
    assert [f.message for f in findings] == [
        "Slack C0BOTTEST thread: no matching message within 1s; nothing arrived"]


@pytest.mark.anyio
async def test_absent_effect_fails_when_bot_answers() -> None:
    async with slack_world() as (_bot, em):
        _, findings = await mention_and_watch(em, fast_services(), effect(absent=True, within="3s"))
    assert len(findings) == 1 and "expected no matching message" in findings[0].message


@pytest.mark.anyio
async def test_events_api_delivery_propagates_trace_exactly_but_its_thread_is_nowhere() -> None:
    """What deliver: events_api proves (the signed callback reaches the bot, the trace is exact) and
    what it cannot: the mention's ts is no message, so a reply threaded under it is in no thread the
    watcher (or a person) can read — polling the thread finds nothing, as in a real workspace."""
    async with slack_world() as (bot, em):
        probe = SlackMentionProbe.model_validate({
            "id": "bot-events", "kind": "slack_mention", "channel": CHANNEL, "bot_user_id": "U0BOT",
            "deliver": "events_api", "events_api": {"url": bot.url + "/slack/events", "team_id": em.team_id,
                                                    "api_app_id": em.app_id}})
        ctx, findings = await mention_and_watch(em, fast_services(), effect(within="1500ms"), probe)
        await em.wait_until(lambda: bool(em.messages(CHANNEL)), timeout_s=10)
    assert bot.mentions[0]["text"] == f"<@U0BOT> ping {ctx.run_id}"
    assert bot_span_ids(bot) == (ctx.trace.trace_id, ctx.trace.span_id)
    synthetic_ts = bot.mentions[0]["ts"]
    (reply,) = em.messages(CHANNEL)
    assert reply["thread_ts"] == synthetic_ts and all(m["ts"] != synthetic_ts for m in em.messages(CHANNEL))
    (miss,) = findings
    assert miss.message == f"Slack {CHANNEL} thread: no matching message within 1.5s; nothing arrived"


@pytest.mark.anyio
async def test_rate_limit_storm_survived() -> None:
    storms = {"chat.postMessage": 1, "conversations.replies": 2}
    async with slack_world(storms=storms, retry_after_s=1) as (bot, em):
        services = fast_services()
        t0 = time.monotonic()
        _ctx, findings = await mention_and_watch(em, services, effect())
        elapsed_s = time.monotonic() - t0
    assert findings == [] and bot.errors == []
    assert dict(em.state.rate_limited) == storms
    assert services.extra["slack_pacer"].penalties == 2
    assert elapsed_s >= 3.0  # one Retry-After honoured by the SDK, two by the pacer


@pytest.mark.anyio
async def test_probe_errors_are_probe_errors() -> None:
    async with slack_world() as (_bot, em), aiohttp.ClientSession() as session:
        ctx = probe_context(session, {"slack": {"user_token": "xoxp-nope", "base_url": em.base_url}})
        with pytest.raises(ProbeError, match="invalid_auth"):
            await SlackMentionProbe(id="x", channel=CHANNEL, bot_user_id="U0BOT").fire(ctx)
    with pytest.raises(ValueError, match="deliver: events_api needs"):
        SlackMentionProbe.model_validate({"id": "x", "channel": CHANNEL, "bot_user_id": "U0BOT",
                                          "deliver": "events_api"})


@pytest.mark.anyio
async def test_socket_events_lost_are_reconciled_by_polling() -> None:
    async with slack_world() as (_bot, em):
        hub = EventHub()  # Socket Mode "running" but its events never arrive
        ctx, findings = await mention_and_watch(em, fast_services(hub), effect(within="2s"))
    assert findings == [] and "via='socket_mode+polling'" in ctx.log.text()


@pytest.mark.anyio
async def test_mention_as_a_step_of_a_steps_probe() -> None:
    probe = StepsProbe.model_validate({"id": "steps-mention", "kind": "steps", "steps": [
        {"name": "mention", "slack_mention": {"channel": CHANNEL, "bot_user_id": "U0BOT", "text": "hi {{ run_id }}"}}]})
    async with slack_world() as (bot, em), aiohttp.ClientSession() as session:
        ctx = probe_context(session, integrations(em))
        fired = await probe.fire(ctx)
        wctx = WatchContext(probe=ctx, services=fast_services(), outputs=fired.outputs, poll_interval_s=0.05)
        with anyio.fail_after(10):
            findings = await watch_slack(effect(), wctx)
    assert fired.outputs["mention"]["slack"]["channel"] == CHANNEL
    assert findings == [] and bot.mentions[0]["text"] == f"<@U0BOT> hi {ctx.run_id}"


@pytest.mark.anyio
async def test_polling_a_missing_channel_is_an_error_finding() -> None:
    async with slack_world() as (_bot, em), aiohttp.ClientSession() as session:
        ctx = probe_context(session, integrations(em))
        wctx = WatchContext(probe=ctx, services=fast_services(), poll_interval_s=0.05)
        with anyio.fail_after(5):
            [f] = await watch_slack(effect(channel="XNOPE", in_thread=False), wctx)
    assert f.severity == "error" and f.message == "Slack polling of XNOPE failed: channel_not_found"
