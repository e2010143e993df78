"""The Slack emulator against Slack's documented payloads, driven by the real slack_sdk clients."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from tests.demo.emulators.hook_receiver import HookReceiver
from tracecanary.demo.emulators.slack import RateLimit, SlackEmulator

# Documented example bodies (api.slack.com method pages), used for their field sets.
DOC_AUTH_TEST = {"ok": True, "url": "https://subarachnoid.slack.com/", "team": "Subarachnoid Workspace",
                 "user": "grace", "team_id": "T12345678", "user_id": "W12345678"}
DOC_POST_MESSAGE = {"ok": True, "channel": "C123ABC456", "ts": "1503435956.000247",
                    "message": {"text": "Here's a message for you", "bot_id": "B123ABC456",
                                "type": "message", "ts": "1503435956.000247"}}
DOC_REPLIES = {"messages": [{"type": "message", "user": "U061F7AUR", "text": "island",
                             "thread_ts": "1482960137.003543", "reply_count": 3, "ts": "1482960137.003543"},
                            {"type": "message", "user": "U061F7AUR", "text": "one island",
                             "thread_ts": "1482960137.003543", "parent_user_id": "U061F7AUR",
                             "ts": "1483037603.017503"}],
               "has_more": True, "ok": True, "response_metadata": {"next_cursor": "bmV4dF90czoxNDg0Njc4MjkwNTE3MDkx"}}


def same_shape(doc: dict[str, Any], got: dict[str, Any], path: str = "") -> None:
    """Every documented field is present with the documented JSON type (recursively for objects)."""
    for key, value in doc.items():
        assert key in got, f"{path}{key} missing from {sorted(got)}"
        if isinstance(value, dict):
            same_shape(value, got[key], f"{path}{key}.")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for d, g in zip(value, got[key], strict=False):
                same_shape(d, g, f"{path}{key}[].")
        else:
            assert type(got[key]) is type(value), f"{path}{key}: {got[key]!r} vs documented {value!r}"


@pytest.fixture
async def slack() -> AsyncIterator[SlackEmulator]:
    async with SlackEmulator(retry_after_s=0, redeliver_after_s=0.2) as em:
        yield em


def client(em: SlackEmulator, token: str = "xoxb-bot") -> AsyncWebClient:
    return AsyncWebClient(token=token, base_url=em.base_url)


@pytest.mark.anyio
async def test_auth_test_matches_documented_fields(slack: SlackEmulator) -> None:
    resp = await client(slack, "xoxp-user").auth_test()
    same_shape(DOC_AUTH_TEST, resp.data)  # type: ignore[arg-type]
    assert resp["user_id"] == "U0PROBER" and "bot_id" not in resp.data  # type: ignore[operator]
    bot = await client(slack).auth_test()
    assert bot["user_id"] == "U0BOT" and bot["bot_id"] == "B0BOT"


@pytest.mark.anyio
async def test_invalid_and_missing_token(slack: SlackEmulator) -> None:
    with pytest.raises(SlackApiError) as e:
        await client(slack, "xoxb-wrong").auth_test()
    assert e.value.response.data == {"ok": False, "error": "invalid_auth"}
    async with aiohttp.ClientSession() as s, s.post(slack.base_url + "auth.test") as r:
        assert r.status == 200 and await r.json() == {"ok": False, "error": "not_authed"}


@pytest.mark.anyio
async def test_post_message_and_history_with_metadata(slack: SlackEmulator) -> None:
    web = client(slack)
    meta = {"event_type": "tracecanary_probe", "event_payload": {"run_id": "r1"}}
    resp = await web.chat_postMessage(channel="C1", text="hello", metadata=meta)
    same_shape(DOC_POST_MESSAGE, resp.data)  # type: ignore[arg-type]
    assert resp["message"]["text"] == "hello" and resp["channel"] == "C1"
    plain = await web.conversations_history(channel="C1")
    assert [m["text"] for m in plain["messages"]] == ["hello"] and "metadata" not in plain["messages"][0]
    full = await web.conversations_history(channel="C1", include_all_metadata=True)
    assert full["messages"][0]["metadata"] == meta
    with pytest.raises(SlackApiError) as e, pytest.warns(UserWarning, match="text"):
        await web.chat_postMessage(channel="C1", text="")
    assert e.value.response["error"] == "no_text"


@pytest.mark.anyio
async def test_replies_cursor_pagination_like_documented(slack: SlackEmulator) -> None:
    web = client(slack)
    parent = await web.chat_postMessage(channel="C1", text="island")
    for i in range(5):
        await web.chat_postMessage(channel="C1", text=f"reply {i}", thread_ts=parent["ts"])
    first = await web.conversations_replies(channel="C1", ts=parent["ts"], limit=2)
    same_shape(DOC_REPLIES, first.data)  # type: ignore[arg-type]
    cursor = first["response_metadata"]["next_cursor"]
    assert base64.b64decode(cursor).decode().startswith("next_ts:")
    texts = []
    async for page in await web.conversations_replies(channel="C1", ts=parent["ts"], limit=2):
        texts += [m["text"] for m in page["messages"]]
    assert texts == ["island"] + [f"reply {i}" for i in range(5)]
    top = (await web.conversations_history(channel="C1"))["messages"]
    assert len(top) == 1 and top[0]["reply_count"] == 5 and top[0]["reply_users"] == ["U0BOT"]
    with pytest.raises(SlackApiError) as e:
        await web.conversations_replies(channel="C1", ts="1.000001")
    assert e.value.response["error"] == "thread_not_found"


@pytest.mark.anyio
async def test_users_info(slack: SlackEmulator) -> None:
    resp = await client(slack).users_info(user="U0BOT")
    assert resp["user"]["id"] == "U0BOT" and resp["user"]["is_bot"] is True
    with pytest.raises(SlackApiError) as e:
        await client(slack).users_info(user="U404")
    assert e.value.response.data == {"ok": False, "error": "user_not_found"}


@pytest.mark.anyio
async def test_rate_limit_429_retry_after_and_sdk_retry() -> None:
    async with SlackEmulator(rate_limits={"conversations.history": RateLimit(2, 60)}, retry_after_s=7,
                             storms={"chat.postMessage": 2}) as em:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer xoxb-bot"}) as s:
            for _ in range(2):
                async with s.get(em.base_url + "conversations.history", params={"channel": "C1"}) as r:
                    assert r.status == 200
            async with s.get(em.base_url + "conversations.history", params={"channel": "C1"}) as r:
                assert r.status == 429 and r.headers["Retry-After"] == "7"
                assert await r.json() == {"ok": False, "error": "ratelimited"}
        em.retry_after_s = 0
        web = AsyncWebClient(token="xoxb-bot", base_url=em.base_url,
                             retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=3)])
        with anyio.fail_after(10):
            resp = await web.chat_postMessage(channel="C1", text="after the storm")
        assert resp["ok"] and em.state.rate_limited["chat.postMessage"] == 2


@pytest.mark.anyio
async def test_socket_mode_real_client_receives_mention_and_acks(slack: SlackEmulator) -> None:
    got: list[dict[str, Any]] = []
    arrived = anyio.Event()

    async def on_request(c: SocketModeClient, req: SocketModeRequest) -> None:
        await c.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
        got.append(req.payload)
        if req.payload["event"]["type"] == "app_mention":
            arrived.set()

    sm = SocketModeClient(app_token="xapp-app", web_client=AsyncWebClient(base_url=slack.base_url))
    sm.socket_mode_request_listeners.append(on_request)  # type: ignore[arg-type]
    await sm.connect()
    try:
        with anyio.fail_after(5):
            await slack.wait_until(lambda: slack.socket_connections > 0)
            await client(slack, "xoxp-user").chat_postMessage(channel="C9", text="<@U0BOT> ping")
            await arrived.wait()
            await slack.wait_until(lambda: not slack.state.unacked and len(slack.state.acked) == 2)
    finally:
        await sm.close()
    mention = next(p for p in got if p["event"]["type"] == "app_mention")
    assert mention["type"] == "event_callback" and mention["api_app_id"] == slack.app_id
    assert mention["event"]["text"] == "<@U0BOT> ping" and mention["event"]["channel"] == "C9"
    assert {"token", "team_id", "event_id", "event_time", "authorizations"} <= set(mention)
    assert len(slack.state.acked) == 2  # the message event and the app_mention


@pytest.mark.anyio
async def test_socket_mode_redelivers_unacked_envelopes(slack: SlackEmulator) -> None:
    async with aiohttp.ClientSession() as s:
        opened = await client(slack, "xapp-app").apps_connections_open(app_token="xapp-app")
        async with s.ws_connect(opened["url"]) as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "hello"
            await client(slack, "xoxp-user").chat_postMessage(channel="C1", text="<@U0BOT> hi")
            with anyio.fail_after(5):
                first = [await ws.receive_json(), await ws.receive_json()]
                mention = next(e for e in first if e["payload"]["event"]["type"] == "app_mention")
                await ws.send_json({"envelope_id": next(e for e in first if e is not mention)["envelope_id"]})
                again = await ws.receive_json()
            assert again["envelope_id"] == mention["envelope_id"]
            assert again["retry_attempt"] == 1 and again["retry_reason"] == "timeout"
            await ws.send_json({"envelope_id": again["envelope_id"]})


@pytest.mark.anyio
async def test_events_api_delivery_is_signed_and_retried() -> None:
    async with HookReceiver(statuses=[500]) as rx:
        async with SlackEmulator(events_url=rx.url, signing_secret="s3cret", redeliver_after_s=0.05) as em:
            await AsyncWebClient(token="xoxp-user", base_url=em.base_url).chat_postMessage(
                channel="C1", text="hey <@U0BOT> status?")
            (h1, b1), (h2, b2) = await rx.wait_for(2)
    verifier = SignatureVerifier("s3cret")
    for headers, body in ((h1, b1), (h2, b2)):
        assert verifier.is_valid(body, headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"])
        assert abs(int(headers["X-Slack-Request-Timestamp"]) - time.time()) < 60
    assert "X-Slack-Retry-Num" not in h1 and h2["X-Slack-Retry-Num"] == "1"
    payload = json.loads(b2)
    assert payload["type"] == "event_callback" and payload["event"]["type"] == "app_mention"
    assert payload["event"]["user"] == "U0PROBER"
