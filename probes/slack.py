"""The slack_mention probe: @mention a bot in a channel (or deliver a signed Events API callback).

``deliver: post`` posts ``<@BOT> text`` as a person (user token) through ``AsyncWebClient`` with
rate-limit and server-error retries, carrying the run's trace context in message ``metadata``
(``event_type: tracecanary_probe``) and pacing posts to 1 message/s per channel. ``deliver:
events_api`` POSTs a correctly signed ``event_callback`` (``app_mention``) straight to the bot's
request URL with ``traceparent`` in the HTTP headers, which makes trace propagation exact — but the
event is synthetic: its ``ts`` is no message in the workspace, so a reply threaded under it has no
parent and cannot be found (``validate`` warns when such a probe expects ``in_thread``; see
docs/slack-github.md). Both record ``outputs.slack = {channel, ts, message_ts}`` so the Slack watcher
can look in the thread.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp
import anyio
from pydantic import Field, PrivateAttr
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from tracecanary.assertions.units import Duration
from tracecanary.errors import ProbeError
from tracecanary.model import StrictModel, cross_field_rule
from tracecanary.probes.base import FireResult, ProbeContext, ProbeSpec, ResponseSummary
from tracecanary.probes.signing import slack_signature

METADATA_EVENT_TYPE = "tracecanary_probe"
MAX_BODY_BYTES = 1 << 20


class EventsApiTarget(StrictModel):
    """Where and as whom ``deliver: events_api`` sends the signed ``event_callback``."""

    url: str = Field(description="The bot's Events API request URL.")
    team_id: str = Field(description="Workspace id (T…) put in the envelope.")
    api_app_id: str = Field(description="The bot's app id (A…) put in the envelope.")
    user: str = Field("U0TRACECANARY", description="User id the synthetic mention comes from.")


class ChannelPacer:
    """Spaces posts to one channel at least ``interval_s`` apart (Slack: ~1 message/s/channel)."""

    def __init__(self) -> None:
        self._next_s: dict[str, float] = {}
        self._lock = anyio.Lock()

    async def wait(self, channel: str, interval_s: float) -> None:
        async with self._lock:
            now = anyio.current_time()
            at = max(now, self._next_s.get(channel, now))
            self._next_s[channel] = at + interval_s
        await anyio.sleep(at - now)


def slack_client(token: str | None, base_url: str, *, max_retries: int = 3,
                 session: aiohttp.ClientSession | None = None) -> AsyncWebClient:
    """An AsyncWebClient that sleeps ``Retry-After`` on 429 and retries 5xx (defaults cover neither)."""
    return AsyncWebClient(
        token=token,
        base_url=base_url,
        session=session,
        retry_handlers=[
            AsyncRateLimitErrorRetryHandler(max_retry_count=max_retries),
            AsyncServerErrorRetryHandler(max_retry_count=max_retries),
        ],
    )


def _deliver_target(fields: Mapping[str, Any]) -> str | None:
    deliver, events_api = fields.get("deliver", "post"), fields.get("events_api")
    if deliver == "events_api" and events_api is None:
        return "deliver: events_api needs events_api: {url, team_id, api_app_id}"
    if deliver == "post" and events_api is not None:
        return "events_api is only used with deliver: events_api"
    return None


class SlackMentionProbe(ProbeSpec):
    """Mention a bot in Slack and (with a slack side effect) wait for its reply."""

    kind: Literal["slack_mention"] = "slack_mention"
    channel: str = Field(description="Channel id (C…) to post in (templated).")
    bot_user_id: str = Field(pattern=r"^[UW][A-Z0-9]+$", description="The bot's user id; the text starts <@bot>.")
    text: str = Field("ping {{ run_id }}", description="Text after the mention (templated).")
    thread: str | None = Field(None, description="Post as a reply in this thread ts (templated).")
    deliver: Literal["post", "events_api"] = Field(
        "post", description="post as a user (a real message), or sign a synthetic event_callback straight to "
                            "the bot (its ts is no message: no real thread to answer in).")
    events_api: EventsApiTarget | None = Field(None, description="Required with deliver: events_api.")
    min_post_interval: Duration = Field(1.0, description="Minimum gap between posts to one channel.")

    _pacer: ChannelPacer = PrivateAttr(default_factory=ChannelPacer)

    _deliver_target = cross_field_rule(_deliver_target)

    def _text(self, ctx: ProbeContext) -> str:
        return f"<@{self.bot_user_id}> {ctx.render(self.text)}"

    async def fire(self, ctx: ProbeContext) -> FireResult:
        if self.deliver == "events_api":
            return await self._fire_events_api(ctx)
        return await self._fire_post(ctx)

    async def _fire_post(self, ctx: ProbeContext) -> FireResult:
        cfg = ctx.integrations.slack
        if not cfg.user_token:
            raise ProbeError("slack_mention deliver: post needs integrations.slack.user_token")
        channel = ctx.render(self.channel)
        thread = ctx.render(self.thread) if self.thread else None
        await self._pacer.wait(channel, self.min_post_interval)
        client = slack_client(cfg.user_token, cfg.base_url, session=ctx.session)
        with ctx.client_span("chat.postMessage", "producer", **{"slack.channel": channel}) as sid:
            payload = {"traceparent": ctx.trace.traceparent(sid), "run_id": ctx.run_id, "probe_id": ctx.probe_id}
            payload.update({k: v for k, v in ctx.trace_headers(sid).items() if k != "traceparent"})
            ctx.log("slack post", channel=channel, thread=thread)
            t0 = time.perf_counter()
            try:
                with anyio.fail_after(max(0.001, ctx.remaining_s())):
                    resp = await client.chat_postMessage(
                        channel=channel, text=self._text(ctx), thread_ts=thread,
                        metadata={"event_type": METADATA_EVENT_TYPE, "event_payload": payload},
                    )
            except SlackApiError as e:
                raise ProbeError(f"chat.postMessage {channel}: {e.response.get('error', e)}") from e
            except TimeoutError as e:
                raise ProbeError(f"chat.postMessage {channel}: no response within the deadline") from e
            except aiohttp.ClientError as e:
                raise ProbeError(f"chat.postMessage {channel}: {e}") from e
        data = resp.data if isinstance(resp.data, dict) else {}
        ts = str(data.get("ts", ""))
        ctx.log("slack posted", channel=channel, ts=ts)
        summary = ResponseSummary(status=resp.status_code, headers={k: str(v) for k, v in resp.headers.items()},
                                  body_text=json.dumps(data), json=data, latency_s=time.perf_counter() - t0,
                                  method="POST", url=f"{cfg.base_url}chat.postMessage")
        return FireResult(response=summary, outputs={"slack": {"channel": channel, "ts": thread or ts, "message_ts": ts}})

    def _callback(self, ctx: ProbeContext, target: EventsApiTarget, channel: str, ts: str) -> dict[str, Any]:
        event: dict[str, Any] = {"type": "app_mention", "user": target.user, "text": self._text(ctx), "ts": ts,
                                 "channel": channel, "event_ts": ts}
        if self.thread:
            event["thread_ts"] = ctx.render(self.thread)
        return {
            "token": "", "team_id": target.team_id, "api_app_id": target.api_app_id, "event": event,
            "type": "event_callback", "event_id": "Ev" + uuid.uuid4().hex[:10].upper(),
            "event_time": int(time.time()), "event_context": ctx.run_id,
            "authorizations": [{"enterprise_id": None, "team_id": target.team_id, "user_id": self.bot_user_id,
                                "is_bot": True, "is_enterprise_install": False}],
            "is_ext_shared_channel": False,
        }

    async def _fire_events_api(self, ctx: ProbeContext) -> FireResult:
        target = self.events_api
        assert target is not None
        secret = ctx.integrations.slack.signing_secret
        if not secret:
            raise ProbeError("slack_mention deliver: events_api needs integrations.slack.signing_secret")
        channel = ctx.render(self.channel)
        url = ctx.render(target.url)
        ts = f"{time.time():.6f}"
        body = json.dumps(self._callback(ctx, target, channel, ts)).encode()
        with ctx.client_span(f"POST {url}", "client", **{"slack.channel": channel}) as sid:
            stamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": stamp,
                       "X-Slack-Signature": slack_signature(secret, stamp, body), **ctx.trace_headers(sid)}
            ctx.log("slack event_callback", url=url, channel=channel, ts=ts)
            t0 = time.perf_counter()
            try:
                with anyio.fail_after(max(0.001, ctx.remaining_s())):
                    async with ctx.session.post(url, data=body, headers=headers) as resp:
                        text = (await resp.content.read(MAX_BODY_BYTES)).decode(errors="replace")
                        summary = ResponseSummary(status=resp.status, headers=dict(resp.headers), body_text=text,
                                                  latency_s=time.perf_counter() - t0, method="POST", url=url)
            except TimeoutError as e:
                raise ProbeError(f"POST {url}: no response within the deadline") from e
            except aiohttp.ClientError as e:
                raise ProbeError(f"POST {url}: {e}") from e
        ctx.log("slack event_callback answered", status=summary.status)
        return FireResult(response=summary, outputs={"slack": {"channel": channel, "ts": event_thread(self, ctx, ts),
                                                               "message_ts": ts}})


def event_thread(probe: SlackMentionProbe, ctx: ProbeContext, ts: str) -> str:
    """The thread the bot will answer in: the given thread, else the mention's own ts."""
    return str(ctx.render(probe.thread)) if probe.thread else ts
